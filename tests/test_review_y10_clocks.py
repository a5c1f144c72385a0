"""Review Y10: every time housekeeping compares with Redis's clock is written on Redis's
clock too. A batch deferred for want of a connection (or handed on) noted its campaign's
``progress_at`` by its worker's clock, and a campaign's start noted ``started_at`` by the
API host's: a host half an hour ahead kept a campaign whose tasks were lost from being
restarted for that half hour."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, tzinfo

import pytest
import redis

from dispatch import campaigns, housekeeping, store
from dispatch.settings import Settings, get_settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider

AHEAD = 1800.0  # seconds: a host whose clock runs half an hour ahead of Redis's


class _AheadDatetime(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _AheadDatetime:  # type: ignore[override]
        return cls.fromtimestamp((datetime.now(tz) + timedelta(seconds=AHEAD)).timestamp(), tz)


def _host_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's clocks (time.time, and datetime.now where campaigns start) run
    half an hour ahead."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + AHEAD)
    monkeypatch.setattr(campaigns, "datetime", _AheadDatetime)


def _restarted_when_quiet(r: redis.Redis, monkeypatch: pytest.MonkeyPatch, cid: str) -> list[str]:
    """What a sweep restarts three lease TTLs later on Redis's clock, nothing running and
    nothing waiting (a sends queue of the test's own, empty)."""
    monkeypatch.undo()
    monkeypatch.setattr(store, "SENDS_QUEUE", f"{store.PREFIX}:test:sends")
    quick = get_settings().lease_ttl_ms / 1000 * 2
    later = store.redis_time(r) + 5 + 3 * quick
    return housekeeping.sweep(r, lambda c, b: None, now=later)["restarted"]


def test_a_batch_deferred_by_a_worker_ahead_does_not_hide_a_stall(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider's only connection slot is taken elsewhere: the batch goes back to the
    broker, noting the campaign alive. Its worker runs half an hour ahead; the task is
    then lost. The campaign is restarted once quiet for three lease TTLs on Redis's
    clock (it noted progress_at half an hour into the sweep's future: stalled that long)."""
    smtp_provider(redis_client, 9, max_connections=1)  # nothing listens: never reached
    slots = f"{store.PREFIX}:connections:local"
    redis_client.zadd(slots, {"elsewhere": store.redis_time(redis_client) + 60})
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    cid, batches = create_held(redis_client, body)
    _host_ahead(monkeypatch)
    (result,) = run_batches(batches, Settings(slot_wait_seconds=0.2), rounds=1)
    assert result.counts == {"deferred": 3}
    redis_client.delete(slots)
    assert _restarted_when_quiet(redis_client, monkeypatch, cid) == [cid]


def test_a_campaign_started_by_an_api_host_ahead_does_not_hide_a_stall(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API host runs half an hour ahead; the campaign's batch tasks are lost before
    any of them ran. It is restarted once quiet for three lease TTLs on Redis's clock
    (its started_at was half an hour into the sweep's future), whether it was posted
    with its list or started as a draft."""
    smtp_provider(redis_client, 9)  # (nothing is sent)
    _host_ahead(monkeypatch)
    posted, _ = create_held(
        redis_client,
        {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)},
    )
    assert _restarted_when_quiet(redis_client, monkeypatch, posted) == [posted]
    draft, _ = create_held(
        redis_client,
        {
            "provider": "local",
            "subject": "s",
            "html": "h",
            "recipients": recipients(3),
            "draft": True,
        },
    )
    _host_ahead(monkeypatch)
    campaigns.start_campaign(draft, client=redis_client, enqueue=lambda c, b: None)
    assert _restarted_when_quiet(redis_client, monkeypatch, draft) == [draft]


def test_a_live_filler_of_an_api_host_behind_is_not_taken_over(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API host runs a minute behind Redis; a campaign is posted with its list and,
    while its first chunk is being stored, a repeat of the request asks whether the
    filler died. It is alive (it started a moment ago): the repeat waits. The start
    noted filled_at by the host's clock, a minute old on Redis's: the repeat took the
    filling over from a live filler (two requests storing the same list)."""
    smtp_provider(redis_client, 9)  # (nothing is sent)
    real = datetime.now

    class Behind(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Behind:  # type: ignore[override]
            return cls.fromtimestamp((real(tz) - timedelta(seconds=60)).timestamp(), tz)

    monkeypatch.setattr(campaigns, "datetime", Behind)
    taken_over: list[int | None] = []
    add = campaigns.RecipientAppender.add

    def add_after_a_look(self: campaigns.RecipientAppender, *args: object) -> object:
        if not taken_over:  # a repeat of the request, meanwhile
            taken_over.append(campaigns._take_over_fill(self.campaign_id, redis_client))
        return add(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(campaigns.RecipientAppender, "add", add_after_a_look)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    create_held(redis_client, body)
    assert taken_over == [None]
