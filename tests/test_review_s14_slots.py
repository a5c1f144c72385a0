"""Review S14: a session told its connection slot could not be renewed in time (review
N14's KeptSession.lose_slot) while its sender was still opening it (connect, greeting,
EHLO, AUTH: each up to the provider's timeout) was not closed once it opened: the sender
sent its chunk on it at once, while another worker's sender had taken the expired slot
and connected. Counted at a real SMTP server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatch import campaign_reads, store
from dispatch.limits import ConnectionSlots
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from dispatch.test_email import TestEmailResult, send_test_email
from providers.config import SmtpConfig
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_review_n14_slots import _slot_renewals_hang_while, another_worker

EHLO_SECONDS = 2.0  # the first connection's EHLO answer (past the slot's 1.2 s TTL)


def _slow_first_ehlo(smtp: SmtpTestServer) -> None:
    handler = smtp.handler
    real = handler.handle_EHLO
    answered: list[bool] = []

    async def handle_EHLO(
        server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not answered:
            answered.append(True)
            await asyncio.sleep(EHLO_SECONDS)
        return await real(server, session, envelope, hostname, responses)

    handler.handle_EHLO = handle_EHLO  # type: ignore[method-assign]


def test_a_session_whose_slot_is_lost_while_it_opens_sends_nothing_on_it(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's first connection waits 2 s for its EHLO answer; its slot (TTL 1.2 s)
    is not renewed meanwhile, so it is told at 1 s, and the slot expires to another
    worker at 1.2 s. No message of the batch may arrive while that worker holds the slot
    (its send on the connection opened meanwhile did); all arrive after it."""
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2)}
    cid, _ = create_held(redis_client, body)
    settings = Settings(lease_ttl_ms=1200, slot_wait_seconds=30)
    took: list[float] = []
    gave: list[float] = []
    arrived: list[float] = []
    _slot_renewals_hang_while(monkeypatch, lambda: not took)
    _slow_first_ehlo(smtp)

    def data_reply(envelope: Any) -> None:
        arrived.append(time.monotonic())

    smtp.handler.data_reply = data_reply

    async def go() -> BatchResult:
        client = store.async_client()
        try:
            batch = run_batch(cid, 0, r=client, settings=settings)
            other = another_worker(
                smtp, took, ready=lambda: bool(smtp.handler.connections), gave=gave
            )
            result, _ = await asyncio.gather(batch, other)
            return result
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert took and gave, "the other worker never got the slot"
    assert [t for t in arrived if took[0] <= t <= gave[0]] == []  # (sent on a lost slot)
    assert result.counts.get("sent") == 2 and len(smtp.messages) == 2
    assert campaign_reads.get_status(cid, redis_client).value == "completed"


def test_a_test_email_keeps_its_connection_slot_for_its_whole_exchange(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test email took the provider's one connection slot with the batch lease's TTL
    (DISPATCH_LEASE_TTL_MS, here 1.2 s) and never renewed it: an exchange longer than
    that (the server answers the message's end after 2 s, within the test's 4 s) lost
    its slot, and a campaign's sender took it and connected while the test's
    connection was open: two connections to a provider that allows one."""
    config = SmtpConfig(
        nickname="s14", host="127.0.0.1", port=smtp.port, security="none",
        from_address="deals@acme.example", max_connections=1, timeout=5,
    )  # fmt: skip

    def data_reply(envelope: Any) -> None:
        time.sleep(2.0)  # (the server's own thread: the test's client waits)

    smtp.handler.data_reply = data_reply
    settings = Settings(lease_ttl_ms=1200)
    taken: list[float] = []
    released: list[float] = []  # when the test email gave its slot back
    release = ConnectionSlots.release

    async def noting_release(self: ConnectionSlots, token: str) -> None:
        if token != "campaign":
            released.append(time.monotonic())
        await release(self, token)

    monkeypatch.setattr(ConnectionSlots, "release", noting_release)

    async def campaign_sender(test: asyncio.Task[TestEmailResult]) -> None:
        client = store.async_client()
        slots = ConnectionSlots(client, config, ttl=1.2)
        try:
            while not test.done():
                if await slots.acquire("campaign"):
                    taken.append(time.monotonic())
                    await slots.release("campaign")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def go() -> TestEmailResult:
        client = store.async_client()
        try:
            send = send_test_email(
                config, "ops@example.com", settings=settings, deadline=4.0, limits=client
            )
            test = asyncio.create_task(send)
            while not smtp.handler.connections:  # (the test holds the slot from here)
                await asyncio.sleep(0.01)
            await campaign_sender(test)
            return await test
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert result.ok, result
    # Taken only once the test gave it back (it was taken 1.2 s after the test took it);
    # the sender may take it before the test's task is seen done.
    assert len(released) == 1
    assert [t for t in taken if t < released[0]] == []
    assert redis_client.zcard(f"{store.PREFIX}:connections:s14") == 0  # given back
