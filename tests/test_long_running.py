"""A service that runs for weeks: what it keeps in Redis and in its processes stays bounded
and right however long a provider, a session or a worker lives."""

from __future__ import annotations

import asyncio

import redis

from dispatch import store
from dispatch.limits import ConnectionSlots
from providers.config import parse_provider_config


def _provider(max_connections: int = 1) -> object:
    return parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "max_connections": max_connections}
    )  # fmt: skip


SLOTS_KEY = f"{store.PREFIX}:connections:p"


def test_a_slot_renewed_for_longer_than_its_key_lives_stays_held(
    redis_client: redis.Redis,
) -> None:
    """The slots' key expires an hour after it was last written by a take: a session
    that keeps its slot longer (a slow pace, batch after batch in one process) must
    keep it, not find it gone (and reconnect) while another worker takes a second
    connection of a provider that allows one."""

    async def go() -> tuple[list[str], bool]:
        client = store.async_client()
        lost: list[str] = []
        try:
            slots = ConnectionSlots(client, _provider(), ttl=0.6)  # type: ignore[arg-type]
            assert await slots.acquire("a")
            # Stands for "an hour since the provider's last fresh slot".
            await client.pexpire(SLOTS_KEY, 300)
            renewer = asyncio.create_task(slots.renew("a", lambda: lost.append("a")))
            await asyncio.sleep(1.0)
            renewer.cancel()
            return lost, await slots.acquire("b")
        finally:
            await client.aclose()

    lost, second = asyncio.run(go())
    assert lost == []
    assert second is False  # max_connections=1 holds


def test_a_parked_slot_outlives_its_key_expiry_until_taken_back(
    redis_client: redis.Redis,
) -> None:
    """A kept session's slot, parked between batches and taken back by the next one,
    stays the session's however long the session lives."""

    async def go() -> tuple[bool, bool]:
        client = store.async_client()
        try:
            slots = ConnectionSlots(client, _provider(), ttl=60)  # type: ignore[arg-type]
            assert await slots.acquire("a")
            await client.pexpire(SLOTS_KEY, 300)
            assert await slots.park("a", 5)
            await asyncio.sleep(0.5)  # the next batch comes after the key's hour
            return await slots.retake("a"), await slots.acquire("b")
        finally:
            await client.aclose()

    retaken, second = asyncio.run(go())
    assert retaken is True
    assert second is False


def _provider_series(nickname: str) -> list[str]:
    from dispatch.metrics import RedisStateCollector

    return [
        sample.name
        for family in RedisStateCollector().collect()
        for sample in family.samples
        if sample.labels.get("provider") == nickname
    ]


def test_a_deleted_provider_leaves_the_metrics(redis_client: redis.Redis) -> None:
    """Providers come and go for weeks: /metrics (and Redis) does not keep the series
    of every provider ever deleted; the others' stay."""
    from dispatch import provider_store
    from tests.helpers import recipients, run_inline, smtp_provider
    from tests.smtp_server import SmtpTestServer

    with SmtpTestServer() as smtp:
        for nickname in ("customer-1", "customer-10"):
            smtp_provider(redis_client, smtp.port, nickname=nickname)
            body = {"provider": nickname, "subject": "s", "html": "h"}
            run_inline(redis_client, {**body, "recipients": recipients(2)})
    assert "dispatch_messages_total" in _provider_series("customer-1")
    assert "dispatch_send_seconds_count" in _provider_series("customer-1")

    assert provider_store.delete_provider("customer-1", redis_client)
    assert _provider_series("customer-1") == []
    assert "dispatch_messages_total" in _provider_series("customer-10")
    assert "dispatch_send_seconds_count" in _provider_series("customer-10")


def test_a_worker_process_keeps_a_bounded_number_of_provider_transports(
    redis_client: redis.Redis,
) -> None:
    """Providers come and go for weeks (one per customer, deleted when done): a worker
    process that sent through each of them keeps only a bounded number of their
    transports (each with its campaigns' MIME writers), not one per provider ever used."""
    from dispatch import process_cache, provider_store
    from tests.helpers import recipients, run_inline, smtp_provider
    from tests.smtp_server import SmtpTestServer

    with SmtpTestServer() as smtp:
        for i in range(100):
            smtp_provider(redis_client, smtp.port, nickname=f"customer-{i}")
            body = {"provider": f"customer-{i}", "subject": "s", "html": "h"}
            run_inline(redis_client, {**body, "recipients": recipients(1)})
            provider_store.delete_provider(f"customer-{i}", redis_client)
        assert len(smtp.messages) == 100
    assert len(process_cache._providers) < 100
    assert "customer-0" not in process_cache._providers
