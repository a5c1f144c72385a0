"""Review R3: the sending path when Redis fails for a moment under a running batch.

A batch run lives on after a Redis error that none of its senders met (a restart while
they wait for the pace): what watches it and what holds its connection slots must live
on too, and a claim it gives back after a failure must be one it really did not attempt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatch import lifecycle, store
from dispatch.ledger import LedgerWriter
from dispatch.limits import ConnectionSlots
from dispatch.sending import run_batch
from dispatch.settings import Settings
from providers.config import parse_provider_config
from providers.smtp import SmtpSession
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_batch_claims import _states
from tests.test_invariants import check_books
from tests.test_review_q3_ledger import _RedisFails, _retried_each_sent_once


def test_a_pause_stops_a_batch_whose_status_watch_met_a_redis_error(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paced batch (two messages a second) whose status poll met one Redis error (a
    restart while its sender waited for the pace): the watch ended for good, and the
    pause that came next was never seen; the batch sent all 20 after it."""
    smtp_provider(redis_client, smtp.port, rate_per_second=2.0, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(20)}
    cid, _ = create_held(redis_client, body)
    hget = aioredis.Redis.hget
    failed: list[bool] = []

    async def status_fails_once(client: aioredis.Redis, name: str, key: str) -> Any:
        if key == "status" and not failed:
            failed.append(True)
            raise redis.ConnectionError("Redis went away")
        return await hget(client, name, key)

    monkeypatch.setattr(aioredis.Redis, "hget", status_fails_once)

    async def go() -> None:
        client = store.async_client()
        try:
            run = asyncio.create_task(run_batch(cid, 0, r=client))
            while not failed or not smtp.messages:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(lifecycle.pause, cid, client=redis_client)
            await run
        finally:
            await client.aclose()

    asyncio.run(go())
    summary = check_books(redis_client, cid)
    assert summary["status"] == "paused"
    assert summary["sent"] == len(smtp.messages) < 20 and summary["queued"] > 0, summary


def test_a_connection_slot_whose_renewal_failed_once_is_still_held(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One renewal of a connection slot that met a Redis error ended the renewing: the
    slot expired under its open session, without a word to it (``lost`` never called),
    and another sender got it: two connections to a provider that allows one."""
    fails = _RedisFails(monkeypatch)
    provider = parse_provider_config(
        {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "max_connections": 1}
    )  # fmt: skip
    lost: list[str] = []

    async def go() -> bool:
        r = store.async_client()
        slots = ConnectionSlots(r, provider, ttl=0.3)  # renewed every 0.1 s
        renewer = asyncio.create_task(slots.renew("a", lambda: lost.append("a")))
        try:
            assert await slots.acquire("a")
            fails.left = 1  # the next renewal
            await asyncio.sleep(1.0)  # three slot lifetimes
            assert fails.left == 0
            return await slots.acquire("b")
        finally:
            renewer.cancel()
            await r.aclose()

    assert asyncio.run(go()) is False
    assert lost == []


def test_a_retried_message_whose_next_claim_lost_its_answer_goes_back(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server put one recipient off (451) and the batch retried it; the claim of
    that retry ran in Redis but its answer was lost. The run gave back the claims it
    had not attempted, but not this one (it had been attempted once before): never
    handed over again, it ended ``unknown`` on the next run."""
    smtp_provider(redis_client, smtp.port)
    smtp.handler.rcpt_reply = lambda a: "451 4.3.0 try again" if a == "user0@example.com" else None
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
    cid, batches = create_held(redis_client, body)
    claim_many = LedgerWriter.claim_screened_many

    async def retry_claim_answer_lost(writer: LedgerWriter, claims: Any) -> list[str]:
        answers = await claim_many(writer, claims)  # Redis ran it
        if [seq for seq, *_ in claims] == [0]:  # the retry's claim
            smtp.handler.rcpt_reply = lambda a: None  # the server would take it now
            raise redis.ConnectionError("Connection closed by server.")
        return answers

    monkeypatch.setattr(LedgerWriter, "claim_screened_many", retry_claim_answer_lost)
    fast = Settings(retry_base_seconds=0.05, retry_max_seconds=0.1, inline_retry_seconds=5.0)
    with pytest.raises(redis.ConnectionError):
        run_batches(batches, fast)
    assert _states(redis_client, cid)[0] == "retry"  # given back, not left claimed
    monkeypatch.undo()
    _retried_each_sent_once(redis_client, smtp, cid, batches, 5)


def test_outcomes_whose_write_redis_failed_are_recorded_once_it_answers(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failed right after a chunk went out (a restart): the write of the chunk's
    outcomes failed, and the messages stayed ``claimed``, to be recorded ``unknown`` by
    the next run, although the run knew the server had taken them. They are recorded
    ``sent`` (with their events) once Redis answers again. (One chunk of four.)"""
    fails = _RedisFails(monkeypatch)
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4)}
    cid, batches = create_held(redis_client, body)
    send = SmtpSession.send

    async def redis_fails_after(session: SmtpSession, messages: Any) -> Any:
        outcomes = await send(session, messages)
        fails.left = 3  # the outcomes' write, and two tries after it
        return outcomes

    monkeypatch.setattr(SmtpSession, "send", redis_fails_after)
    with pytest.raises(redis.ConnectionError):
        run_batches(batches)
    assert fails.left == 0 and len(smtp.messages) == 4
    assert _states(redis_client, cid) == {seq: "sent" for seq in range(4)}
    monkeypatch.undo()
    _retried_each_sent_once(redis_client, smtp, cid, batches, 4)
    events = [f["json"] for _, f in redis_client.xrange(store.EVENTS_STREAM)]
    assert sum('"Notification Sent"' in e for e in events) == 4
