"""Review H14: beat's passes over campaigns (the retention purge, the expiry, the
scheduled release, the reputation guard) met one campaign whose stored data they could
not read and raised: that pass, at every tick for as long as the campaign stayed so, left
every campaign after it alone (none purged, expired, started or paused). Such a campaign
is now logged with its traceback and skipped; a Redis away still ends the pass."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import campaign_reads, housekeeping, lifecycle, reputation, retention, store
from dispatch.settings import get_settings
from tests.helpers import campaign_body, create_held, smtp_provider

DAY = 86400.0


def _skipped(caplog: pytest.LogCaptureFixture, campaign_id: str) -> bool:
    """The campaign was logged as skipped, at ERROR, with its traceback."""
    return any(
        rec.levelno == logging.ERROR
        and rec.exc_info is not None
        and f"campaign {campaign_id} skipped" in rec.getMessage()
        for rec in caplog.records
    )


def _cancelled(r: redis.Redis, campaign_id: str) -> str:
    create_held(r, campaign_body(campaign_id, 2))
    lifecycle.cancel(campaign_id, client=r, enqueue=lambda c, b: None)
    return campaign_id


def test_the_purge_skips_a_campaign_it_cannot_read_and_purges_the_others(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The oldest finished campaign has a time field written by hand ('yesterday'), and
    the index names a campaign whose key holds a string: the purge raised (ValueError,
    WRONGTYPE) before it reached the others, every hour."""
    smtp_provider(redis_client, 2525)
    unreadable = _cancelled(redis_client, "ret-unreadable")
    good = [_cancelled(redis_client, "ret-good-1"), _cancelled(redis_client, "ret-good-2")]
    redis_client.hset(store.campaign_key(unreadable), "completed_at", "yesterday")
    redis_client.zadd(store.KEPT_ZSET, {"ret-string": 1.0})  # (the oldest of all)
    redis_client.set(store.campaign_key("ret-string"), "not a hash")

    purged = retention.purge_due(redis_client, now=time.time() + 31 * DAY)

    assert sorted(purged) == good
    assert retention.purged_at(redis_client, unreadable) is None  # left for a person
    assert _skipped(caplog, unreadable) and _skipped(caplog, "ret-string")


def test_the_expiry_skips_a_campaign_it_cannot_settle_and_expires_the_others(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The first campaign due has a batch size written by hand: the expiry raised
    (ValueError) and the campaigns due after it never expired, at every tick."""
    smtp_provider(redis_client, 2525)
    soon = datetime.now(UTC) + timedelta(hours=1)
    ids = []
    for i, name in enumerate(("exp-unreadable", "exp-good-1", "exp-good-2")):
        expires_at = (soon + timedelta(seconds=i)).isoformat()
        ids.append(create_held(redis_client, campaign_body(name, 2, expires_at=expires_at))[0])
    redis_client.hset(store.campaign_key(ids[0]), "batch_size", "ten")

    expired = lifecycle.expire_due(
        now=time.time() + 2 * 3600, client=redis_client, enqueue=lambda c, b: None
    )

    assert expired == ids[1:]
    for campaign_id in ids[1:]:
        summary = campaign_reads.campaign_summary(campaign_id, redis_client)
        assert summary["status"] == "expired" and summary["expired"] == 2
    assert _skipped(caplog, ids[0])
    # Still due: the next tick tries it again (a person may have fixed it by then).
    assert redis_client.zscore(store.EXPIRING_ZSET, ids[0]) is not None


def test_a_scheduled_campaign_a_script_cannot_read_is_paused_and_holds_up_no_other(
    redis_client: redis.Redis,
) -> None:
    """The first campaign due has its recipient count written by hand: the start's Lua
    script failed on it (a redis ResponseError, which the release re-raised as if Redis
    were away) and no campaign due after it started, every five seconds."""
    smtp_provider(redis_client, 2525)
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    for i, name in enumerate(("rel-unreadable", "rel-good")):
        at = (send_at + timedelta(milliseconds=i)).isoformat()
        create_held(redis_client, campaign_body(name, 1, send_at=at))
    redis_client.hset(store.counters_key("rel-unreadable"), "total", "many")
    started_batches: list[tuple[str, int]] = []
    time.sleep(1.1)

    started = lifecycle.release_due(
        client=redis_client, enqueue=lambda c, b: started_batches.append((c, b))
    )

    assert started == ["rel-good"] and started_batches == [("rel-good", 0)]
    status, reason = redis_client.hmget(store.campaign_key("rel-unreadable"), ["status", "reason"])
    assert status == "paused" and "could not start at send_at" in str(reason)
    assert redis_client.zcard(store.SCHEDULED_ZSET) == 0


def test_the_reputation_guard_judges_each_campaign_on_its_own(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """One running campaign's counter written by hand: the guard raised (ValueError) and
    the campaign after it, past the hard-bounce limit, was never paused (nor did the
    sweep that called it note that it ran)."""
    smtp_provider(redis_client, 2525)
    for name in ("rep-a-unreadable", "rep-b-bouncing"):
        create_held(redis_client, campaign_body(name, 2))
    sent = max(get_settings().pause_min_sent, 100)
    redis_client.hset(store.counters_key("rep-a-unreadable"), "sent", "lots")
    bouncing = {"sent": sent, "hard_bounced": sent // 2}
    redis_client.hset(store.counters_key("rep-b-bouncing"), mapping=bouncing)

    paused = reputation.check(redis_client, ["rep-a-unreadable", "rep-b-bouncing"])

    assert paused == ["rep-b-bouncing"]
    assert campaign_reads.get_status("rep-b-bouncing", redis_client).value == "paused"
    assert _skipped(caplog, "rep-a-unreadable")


def test_the_sweep_skips_a_campaign_whose_key_holds_another_type(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """One watched campaign's key holds a string (WRONGTYPE): the read of every watched
    campaign's fields raised, and no sweep looked after any campaign again."""
    smtp_provider(redis_client, 2525)
    stalled, lost = create_held(redis_client, campaign_body("sweep-stalled", 3))
    redis_client.hset(store.campaign_key(stalled), "started_at", str(time.time() - 10_000))
    redis_client.zadd(store.ACTIVE_ZSET, {"sweep-string": time.time()})
    redis_client.set(store.campaign_key("sweep-string"), "not a hash")
    again: list[tuple[str, int]] = []

    done = housekeeping.sweep(redis_client, lambda c, b: again.append((c, b)))

    assert done["restarted"] == [stalled] and again == lost
    assert _skipped(caplog, "sweep-string")


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection refused"),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
    ],
)
def test_an_error_of_redis_as_a_whole_still_ends_the_pass(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Not one campaign's fault: every other would meet it too (a traceback each), and
    the next tick tries again."""
    smtp_provider(redis_client, 2525)
    _cancelled(redis_client, "ret-away-1")
    _cancelled(redis_client, "ret-away-2")
    tried: list[str] = []

    def purge(r: redis.Redis, campaign_id: str, *args: object) -> bool:
        tried.append(campaign_id)
        raise error

    monkeypatch.setattr(retention, "purge", purge)
    with pytest.raises(type(error)):
        retention.purge_due(redis_client, now=time.time() + 31 * DAY)
    assert tried == ["ret-away-1"]
