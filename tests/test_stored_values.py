"""What an earlier version stored still works: a provider saved with a pace the save now
refuses, a campaign completed by the sweep, on a real Redis (review Y10)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis

from dispatch import campaigns, store
from dispatch.limits import ProviderLimiter
from dispatch.provider_store import load_provider
from tests.helpers import smtp_provider


def test_a_stored_pace_slower_than_one_a_day_is_read_as_one_a_day(
    redis_client: redis.Redis,
) -> None:
    """A rate of 1e-300, saved before the save refused it, overflowed the pace script:
    every batch of the provider failed with a Redis error."""
    smtp_provider(redis_client, 2525, "slow", rate_per_second=0.5)
    stored = orjson.loads(redis_client.get(store.provider_key("slow")) or b"{}")
    stored["rate_per_second"] = 1e-300  # as an earlier version saved it
    redis_client.set(store.provider_key("slow"), orjson.dumps(stored))
    provider = load_provider("slow", redis_client)
    assert provider.rate_per_second == 1e-300

    async def two_grants() -> list[float]:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, provider)
            return [(await limiter.take_some(1)).wait for _ in range(2)]
        finally:
            await client.aclose()

    first, second = asyncio.run(two_grants())
    assert first == 0 and 86_000 < second <= 86_400


def test_a_campaign_completed_by_the_sweep_notes_redis_time(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``completed_at`` on Redis's clock, as ``started_at`` and the ledger's completion:
    a host whose clock is off no longer makes a campaign's duration wrong."""
    key = store.campaign_key("sweep-done")
    redis_client.hset(key, mapping={"status": "running", "started_at": "1"})
    redis_client.hset(store.counters_key("sweep-done"), mapping={"queued": 0, "sent": 3})
    monkeypatch.setattr(time, "time", lambda: 1e9)  # this host: 2001
    before, _ = redis_client.time()
    assert campaigns.finish_if_done("sweep-done", redis_client)
    after, micros = redis_client.time()
    completed_at = float(redis_client.hget(key, "completed_at") or 0)
    assert before <= completed_at <= after + micros / 1e6  # Redis's clock, read around it
