"""Review T12: a run's senders book the provider's pace (GCRA in Redis, shared by every
worker) no further ahead than the run can wait. A booking is never given back: a run
handed on at its time budget (dispatch.status_watch.run_budget) wasted those it could
not wait for, and the next run's came after them. When max_connections times the pace's
interval reached past what a run waits (half its budget after the budget), each run
pushed the pace further than it could wait and no run sent anything again."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from dispatch import store
from dispatch.limits import Grant, ProviderLimiter, quota_keys
from dispatch.redis_server import RedisServer
from providers.config import parse_provider_config
from tests.test_batch_time_limit import sends_each_once_under_a_short_time_limit


def test_a_batch_whose_connections_book_past_what_a_run_waits_completes() -> None:
    """Visibility timeout 60 s: a run hands on after 15 s and sends what its senders
    booked. Three connections at one message every 10 s: on the old code each booked a
    slot 10 s after the other, the first run sent three and wasted its other bookings
    (30 s and 40 s ahead), every later run booked 30 s to 50 s ahead of its start and
    sent nothing. Now a sender books no further than 7.5 s ahead (else it waits and asks
    again), and every run sends."""
    sends_each_once_under_a_short_time_limit(5, max_connections=3, rate_per_second=0.1)


def _limiter(client: aioredis.Redis, **fields: Any) -> ProviderLimiter:
    data = {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    return ProviderLimiter(client, parse_provider_config(data))


def test_a_send_due_past_the_horizon_is_neither_reserved_nor_counted(
    own_redis: RedisServer,
) -> None:
    """One a second, a horizon of 2.5 s: three sends are reserved (due now, in 1 s and in
    2 s); the fourth, due in 3 s, is not: a grant of none, to ask again in about half a
    second, nothing counted against the daily quota, and the next send still due in 3 s
    (reserved, it would have been 4 s)."""

    async def work() -> tuple[list[Grant], Grant, str | None]:
        client = aioredis.from_url(own_redis.url, decode_responses=True)
        try:
            limiter = _limiter(client, rate_per_second=1, daily_quota=10)
            grants = [await limiter.take_some(1, horizon=2.5) for _ in range(4)]
            counted = await client.hget(quota_keys("local")[0], "sum")
            return grants, await limiter.take_some(1), counted
        finally:
            await client.aclose()

    grants, after, counted = asyncio.run(work())
    assert [g.count for g in grants] == [1, 1, 1, 0]
    assert 0 < grants[3].wait <= 0.5
    assert counted == "3"
    assert after.count == 1 and 2.5 < after.wait < 3.5


def test_a_hold_longer_than_the_horizon_grants_none(own_redis: RedisServer) -> None:
    """A provider without pace or quota held for 5 s: a sender that waits no longer than
    2 s is told to ask again once the hold is within 2 s of its end (it would have slept
    through the run's end, past the task's time limit)."""

    async def work() -> Grant:
        client = aioredis.from_url(own_redis.url, decode_responses=True)
        try:
            await client.set(f"{store.PREFIX}:hold:local", "1", px=5000)
            return await _limiter(client).take_some(4, horizon=2)
        finally:
            await client.aclose()

    grant = asyncio.run(work())
    assert grant.count == 0 and 2 < grant.wait <= 3
