"""Review H14: the renewals that keep a batch's lease and a session's connection slot
(dispatch.ledger.BatchLease, dispatch.limits.ConnectionSlots.renew) caught only Redis's
errors. Anything else (a bug) ended them without a word: a slot expired under its open
session and another sender took it (two connections to a provider that allows one); a
lease lapsed and its run was refused at its next write (LeaseLostError), its claims left
to be recorded unknown, the cause logged nowhere."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import campaign_reads, ledger, limits, store
from dispatch.limits import ConnectionSlots
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer

_BUG = "a bug in the renewal"


def _renewal_fails(monkeypatch: pytest.MonkeyPatch, script: str, times: int) -> list[int]:
    """The next ``times`` runs of ``script`` by an async client raise a RuntimeError (not
    a Redis error); the list holds one item per failure."""
    real = aioredis.Redis.eval
    failed: list[int] = []

    async def fail() -> Any:
        raise RuntimeError(_BUG)

    def eval_(client: aioredis.Redis, body: str, *args: Any) -> Any:
        # (A pipeline is a client too: its eval queues the command, and is left alone.)
        if body == script and not isinstance(client, Pipeline) and len(failed) < times:
            failed.append(1)
            return fail()
        return real(client, body, *args)

    monkeypatch.setattr(aioredis.Redis, "eval", eval_)
    return failed


def _logged_with_traceback(caplog: pytest.LogCaptureFixture, logger: str) -> bool:
    return any(
        rec.name == logger
        and rec.levelno == logging.ERROR
        and rec.exc_info is not None
        and _BUG in str(rec.exc_info[1])
        for rec in caplog.records
    )


def _one_connection_provider() -> Any:
    return parse_provider_config(
        {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "max_connections": 1}
    )  # fmt: skip


def test_a_slot_whose_renewal_failed_once_unexpectedly_is_still_held(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed = _renewal_fails(monkeypatch, limits._RENEW, 1)
    lost: list[str] = []

    async def go() -> bool:
        r = store.async_client()
        slots = ConnectionSlots(r, _one_connection_provider(), ttl=0.3)  # renewed every 0.1 s
        try:
            assert await slots.acquire("a")
            renewer = asyncio.create_task(slots.renew("a", lambda: lost.append("a")))
            await asyncio.sleep(1.0)  # three slot lifetimes
            assert not renewer.done()
            renewer.cancel()
            return await slots.acquire("b")
        finally:
            await r.aclose()

    assert asyncio.run(go()) is False  # max_connections=1 holds
    assert failed == [1] and lost == []
    assert _logged_with_traceback(caplog, "dispatch.limits")


def test_a_slot_not_renewed_for_its_ttl_is_reported_lost(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every renewal fails: the slot has expired, and the session is told so (it closes
    and waits for a slot again before it sends) rather than going on past the limit."""
    _renewal_fails(monkeypatch, limits._RENEW, 1000)
    lost: list[str] = []

    async def go() -> None:
        r = store.async_client()
        slots = ConnectionSlots(r, _one_connection_provider(), ttl=0.3)
        try:
            assert await slots.acquire("a")
            renewer = asyncio.create_task(slots.renew("a", lambda: lost.append("a")))
            await asyncio.sleep(0.8)
            renewer.cancel()
        finally:
            await r.aclose()

    asyncio.run(go())
    assert lost  # (once a TTL: after about 0.3 s and 0.6 s)


def test_a_batch_whose_lease_renewal_failed_once_unexpectedly_sends_everything(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Eight messages at four a second under a one-second lease (renewed every 0.25 s):
    the first renewal fails. The run raised LeaseLostError after its lease lapsed, half
    of the messages unsent; now it renews at the next period and sends them all."""
    smtp_provider(redis_client, smtp.port, rate_per_second=4.0, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(8)}
    cid, _ = create_held(redis_client, body)
    failed = _renewal_fails(monkeypatch, ledger._RENEW, 1)

    async def go() -> BatchResult:
        client = store.async_client()
        try:
            return await run_batch(cid, 0, r=client, settings=Settings(lease_ttl_ms=1000))
        finally:
            await client.aclose()

    result = asyncio.run(go())
    assert failed == [1]
    assert result.counts.get("sent") == 8 and len(smtp.messages) == 8
    assert campaign_reads.get_status(cid, redis_client).value == "completed"
    assert _logged_with_traceback(caplog, "dispatch.ledger")


def test_a_run_refused_for_its_lease_says_why(redis_client: redis.Redis) -> None:
    """What the operator sees of a fenced run (the failed send_batch task's error): it
    was the lease's key alone."""

    async def go() -> str:
        r = store.async_client()
        try:
            lease = ledger.BatchLease(r, "h14-fenced", 0, ttl_ms=60_000)
            assert await lease.acquire()
            writer = ledger.LedgerWriter(r, "h14-fenced", lease.token, 0)
            await r.set(store.batch_lease_key("h14-fenced", 0), "another run")
            with pytest.raises(ledger.LeaseLostError) as refused:
                await writer.claim_many([(0, ledger.claim_record(1))])
            await lease.release()
            return str(refused.value)
        finally:
            await r.aclose()

    said = asyncio.run(go())
    key = store.batch_lease_key("h14-fenced", 0)
    assert said.startswith(f"{key}: ") and "lapsed" in said and "another run" in said
