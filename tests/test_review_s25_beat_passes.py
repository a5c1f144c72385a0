"""Review S25: beat's periodic passes, one bad item among good ones, and a pass that fails
as a whole.

- The retention purge of a Redis an earlier version filled (no index of kept campaigns
  yet) met one campaign key of another type while it built the index: the whole pass
  raised, the index was never marked built, and no campaign was purged again, every hour,
  with nothing in /metrics.
- A pending callback batch whose inbox entry was gone (deleted by hand) was handed out
  again by the recovery every minute, for ever.
- A pass that raised as a whole (a bug, as retention's DataError after its first 500
  candidates) showed in the workers' logs only: no metric, no alert (but housekeeping's,
  read as "is beat up?", 15 minutes later).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import callbacks, effects, faults, housekeeping, lifecycle, retention, store, tasks
from tests.api_server import ApiServer
from tests.helpers import campaign_body, create_held, smtp_provider
from tests.test_oncall import Watch
from tests.test_review_h14_beat_passes import _cancelled
from tests.test_review_q14_fault_metrics import _seen

DAY = 86400.0


def test_the_purge_of_an_earlier_versions_redis_skips_a_key_of_another_type(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The index of kept campaigns is built once per Redis, at the first purge after the
    upgrade; one campaign key holding a string (written by hand) made that build raise
    WRONGTYPE before it was marked done, so every purge failed and nothing was ever
    purged again. Now the others are purged and that one is reported."""
    smtp_provider(redis_client, 2525)
    good = [_cancelled(redis_client, f"s25-ret-{i}") for i in range(3)]
    redis_client.delete(store.KEPT_ZSET, store.KEPT_INDEXED)  # as an earlier version left it
    redis_client.zadd(store.CAMPAIGNS_ZSET, {"s25-string": 1.0})
    redis_client.set(store.campaign_key("s25-string"), "not a hash")

    purged = retention.purge_due(redis_client, now=time.time() + 31 * DAY)

    assert sorted(purged) == good
    assert all(retention.purged_at(redis_client, c) is not None for c in good)
    assert redis_client.exists(store.KEPT_INDEXED)  # built once, not at every pass
    assert any(
        rec.levelno == logging.ERROR and "campaign s25-string skipped" in rec.getMessage()
        for rec in caplog.records
    )
    # The next pass reads the index only: the string is reported again, nothing raises.
    assert retention.purge_due(redis_client, now=time.time() + 31 * DAY) == []


def test_a_pending_callback_batch_deleted_by_hand_is_not_recovered_for_ever(
    redis_client: redis.Redis,
) -> None:
    """Its id stayed in the pending index: each recovery handed it out again, its task
    found nothing to apply, and the next recovery handed it out once more. A stored batch
    beside it is applied as ever."""
    good = callbacks.store_batch("gen", "http", [], client=redis_client)
    orphan = callbacks.store_batch("gen", "http", [], client=redis_client)
    redis_client.hdel(store.CALLBACK_INBOX_HASH, orphan)

    assert sorted(effects.lost_batches(0, redis_client)) == sorted([good, orphan])
    assert effects.apply_batch(good, redis_client) == 0
    assert effects.apply_batch(orphan, redis_client) is None

    assert effects.lost_batches(0, redis_client) == []
    assert redis_client.zcard(store.CALLBACK_PENDING_ZSET) == 0


def _fails(exc: Exception) -> object:
    def fail(*_: object, **__: object) -> object:
        raise exc

    return fail


def test_a_beat_pass_that_fails_as_a_whole_is_counted_and_fires_an_alert(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Housekeeping meets its record of Redis's run_id written by hand (a string where a
    hash is kept): the whole sweep raises WRONGTYPE, every 30 s. The other passes meet a
    bug (retention's DataError after its first 500 candidates). Each is counted by pass
    and fires DispatchBeatPassFailing; an error of Redis as a whole is not counted (its
    own alerts say so, and the next tick tries again)."""
    watch = Watch(api_server)
    watch.scrape()  # every pass's series at 0 before
    redis_client.set(store.REDIS_RUN_HASH, "not a hash")
    for _ in range(2):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            tasks.housekeeping()
    redis_client.delete(store.REDIS_RUN_HASH)
    bug = redis.DataError("Invalid input of type: 'NoneType'")
    monkeypatch.setattr(retention, "purge_due", _fails(bug))
    monkeypatch.setattr(lifecycle, "expire_due", _fails(bug))
    monkeypatch.setattr(lifecycle, "release_due", _fails(ValueError("a bug")))
    monkeypatch.setattr(effects, "lost_batches", _fails(KeyError("a bug")))
    for task, exc in (
        (tasks.purge_finished, redis.DataError),
        (tasks.expire_campaigns, redis.DataError),
        (tasks.release_scheduled, ValueError),
        (tasks.recover_callbacks, KeyError),
    ):
        with pytest.raises(exc):
            task()
    monkeypatch.setattr(retention, "purge_due", _fails(redis.ConnectionError("gone")))
    with pytest.raises(redis.ConnectionError):
        tasks.purge_finished()
    _seen(
        watch, "dispatch_beat_passes_failed_total", "DispatchBeatPassFailing",
        faults.FAILED_PASSES,
        {"housekeeping": 2.0, "retention_purge": 1.0, "expiry": 1.0,
         "scheduled_release": 1.0, "callback_recovery": 1.0},
    )  # fmt: skip


def test_a_campaign_of_an_unknown_status_is_reported_not_dropped_by_each_pass(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Its status written by hand ('on-hold', or an older or newer version's): the
    scheduled release took it for one started meanwhile and dropped it from the schedule,
    the expiry from the expiring index, housekeeping from the active one, each without a
    word: it was never started, expired or looked after again, and nobody was told. Each
    pass now skips it, reports it (log, dispatch_beat_campaigns_skipped_total) and keeps
    it, and looks after the others."""
    r = redis_client
    smtp_provider(r, 2525)
    send_at = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    expires_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for name in ("s25-odd", "s25-good"):
        create_held(r, campaign_body(name, 2, send_at=send_at, expires_at=expires_at))
    r.hset(store.campaign_key("s25-odd"), "status", "on-hold")
    time.sleep(0.4)

    assert lifecycle.release_due(client=r, enqueue=lambda c, b: None) == ["s25-good"]
    assert r.zrange(store.SCHEDULED_ZSET, 0, -1) == ["s25-odd"]

    r.zadd(store.ACTIVE_ZSET, {"s25-odd": 1.0})  # as if it had been running
    swept = housekeeping.sweep(r, lambda c, b: None, now=time.time() + 3600)
    assert swept["restarted"] == ["s25-good"]
    assert "s25-odd" in r.zrange(store.ACTIVE_ZSET, 0, -1)

    expired = lifecycle.expire_due(now=time.time() + 7200, client=r, enqueue=lambda c, b: None)
    assert expired == ["s25-good"]
    assert r.zrange(store.EXPIRING_ZSET, 0, -1) == ["s25-odd"]

    for what in ("scheduled release", "housekeeping", "expiry"):
        assert any(
            rec.levelno == logging.ERROR
            and rec.getMessage().startswith(f"{what}: campaign s25-odd skipped")
            and "'on-hold'" in rec.getMessage()
            for rec in caplog.records
        ), what
    passes = ("scheduled_release", "housekeeping", "expiry")
    counted = r.hgetall(store.INCIDENTS_HASH)
    assert {p: counted.get(f"skipped|{p}") for p in passes} == dict.fromkeys(passes, "1")
