"""A provider saved again or deleted while a campaign's batches send through it (review L6):
real Redis, real SMTP servers (the old host and the new), batches run as a worker runs them.

A batch reads its provider when it starts; a batch sends for minutes at a slow pace (1000
messages at 5 a second), so it must also notice a save or a delete while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, provider_store, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.sending import BatchResult, run_batch
from dispatch.session_pool import SessionPool
from dispatch.settings import Settings
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer

SETTINGS = Settings(batch_size=20, retry_base_seconds=0.05, inline_retry_seconds=5.0)


@pytest.fixture(autouse=True)
def _batches_of_twenty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaigns, "get_settings", lambda: SETTINGS)


@pytest.fixture
def old() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(credentials=("mailer", "old-password")) as server:
        yield server


@pytest.fixture
def new() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(credentials=("mailer", "new-password")) as server:
        yield server


def _campaign(r: redis.Redis, n: int) -> str:
    """A campaign of ``n`` (at most one batch) through provider ``local``, not sent."""
    body = {"provider": "local", "subject": "Hi", "html": "<p>hi</p>", "recipients": recipients(n)}
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=r, enqueue=lambda c, b: None
    )
    return cid


def _save(r: redis.Redis, server: SmtpTestServer, password: str, **fields: Any) -> None:
    smtp_provider(r, server.port, username="mailer", password=password, **fields)


def _slots(r: redis.Redis) -> list[str]:
    return [str(m) for m in r.zrange(f"{store.PREFIX}:connections:local", 0, -1)]


Meanwhile = Callable[[], Awaitable[None]]


def _run(cid: str, pool: SessionPool, meanwhile: Meanwhile | None = None) -> BatchResult:
    """Batch 0 of ``cid`` run as a worker process runs it, ``meanwhile`` alongside."""

    async def go() -> BatchResult:
        client = store.async_client()
        try:
            aside = asyncio.create_task(meanwhile()) if meanwhile else None
            result = await run_batch(cid, 0, r=client, settings=SETTINGS, pool=pool)
            if aside is not None:
                await aside
            return result
        finally:
            await client.aclose()

    return asyncio.run(go())


async def _once_received(server: SmtpTestServer, n: int) -> None:
    for _ in range(1000):
        if len(server.messages) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server never received {n} messages")


def _addresses(*servers: SmtpTestServer) -> list[str]:
    return [to for s in servers for m in s.messages for to in m.rcpt_tos]


def test_a_saved_host_and_password_reach_the_batch_that_is_sending(
    redis_client: redis.Redis, old: SmtpTestServer, new: SmtpTestServer
) -> None:
    """Moved to another host with another password while a slow batch sends: what is
    left goes to the new host (the old one gets at most the chunk that was on the wire),
    each message once, none failed."""
    _save(redis_client, old, "old-password", rate_per_second=1)  # a message a second
    cid = _campaign(redis_client, 12)
    pool = SessionPool(30.0)
    at_save: list[int] = []

    async def move() -> None:
        await _once_received(old, 2)
        await asyncio.to_thread(_save, redis_client, new, "new-password", rate_per_second=0)
        at_save.append(len(old.messages))

    first = _run(cid, pool, move)
    assert first.retry_at is not None and first.counts.get("reconfigured")  # runs again
    assert not _slots(redis_client) and len(pool) == 0  # the old session is not kept
    _run(cid, pool)
    asyncio.run(pool.close_all())
    assert len(old.messages) - at_save[0] <= 2  # was: the whole batch, 10 after the save
    assert new.messages  # the rest, there
    assert sorted(_addresses(old, new)) == sorted(r["email"] for r in recipients(12))
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"]) == (12, 0)
    assert campaign_reads.get_status(cid, redis_client) == "completed"


def test_the_same_configuration_saved_again_does_not_stop_the_batch(
    redis_client: redis.Redis, old: SmtpTestServer
) -> None:
    """A GET's answer PUT back (the secret encrypted anew: other bytes, the same
    configuration) leaves the running batch and its connection alone."""
    _save(redis_client, old, "old-password", rate_per_second=4, max_connections=1)
    cid = _campaign(redis_client, 10)
    pool = SessionPool(30.0)

    async def save_the_same() -> None:
        await _once_received(old, 2)
        await asyncio.to_thread(
            _save, redis_client, old, "old-password", rate_per_second=4, max_connections=1
        )

    result = _run(cid, pool, save_the_same)
    asyncio.run(pool.close_all())
    assert result.counts == {"sent": 10} and result.retry_at is None
    assert old.handler.connections == 1


def test_a_provider_deleted_while_its_batch_sends_pauses_the_campaign_at_once(
    redis_client: redis.Redis, old: SmtpTestServer
) -> None:
    """Deleted mid-batch: the batch stops within moments instead of sending the rest
    through it, the campaign pauses naming the provider, nothing fails, the rest stays
    queued, and its connection is closed with its slot given back, not kept."""
    _save(redis_client, old, "old-password", rate_per_second=1)
    cid = _campaign(redis_client, 12)
    pool = SessionPool(30.0)
    at_delete: list[int] = []

    async def delete() -> None:
        await _once_received(old, 2)
        await asyncio.to_thread(provider_store.delete_provider, "local", redis_client)
        at_delete.append(len(old.messages))

    result = _run(cid, pool, delete)
    sent = len(old.messages)
    assert sent - at_delete[0] <= 2  # was: the whole batch, 10 after the delete
    assert result.paused_reason == "provider 'local' is gone"
    assert campaign_reads.get_status(cid, redis_client) == "paused"
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"], counters["queued"]) == (sent, 0, 12 - sent)
    assert redis_client.hget(store.INCIDENTS_HASH, "pause|provider_deleted") == "1"
    assert not _slots(redis_client) and len(pool) == 0
    deadline = time.monotonic() + 10
    while old.handler.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert old.handler.active == 0


def test_credentials_fixed_while_a_batch_fails_with_the_old_ones_do_not_pause_it(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password is fixed while a batch that read the wrong one is refused: the
    refusal is no longer the provider's, so the batch runs again with the fixed password
    instead of pausing the campaign (which the operator would have to resume again, with
    a reason that no longer holds)."""
    server = SmtpTestServer(credentials=("mailer", "right"))
    refuse = server._authenticator

    def fixed_while_refused(*args: Any) -> Any:
        answer = refuse(*args)
        if not answer.success:  # the operator's fix lands as the server says no
            _save(redis_client, server, "right")
        return answer

    monkeypatch.setattr(server, "_authenticator", fixed_while_refused)
    with server:
        _save(redis_client, server, "wrong")
        cid = _campaign(redis_client, 5)
        pool = SessionPool(30.0)
        first = _run(cid, pool)
        assert not first.paused_reason and first.retry_at is not None
        assert campaign_reads.get_status(cid, redis_client) == "running"  # was: paused
        _run(cid, pool)
        asyncio.run(pool.close_all())
    assert sorted(_addresses(server)) == sorted(r["email"] for r in recipients(5))
    assert campaign_reads.get_status(cid, redis_client) == "completed"
    assert redis_client.hget(store.INCIDENTS_HASH, "pause|authentication") is None
    for seq in range(5):
        record = parse_record(redis_client.hget(store.ledger_key(cid), str(seq)))
        assert record is not None and (record["state"], record["attempts"]) == ("sent", 1)
