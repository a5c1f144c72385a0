"""A large installation after a year: what Redis keeps, and what a scrape or a sweep
reads, stays bounded by what is alive (review E9; counted, never timed)."""

from __future__ import annotations

from collections.abc import Callable

import redis

from dispatch import lifecycle, provider_store, store
from tests.helpers import create_held, recipients, smtp_provider
from tests.test_long_running import _provider_series


def test_what_is_counted_after_a_provider_is_deleted_is_not_exported(
    redis_client: redis.Redis,
) -> None:
    """A customer leaves: their provider is deleted, and the campaign it had waiting is
    cancelled afterwards (its messages count ``cancelled`` under the campaign's provider),
    while a batch that was sending through it adds its send figures with its lease's
    release. The deleted provider's series stayed in /metrics for ever (one set per
    customer who ever left); the saved providers' series stay."""
    smtp_provider(redis_client, 2525, nickname="gone")
    smtp_provider(redis_client, 2525, nickname="kept")
    body = {"provider": "gone", "subject": "s", "html": "h", "recipients": recipients(5)}
    campaign_id, _ = create_held(redis_client, body)
    assert "dispatch_messages_total" in _provider_series("gone")

    assert provider_store.delete_provider("gone", redis_client)
    assert _provider_series("gone") == []
    lifecycle.cancel(campaign_id, client=redis_client)
    assert redis_client.hget(store.MESSAGE_STATS_HASH, "gone|cancelled") == "5"

    # What a batch's lease release adds for it (dispatch.send_stats.SendStats.add_to).
    redis_client.hincrby(store.SEND_STATS_HASH, "gone|le=0.025", 4)
    redis_client.hincrbyfloat(store.SEND_STATS_HASH, "gone|sum", 0.08)
    redis_client.hincrby(store.SEND_STATS_HASH, "gone|throttles", 1)
    assert _provider_series("gone") == []
    assert "dispatch_messages_total" in _provider_series("kept")
    assert "dispatch_send_seconds_count" not in _provider_series("kept")  # nothing sent yet
    assert "dispatch_throttles_total" in _provider_series("kept")


def test_a_deleted_providers_late_figures_leave_redis_with_the_next_deletion(
    redis_client: redis.Redis,
) -> None:
    """What was counted under a provider after its deletion stayed in the hashes every
    scrape reads, for good; the next deletion of any provider takes it away. The saved
    providers' figures, and those of campaigns stored without a provider, stay."""
    for nickname in ("gone", "next", "kept"):
        smtp_provider(redis_client, 2525, nickname=nickname)
    assert provider_store.delete_provider("gone", redis_client)
    late = {"gone|cancelled": 5, "gone|le=0.025": 4, "gone|throttles": 1}
    for field, count in late.items():
        name = store.SEND_STATS_HASH if "|le=" in field or "throttles" in field else None
        redis_client.hincrby(name or store.MESSAGE_STATS_HASH, field, count)
    redis_client.hincrby(store.MESSAGE_STATS_HASH, "kept|sent", 3)
    redis_client.hincrby(store.MESSAGE_STATS_HASH, f"{store.NO_PROVIDER}|cancelled", 2)
    redis_client.hincrby(store.SEND_STATS_HASH, "kept|throttles", 1)

    assert provider_store.delete_provider("next", redis_client)
    assert redis_client.hgetall(store.MESSAGE_STATS_HASH) == {
        "kept|sent": "3",
        f"{store.NO_PROVIDER}|cancelled": "2",
    }
    assert redis_client.hgetall(store.SEND_STATS_HASH) == {"kept|throttles": "1"}


def _commands(r: redis.Redis, call: Callable[[], object]) -> int:
    """How many commands Redis processed for ``call`` (the INFO that asks included)."""
    before = int(r.info("stats")["total_commands_processed"])
    call()
    return int(r.info("stats")["total_commands_processed"]) - before - 1


def test_deleting_a_provider_reads_the_figures_of_300_in_a_few_round_trips(
    redis_client: redis.Redis,
) -> None:
    """With 300 providers' figures (16 fields each in the send figures) the deletion read
    the hashes ten fields a round trip: about 500 commands for every provider deleted."""
    pipe = redis_client.pipeline(transaction=False)
    for i in range(300):
        pipe.sadd(store.PROVIDERS_SET, f"customer-{i}")
        pipe.hincrby(store.MESSAGE_STATS_HASH, f"customer-{i}|sent", 1)
        for field in ("le=0.01", "le=0.025", "le=+Inf", "sum", "throttles", "deferred"):
            pipe.hincrby(store.SEND_STATS_HASH, f"customer-{i}|{field}", 1)
        for bound in range(10):
            pipe.hincrby(store.SEND_STATS_HASH, f"customer-{i}|le={bound}", 1)
    pipe.execute()
    count = _commands(
        redis_client, lambda: provider_store.delete_provider("customer-7", redis_client)
    )
    assert count <= 20
    assert redis_client.hlen(store.SEND_STATS_HASH) == 299 * 16
    assert not redis_client.sismember(store.PROVIDERS_SET, "customer-7")
