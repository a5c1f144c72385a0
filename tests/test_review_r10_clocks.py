"""Workers whose clocks are off (review R10): what they share in Redis goes by Redis's
clock, as the batch leases do, so a clock minutes off on one host changes nothing the
other workers rely on."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dispatch import housekeeping, store
from dispatch.limits import ConnectionSlots
from dispatch.settings import get_settings
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, smtp_provider

SKEW = 300.0  # seconds: a host whose clock is five minutes off


def _slots(client: object) -> ConnectionSlots:
    """A worker's view of the slots of a provider with max_connections 1 (TTL 60 s)."""
    provider = parse_provider_config(
        {"nickname": "skewed", "kind": "smtp", "host": "127.0.0.1", "max_connections": 1}
    )
    return ConnectionSlots(client, provider, ttl=60)  # type: ignore[arg-type]


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_connection_slot_holds_whatever_the_clocks_of_the_workers_say(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """max_connections 1: a worker holds the slot (taken, parked for its next batch,
    taken back), then another asks for one; one of them has a clock five minutes off.
    The second is refused. With each worker's own clock in the slot's expiry, a worker
    ahead took for expired the slot of everyone else (two connections to a provider
    allowing one), and one behind had its own slot taken from under its session."""
    real = time.time

    def clock(of: str) -> None:
        """This process's clock from now on: that of the worker ``of`` (its clock is
        off when it runs behind and holds the slot, or runs ahead and asks)."""
        off = (of == "holder") == (skew < 0)
        monkeypatch.setattr(time, "time", (lambda: real() + skew) if off else real)

    async def go() -> tuple[bool, bool, bool, bool]:
        client = store.async_client()
        try:
            slots = _slots(client)
            clock("holder")
            taken = await slots.acquire("holder")
            parked = await slots.park("holder", 30)  # kept for its next batch
            retaken = await slots.retake("holder")
            clock("asker")
            second = await slots.acquire("asker")
            return taken, parked, retaken, second
        finally:
            await client.aclose()

    assert asyncio.run(go()) == (True, True, True, False)
    assert redis_client.zrange(f"{store.PREFIX}:connections:skewed", 0, -1) == ["holder"]


def _running(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, started_ago: float, progress_ago: float
) -> tuple[str, float]:
    """A running campaign (its tasks lost: none runs) started and last progressed so many
    seconds ago on Redis's clock; the id and Redis's time. The sweep looks at a sends
    queue of the test's own (empty: nothing waits), not the real one, which other tests'
    tasks may fill."""
    smtp_provider(r, 9)  # (nothing is sent)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
    cid, _ = create_held(r, body)
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    r.hset(
        store.campaign_key(cid),
        mapping={"started_at": now - started_ago, "progress_at": now - progress_ago},
    )
    monkeypatch.setattr(store, "SENDS_QUEUE", f"{store.PREFIX}:test:sends")
    return cid, now


@pytest.mark.parametrize("skew", [-600.0, 1800.0], ids=["behind", "ahead"])
def test_housekeeping_judges_a_quiet_campaign_by_redis_clock_not_beats(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """The ledger notes a campaign's progress on Redis's clock; beat's host runs ten
    minutes behind, or half an hour ahead. A campaign quiet for three lease TTLs with
    nothing running is restarted all the same (behind, it was left stalled for ten
    minutes more); one that wrote a moment ago, another batch task waiting in the
    queue, is left alone (ahead, it was restarted: all its batches enqueued again)."""
    quick = get_settings().lease_ttl_ms / 1000 * 2
    quiet = quick * 1.5 if skew < 0 else 1.0
    cid, _ = _running(redis_client, monkeypatch, 10 * quick, quiet)
    if skew > 0:
        redis_client.lpush(store.SENDS_QUEUE, "another campaign's batch")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    restarted = housekeeping.sweep(redis_client, lambda c, b: None)["restarted"]
    monkeypatch.setattr(time, "time", real)
    redis_client.delete(store.SENDS_QUEUE)
    assert restarted == ([cid] if skew < 0 else [])


def test_a_batch_parked_by_a_worker_whose_clock_runs_ahead_does_not_hide_a_stall(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker half an hour ahead parks a batch for a retry in 5 s; the campaign is
    then quiet for three lease TTLs with nothing running. It is restarted: its
    ``parked_until`` noted that worker's clock, half an hour into the sweep's future, and
    the campaign stayed stalled that long."""
    quick = get_settings().lease_ttl_ms / 1000 * 2
    cid, redis_now = _running(redis_client, monkeypatch, quick, quick)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 1800)
    pipe = redis_client.pipeline()
    housekeeping.note_parked(pipe, cid, time.time() + 5)
    pipe.execute()
    monkeypatch.setattr(time, "time", real)
    later = redis_now + 5 + 3 * quick
    restarted = housekeeping.sweep(redis_client, lambda c, b: None, now=later)["restarted"]
    assert restarted == [cid]
