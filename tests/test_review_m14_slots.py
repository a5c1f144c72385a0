"""Review M14: a session's connection slot whose renewals fail (dispatch.limits.
ConnectionSlots.renew, review H14's report of a slot no renewal kept).

- A renewal that Redis did but answered too late (redis-py's 5 s socket timeout: a
  fork, a slow disk, a long command of another client) counted as failed: the session
  was told its slot was lost while Redis still held it, and the renewals that then
  succeeded kept it. Waiting for a slot again, the session counted its own against
  itself: with max_connections=1 it never got one, and the batch sent nothing until its
  run's time budget.
- The session was told only once a whole TTL had passed since the last renewal that
  held, when the slot had already expired and another sender could take it; and a
  renewal was awaited for as long as redis-py retried it (about a minute), telling
  nothing meanwhile: two connections to a provider that allows one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import limits, store
from dispatch.limits import ConnectionSlots
from tests.test_review_h14_renewers import _one_connection_provider


def _renewals_become(
    monkeypatch: pytest.MonkeyPatch,
    failing: Callable[[], bool],
    fail: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
) -> None:
    """While ``failing()``, each renewal of a slot (its script run by an async client) is
    ``fail(the real renewal)``."""
    real = aioredis.Redis.eval

    def eval_(client: aioredis.Redis, body: str, *args: Any) -> Any:
        if body == limits._RENEW and not isinstance(client, Pipeline) and failing():
            return fail(lambda: real(client, body, *args))
        return real(client, body, *args)

    monkeypatch.setattr(aioredis.Redis, "eval", eval_)


def _while_renewed(
    ttl: float, lost: Callable[[], None], then: Callable[[ConnectionSlots], Awaitable[Any]]
) -> Any:
    """``then(slots)`` while session "a" holds the one slot of a provider, renewed."""

    async def go() -> Any:
        r = store.async_client()
        slots = ConnectionSlots(r, _one_connection_provider(), ttl=ttl)
        try:
            assert await slots.acquire("a")
            renewer = asyncio.create_task(slots.renew("a", lost))
            try:
                return await then(slots)
            finally:
                renewer.cancel()
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_a_session_told_its_slot_was_lost_while_redis_kept_it_gets_it_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals done by Redis but answered too late, until the session is told: it then
    waits for a slot again, as the session does (sending.BatchSender._slot_again)."""
    lost: list[str] = []

    async def done_but_timed_out(renewal: Callable[[], Awaitable[Any]]) -> Any:
        await renewal()
        raise redis.TimeoutError("Timeout reading from 127.0.0.1:6379")

    _renewals_become(monkeypatch, lambda: not lost, done_but_timed_out)

    async def told_then_again(slots: ConnectionSlots) -> tuple[bool, bool]:
        until = time.monotonic() + 3.0
        while not lost and time.monotonic() < until:
            await asyncio.sleep(0.02)
        assert lost, "the session was never told"
        until = time.monotonic() + 2.0  # (three slot lifetimes)
        again = await slots.hold("a", lambda: time.monotonic() > until)
        return again, await slots.acquire("b")

    again, other = _while_renewed(0.6, lambda: lost.append("a"), told_then_again)
    assert again is True  # its own slot, not one more: nobody else gets one
    assert other is False


def test_a_session_whose_renewals_hang_is_told_before_another_can_take_its_slot(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal hangs (a Redis that stopped answering this connection, redis-py
    retrying): another sender asks for a slot every 20 ms; the session must have been
    told its slot is lost before the other gets it."""
    events: list[str] = []

    async def hangs(renewal: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.sleep(3600)

    _renewals_become(monkeypatch, lambda: True, hangs)

    async def another_asks(slots: ConnectionSlots) -> None:
        until = time.monotonic() + 2.4  # (two slot lifetimes)
        while time.monotonic() < until and "b took" not in events:
            if await slots.acquire("b"):
                events.append("b took")
            await asyncio.sleep(0.02)

    _while_renewed(1.2, lambda: events.append("a lost"), another_asks)
    assert events[:2] == ["a lost", "b took"], events
