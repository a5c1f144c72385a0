"""What the product's own housekeeping leaves of a campaign or a batch run (review E11):
the registry entry of a lease whose holder never let go, and a purged campaign's entry
in the index of campaigns to expire."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis

from dispatch import housekeeping, retention, store
from dispatch.ledger import BatchLease
from dispatch.redis_server import RedisServer
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import wait_for

DAY = 86400.0


def _abandon_lease(url: str, campaign_id: str, batch: int) -> None:
    """A lease taken by a batch run killed before it let go (nothing renews it)."""

    async def go() -> None:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            assert await BatchLease(client, campaign_id, batch, ttl_ms=200).acquire()
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_sweep_drops_the_registry_entries_of_lapsed_leases(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Only a quiet running campaign made the sweep read the registry of leases: with
    none, a killed holder's entry stayed there for good, one more every batch run killed
    or taken over."""
    for batch in range(3):
        _abandon_lease(redis_server.url, "gone", batch)
    assert redis_client.zcard(store.LEASES_ZSET) == 3
    wait_for(lambda: not redis_client.exists(store.batch_lease_key("gone", 2)), timeout=10)

    housekeeping.sweep(redis_client, lambda c, b: None)  # nothing runs, nothing is quiet

    assert redis_client.zcard(store.LEASES_ZSET) == 0


def test_a_live_lease_keeps_its_registry_entry(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def hold_through_a_sweep() -> bool:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            lease = BatchLease(client, "live", 0, ttl_ms=60_000)
            assert await lease.acquire()
            housekeeping.sweep(redis_client, lambda c, b: None)
            kept = redis_client.zscore(store.LEASES_ZSET, lease.key) is not None
            await lease.release()
            return kept
        finally:
            await client.aclose()

    assert asyncio.run(hold_through_a_sweep())
    assert redis_client.zcard(store.LEASES_ZSET) == 0


def test_a_purged_campaign_leaves_the_index_of_campaigns_to_expire(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A campaign with an expires_at far ahead, sent and purged: nothing of it is left to
    expire, and the index no longer names it (it stayed until its expires_at, years)."""
    smtp_provider(redis_client, smtp.port)
    far = time.time() + 3650 * DAY
    body = {
        "id": "exp-far",
        "provider": "local",
        "subject": "Hi",
        "html": "<p>{{ name }}</p>",
        "expires_at": far,
        "recipients": recipients(3),
    }
    campaign_id, _ = run_inline(redis_client, body)
    assert redis_client.zscore(store.EXPIRING_ZSET, campaign_id) is not None

    assert retention.purge_due(redis_client, now=time.time() + 31 * DAY) == [campaign_id]

    assert redis_client.zscore(store.EXPIRING_ZSET, campaign_id) is None
    assert redis_client.hget(store.campaign_key(campaign_id), "status") == "completed"
