"""A batch run that fails while Redis is at its memory limit (noeviction) gives back the
claims of its first tries by deleting them: Redis refuses the give-back's writes then, and
after ``min(10 s, half the lease)`` those claims were left for the next run, which records
a claim it finds ``unknown`` (never sent, though never tried). Deletions Redis takes at its
limit, and a message never tried has no record (review A26)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from dispatch import store
from dispatch.batch_items import Item
from dispatch.claim_returns import _unclaim_first_tries, give_back_after_failure
from dispatch.ledger import LedgerWriter, claim_record
from dispatch.redis_server import RedisServer

CAMPAIGN, BATCH, TOKEN = "a26", 0, "the-run"


@pytest.fixture
def full_redis() -> Iterator[tuple[RedisServer, redis.Redis]]:
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url)
    try:
        yield server, r
    finally:
        r.close()
        server.stop()


def _items(r: redis.Redis) -> list[Item]:
    """Seven claimed messages: 0-4 first tries; 5 tried before and throttled (its claim
    looks like a first try's, its throttle count lives only in this run); 6 a second try."""
    items = [Item(seq, f"u{seq}@example.com", "", {}, claimed=True) for seq in range(7)]
    items[5].throttles = 1
    items[6].attempts = 1
    claims = {str(i.seq): claim_record(i.attempts + 1) for i in items}
    r.hset(store.ledger_key(CAMPAIGN), mapping=claims)
    return items


def _give_back(url: str, items: list[Item], token: str = TOKEN) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            writer = LedgerWriter(client, CAMPAIGN, token, BATCH, "local")
            await give_back_after_failure(writer, items, lease_ttl_ms=400)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_first_tries_go_back_by_deletion_while_redis_is_full(
    full_redis: tuple[RedisServer, redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    server, r = full_redis
    r.hset(store.ledger_key(CAMPAIGN), "7", claim_record(1))  # another's (given back, taken)
    items = _items(r)
    r.set(store.batch_lease_key(CAMPAIGN, BATCH), TOKEN)
    r.config_set("maxmemory", "1")
    try:
        _give_back(server.url, items)
    finally:
        r.config_set("maxmemory", "0")
    left = {int(k): v for k, v in r.hgetall(store.ledger_key(CAMPAIGN)).items()}
    # The first tries are queued again (no record); the others keep their claims (their
    # tries would be lost with a deletion): the next run records them unknown, as before.
    assert left == {5: claim_record(1), 6: claim_record(2), 7: claim_record(1)}
    assert [i.claimed for i in items] == [False] * 5 + [True] * 2
    warned = [rec.getMessage() for rec in caplog.records if rec.name == "dispatch.claim_returns"]
    assert any("5 first tries went back" in w for w in warned), warned
    assert any("could not give back 2 claims" in w for w in warned), warned


def test_nothing_is_deleted_without_the_runs_lease(
    full_redis: tuple[RedisServer, redis.Redis],
) -> None:
    """The lease taken over between the failed give-back and the deletion (the fence of
    the deletion itself: a give-back without the lease writes nothing and succeeds)."""
    server, r = full_redis
    items = _items(r)
    r.set(store.batch_lease_key(CAMPAIGN, BATCH), "another-run")
    r.config_set("maxmemory", "1")

    async def go() -> int:
        client = aioredis.Redis.from_url(server.url)
        try:
            return await _unclaim_first_tries(LedgerWriter(client, CAMPAIGN, TOKEN, BATCH), items)
        finally:
            await client.aclose()

    try:
        assert asyncio.run(go()) is None  # (any of them may still be claimed)
    finally:
        r.config_set("maxmemory", "0")
    assert r.hlen(store.ledger_key(CAMPAIGN)) == 7
    assert all(i.claimed for i in items)
