"""Beat's sweep on a busy, long-running service: what it asks of Redis does not grow with
the keys Redis holds besides (counted on the server, never timed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from dispatch import housekeeping, store
from dispatch.batch_items import begin_batch
from dispatch.ledger import BatchLease
from dispatch.redis_server import RedisServer
from tests.worker import wait_for

OTHER_KEYS = 20_000  # callback dedupe keys (a busy provider leaves millions)

T = TypeVar("T")


def _commands(r: redis.Redis, call: Callable[[], object]) -> int:
    """How many commands Redis processed for ``call`` (the INFO that asks included)."""
    before = int(r.info("stats")["total_commands_processed"])
    call()
    return int(r.info("stats")["total_commands_processed"]) - before - 1


def _with_lease(url: str, act: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await act(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_whether_any_batch_runs_is_asked_without_walking_the_keyspace(
    own_redis: RedisServer,
) -> None:
    """The sweep asks whether a batch lease is held anywhere; it SCANned the whole
    keyspace for lease keys (0.75 s of Redis CPU a sweep with a million callback dedupe
    keys, shared with the sending)."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert housekeeping._nothing_runs_or_waits(r)
        alone = _commands(r, lambda: housekeeping._nothing_runs_or_waits(r))
        pipe = r.pipeline(transaction=False)
        for i in range(OTHER_KEYS):
            pipe.set(store.callback_seen_key("local", f"{i:040x}"), "1", ex=600)
        pipe.execute()
        assert housekeeping._nothing_runs_or_waits(r)
        assert _commands(r, lambda: housekeeping._nothing_runs_or_waits(r)) == alone
    finally:
        r.close()


def test_a_batch_counts_as_running_from_its_lease_taken_to_its_lease_released(
    own_redis: RedisServer,
) -> None:
    """Taken by a batch run (or BatchLease.acquire), renewed past its TTL, released: the
    sweep sees it held exactly meanwhile."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)

    async def run(client: aioredis.Redis) -> list[bool]:
        seen = []
        first = BatchLease(client, "a", 0, ttl_ms=300)
        assert (await begin_batch(client, first, "a")).acquired  # as a batch run takes it
        second = BatchLease(client, "b", 7, ttl_ms=300)
        assert await second.acquire()
        await asyncio.sleep(0.9)  # three TTLs: only the renewals keep them held
        seen.append(housekeeping._nothing_runs_or_waits(r))
        await first.release()
        seen.append(housekeeping._nothing_runs_or_waits(r))
        await second.release()
        seen.append(housekeeping._nothing_runs_or_waits(r))
        return seen

    try:
        assert _with_lease(own_redis.url, run) == [False, False, True]
        assert r.zcard(store.LEASES_ZSET) == 0
    finally:
        r.close()


def test_a_lease_whose_holder_died_does_not_count_for_ever(own_redis: RedisServer) -> None:
    """A worker killed -9 holding a lease never releases it: the lease key expires, and
    its entry in the registry of leases must stop counting too (else every quiet
    campaign would wait the long stall time for ever)."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)

    async def die_holding(client: aioredis.Redis) -> None:
        lease = BatchLease(client, "dead", 3, ttl_ms=400)
        assert await lease.acquire()
        # Killed: nothing renews it and nothing releases it.

    try:
        _with_lease(own_redis.url, die_holding)
        assert not housekeeping._nothing_runs_or_waits(r)  # within its TTL: it may run
        wait_for(lambda: not r.exists(store.batch_lease_key("dead", 3)), timeout=10)
        assert housekeeping._nothing_runs_or_waits(r)
        assert r.zcard(store.LEASES_ZSET) == 0
        # A lease key removed by hand (an operator's DEL) stops counting at once.
        _with_lease(own_redis.url, lambda c: BatchLease(c, "x", 0, ttl_ms=60_000).acquire())
        assert not housekeeping._nothing_runs_or_waits(r)
        r.delete(store.batch_lease_key("x", 0))
        assert housekeeping._nothing_runs_or_waits(r)
    finally:
        r.close()
