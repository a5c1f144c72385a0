"""Review P3: a slow pace holds for reservations that reach more than an hour ahead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from dispatch import store
from dispatch.limits import ProviderLimiter
from providers.config import parse_provider_config


def _config(**fields: object) -> Any:
    return parse_provider_config(
        {"nickname": "slow", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    )


def test_a_slow_pace_is_remembered_until_the_provider_is_next_free(
    redis_client: redis.Redis,
) -> None:
    """One message every 5,000 s (a warm-up pace), three senders: the third is due
    10,000 s from now, and the provider's next free time is kept at least that long.
    It was kept an hour: past it, the next sender found no reservation and went at once,
    alongside the two still waiting their turn."""

    async def go() -> list[float]:
        client = store.async_client()
        try:
            senders = [ProviderLimiter(client, _config(rate_per_second=0.0002)) for _ in range(3)]
            return [await s.take(1) for s in senders]
        finally:
            await client.aclose()

    waits = asyncio.run(go())
    assert waits[0] == pytest.approx(0, abs=1)
    assert waits[2] == pytest.approx(10_000, abs=1)
    kept = redis_client.ttl(f"{store.PREFIX}:pace:slow")
    assert kept >= 15_000 - 5  # 5,000 s after the third reservation's turn
