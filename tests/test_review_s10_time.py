"""Review S10 (time): a provider's limits and a campaign's times under clocks that differ
(the workers' against Redis's) and at the moments they are read."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis

from dispatch import campaign_reads, limits, status_watch, store
from dispatch.limits import ConnectionSlots
from providers.config import parse_provider_config
from tests.helpers import campaign_body, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer


def _provider(max_connections: int) -> object:
    return parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "max_connections": max_connections}
    )  # fmt: skip


@pytest.mark.parametrize("skew", [120.0, -120.0])
def test_max_connections_hold_between_workers_whose_clocks_differ(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Two workers, one whose clock is two minutes off: with one connection allowed, the
    slot the other holds (renewed within its TTL) stays taken. Expiries read on each
    worker's clock let the one ahead take the other's slot for expired (two connections
    open); and the one behind wrote expiries the other took for past."""
    real = time.time

    async def go() -> tuple[bool, bool]:
        client = store.async_client()
        try:
            slots = ConnectionSlots(client, _provider(1), ttl=60)  # type: ignore[arg-type]
            first = await slots.acquire("first")
            # The second worker's clock (what the slots read, if they read one).
            off = SimpleNamespace(time=lambda: real() + skew)
            monkeypatch.setattr(limits, "time", off, raising=False)
            if skew < 0:  # the worker behind holds; the one on time asks
                await slots.release("first")
                first = await slots.acquire("first")
                monkeypatch.setattr(limits, "time", SimpleNamespace(time=real), raising=False)
            return first, await slots.acquire("second")
        finally:
            await client.aclose()

    first, second = asyncio.run(go())
    assert first is True
    assert second is False


def test_a_chunk_held_back_by_the_pace_past_expires_at_is_not_sent(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider's pace holds the chunks back past the campaign's ``expires_at``: none
    goes out after it, every message ends ``expired``. The status watch finds the
    expiry only at its next poll (here: not before the batch ends), and a chunk whose
    wait ended in between went out after expires_at (at 10 a second, four of them)."""
    monkeypatch.setattr(status_watch, "STATUS_POLL_SECONDS", 60.0)
    smtp_provider(redis_client, smtp.port, rate_per_second=1)
    seconds, micros = redis_client.time()
    # Another campaign's sends hold the provider for the next 2 s.
    redis_client.set(f"{store.PREFIX}:pace:local", repr(seconds + micros / 1e6 + 2.0))
    body = campaign_body("paced-past-expiry", 3, expires_at=time.time() + 1.0)
    campaign_id, _ = run_inline(redis_client, body)
    assert smtp.messages == []
    assert campaign_reads.get_status(campaign_id, redis_client).value == "expired"
    counters = campaign_reads.get_counters(campaign_id, redis_client)
    assert (counters["expired"], counters["sent"], counters["queued"]) == (3, 0, 0)
