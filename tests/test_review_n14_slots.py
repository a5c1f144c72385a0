"""Review N14: a session told that its connection slot could not be renewed in time
(dispatch.limits.ConnectionSlots.renew calls it at 5/6 of the slot's TTL, before the
slot may expire and another sender take it) kept its connection open until its sender
came back to the top of its chunk loop: a sender waiting out its pace (or a Redis that
did not answer its claim) then sent its chunk on that connection without checking
again, while another worker's sender had taken the expired slot and connected. Two
connections to a provider that allows one, counted at a real SMTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import campaign_reads, limits, store
from dispatch.limits import ConnectionSlots
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer


def _slot_renewals_hang_while(monkeypatch: pytest.MonkeyPatch, hang: Callable[[], bool]) -> None:
    """While ``hang()``, a slot's renewal (its script run by an async client) never
    answers (a connection to Redis gone quiet): the batch's lease is renewed as usual."""
    real = aioredis.Redis.eval

    async def never() -> Any:
        await asyncio.sleep(3600)

    def eval_(client: aioredis.Redis, body: str, *args: Any) -> Awaitable[Any]:
        if body == limits._RENEW and not isinstance(client, Pipeline) and hang():
            return never()
        return real(client, body, *args)

    monkeypatch.setattr(aioredis.Redis, "eval", eval_)


async def another_worker(
    smtp: SmtpTestServer,
    took: list[float],
    *,
    ready: Callable[[], bool],
    gave: list[float] | None = None,
    ttl: float = 1.2,
) -> None:
    """Another worker's sender: once ``ready()``, it asks for the provider's one slot
    every 20 ms; once it has it (noted in ``took``), it connects to the server (and reads
    its greeting), stays connected a second (less than the slot's TTL) while the batch
    would send its next message, then closes (noted in ``gave``) and gives the slot back."""
    client = store.async_client()
    slots = ConnectionSlots(client, _provider(smtp.port), ttl=ttl)
    try:
        while not ready():
            await asyncio.sleep(0.02)
        while not await slots.acquire("another"):
            await asyncio.sleep(0.02)
        took.append(time.monotonic())
        reader, writer = await asyncio.open_connection("127.0.0.1", smtp.port)
        await reader.readline()  # 220
        await asyncio.sleep(1.0)
        writer.write(b"QUIT\r\n")
        await reader.readline()
        writer.close()
        await writer.wait_closed()
        if gave is not None:
            gave.append(time.monotonic())
        await slots.release("another")
    finally:
        await client.aclose()


def _provider(port: int) -> Any:
    return parse_provider_config(
        {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": port,
         "max_connections": 1}
    )  # fmt: skip


def test_a_session_whose_slot_renewals_hang_closes_before_another_worker_connects(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message every 2 s (the sender waits out its pace between them, its connection
    idle); the slot lives 1.2 s, and its renewals hang from the start until the other
    worker took it. That worker's connection must be the only one open, and the batch
    still sends all of its messages after it gave the slot back."""
    smtp_provider(redis_client, smtp.port, rate_per_second=0.5, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    cid, _ = create_held(redis_client, body)
    settings = Settings(lease_ttl_ms=1200, slot_wait_seconds=30)
    took: list[float] = []
    _slot_renewals_hang_while(monkeypatch, lambda: not took)

    async def go() -> BatchResult:
        client = store.async_client()
        other = asyncio.create_task(another_worker(smtp, took, ready=lambda: bool(smtp.messages)))
        try:
            return await run_batch(cid, 0, r=client, settings=settings)
        finally:
            await other
            await client.aclose()

    result = asyncio.run(go())
    assert took, "the other worker never got the slot"
    assert smtp.handler.peak == 1  # (2: the batch's connection stayed open)
    assert result.counts.get("sent") == 3 and len(smtp.messages) == 3
    assert campaign_reads.get_status(cid, redis_client).value == "completed"
