"""Workers whose clocks are off (review R10): what they share in Redis goes by Redis's
clock, as the batch leases do, so a clock minutes off on one host changes nothing the
other workers rely on."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dispatch import store
from dispatch.limits import ConnectionSlots
from providers.config import parse_provider_config

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
