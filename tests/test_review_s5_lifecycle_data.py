"""What a campaign keeps in Redis over its life, and that nothing writes its per-message
data again once the retention purge removed it (review S5)."""

from __future__ import annotations

import pytest
import redis

from dispatch import (
    campaign_reads,
    campaigns,
    housekeeping,
    lifecycle,
    recipient_append,
    retention,
    store,
)
from dispatch.models import CampaignStatus
from tests.helpers import campaign_body as body
from tests.helpers import create_held, recipients, smtp_provider


def ignore(campaign_id: str, batch: int) -> None:
    pass


def test_a_draft_drops_its_address_set_when_it_starts_or_is_scheduled(
    redis_client: redis.Redis,
) -> None:
    """The set that keeps a draft's appends to one message per address (76 bytes a
    recipient) served nothing once the campaign left draft, and stayed until the purge."""
    smtp_provider(redis_client, 9)
    for campaign_id, send_at in (("started", None), ("later", "2099-01-01T00:00:00Z")):
        create_held(redis_client, {**body(campaign_id, 0), "draft": True, "send_at": send_at})
        recipient_append.append_recipients(campaign_id, recipients(30), client=redis_client)
        # An address appended twice is still stored once while it is a draft.
        assert (
            recipient_append.append_recipients(campaign_id, recipients(31), client=redis_client)
            == 1
        )
        assert redis_client.exists(store.addresses_key(campaign_id))

        campaigns.start_campaign(campaign_id, client=redis_client, enqueue=ignore)

        expected = CampaignStatus.RUNNING if send_at is None else CampaignStatus.SCHEDULED
        assert campaign_reads.get_status(campaign_id, redis_client) is expected
        assert not redis_client.exists(store.addresses_key(campaign_id))
        assert campaign_reads.get_counters(campaign_id, redis_client)["total"] == 31
    # A list posted with its send_at ahead is stored as a draft's, then scheduled.
    create_held(redis_client, body("posted", 20, send_at="2099-01-01T00:00:00Z"))
    assert campaign_reads.get_status("posted", redis_client) is CampaignStatus.SCHEDULED
    assert not redis_client.exists(store.addresses_key("posted"))


def test_settling_a_purged_campaign_writes_no_ledger_and_moves_no_counter(
    redis_client: redis.Redis,
) -> None:
    """A settling that comes after the purge (the settle task handed out again by the
    broker, a retention shorter than its delay) read every message as queued: it wrote a
    ledger record for each (never purged again) and counted them all once more."""
    smtp_provider(redis_client, 9)
    for campaign_id, status in (("c1", CampaignStatus.CANCELLED), ("e1", CampaignStatus.EXPIRED)):
        create_held(redis_client, body(campaign_id, 5))
        lifecycle._end(campaign_id, status, "ended", redis_client, ignore, None)
        before = campaign_reads.get_counters(campaign_id, redis_client)
        assert before[status.value] == 5 and before["queued"] == 0
        assert retention.purge(redis_client, campaign_id)

        assert lifecycle.settle_ended(campaign_id, status, redis_client, ignore) == 0

        assert not redis_client.exists(store.ledger_key(campaign_id))
        assert campaign_reads.get_counters(campaign_id, redis_client) == before


def test_housekeeping_leaves_a_purged_campaign_that_still_counts_queued_messages(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ended campaign purged before its messages were settled: housekeeping settled it
    (a ledger record for every message, after the purge) and watched it until then."""
    smtp_provider(redis_client, 9)
    monkeypatch.setattr(lifecycle, "INLINE_SETTLE_LIMIT", 0)  # settled by a task: lost here
    campaign_id, _ = create_held(redis_client, body("big", 7))
    lifecycle.cancel(
        campaign_id, client=redis_client, enqueue=ignore, settle_later=lambda c, s: None
    )
    assert campaign_reads.get_counters(campaign_id, redis_client)["queued"] == 7  # not settled
    assert redis_client.zscore(store.ACTIVE_ZSET, campaign_id) is not None
    assert retention.purge(redis_client, campaign_id)

    housekeeping.sweep(redis_client, ignore, now=redis_client.time()[0] + 3600)

    assert not redis_client.exists(store.ledger_key(campaign_id))
    assert redis_client.zscore(store.ACTIVE_ZSET, campaign_id) is None
