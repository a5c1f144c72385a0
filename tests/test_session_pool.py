"""Provider sessions kept from one batch to the next: real servers, Redis and batches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import redis

from dispatch import campaign_reads, campaigns, runtime, session_pool, store
from dispatch.ledger import parse_record
from dispatch.limits import ConnectionSlots
from dispatch.models import CampaignRequest
from dispatch.sending import BatchResult, run_batch
from dispatch.session_pool import SLOT_GRACE_SECONDS, KeptSession, SessionPool
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import http_provider, recipients, smtp_provider
from tests.http_sink import HttpSink, Reply
from tests.smtp_server import SmtpTestServer

SETTINGS = Settings(batch_size=5, retry_base_seconds=0.05, inline_retry_seconds=5.0)


@pytest.fixture(autouse=True)
def _batches_of_five(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaigns, "get_settings", lambda: SETTINGS)


def _campaign(r: redis.Redis, provider: str, n: int) -> tuple[str, list[int]]:
    """A campaign of ``n`` recipients in batches of 5 (not sent): its id and batches."""
    batches: list[int] = []
    body = {
        "provider": provider,
        "subject": "Hi {{ name }}",
        "html": "<p>{{ name }}</p>",
        "recipients": recipients(n),
    }
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=r, enqueue=lambda c, b: batches.append(b)
    )
    return cid, batches


def _slots(r: redis.Redis, provider: str) -> list[tuple[str, float]]:
    key = f"{store.PREFIX}:connections:{provider}"
    return [(str(m), float(s)) for m, s in r.zrange(key, 0, -1, withscores=True)]


Between = Callable[[SessionPool], Awaitable[None]]


def _run(
    cid: str, batches: list[int], pool: SessionPool | None, between: Between | None = None
) -> list[BatchResult]:
    """Run the batches one after the other on one loop (as a worker process does)."""

    async def go() -> list[BatchResult]:
        client = store.async_client()
        out = []
        try:
            for index, b in enumerate(batches):
                if index and between is not None and pool is not None:
                    await between(pool)
                out.append(await run_batch(cid, b, r=client, settings=SETTINGS, pool=pool))
            if pool is not None:
                await pool.close_all()
        finally:
            await client.aclose()
        return out

    return asyncio.run(go())


def _all_sent_once(r: redis.Redis, cid: str, n: int) -> None:
    assert campaign_reads.get_counters(cid, r)["sent"] == n
    for seq in range(n):
        rec = parse_record(r.hget(store.ledger_key(cid), str(seq)))
        assert rec is not None and (rec["state"], rec["attempts"]) == ("sent", 1), (seq, rec)


def test_http_batches_share_one_connection_through_the_pool(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, max_connections=1)
        cid, batches = _campaign(redis_client, "esp", 15)
        slots_between: list[list[tuple[str, float]]] = []

        async def look(pool: SessionPool) -> None:
            slots_between.append(_slots(redis_client, "esp"))
            assert len(pool) == 1

        _run(cid, batches, SessionPool(30.0), look)
        ports = [request.peer_port for request in sink.requests]
    assert len(ports) == 3 and len(set(ports)) == 1  # three batches, one TCP connection
    _all_sent_once(redis_client, cid, 15)
    # Between batches the kept session holds its slot, parked: it expires by itself
    # shortly after the idle time (not after the lease TTL of a working sender).
    for slots in slots_between:
        assert len(slots) == 1
        expires_in = slots[0][1] - time.time()
        assert 0 < expires_in <= 30 + SLOT_GRACE_SECONDS < SETTINGS.lease_ttl_ms / 1000
    assert _slots(redis_client, "esp") == []  # closed with the pool: slot given back


def test_without_a_pool_each_batch_connects_anew(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, batches = _campaign(redis_client, "esp", 10)
        _run(cid, batches, None)
        ports = [request.peer_port for request in sink.requests]
    assert len(ports) == 2 and len(set(ports)) == 2
    assert _slots(redis_client, "esp") == []


def test_a_changed_configuration_gets_a_new_session(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, batches = _campaign(redis_client, "esp", 10)

        async def change(pool: SessionPool) -> None:
            http_provider(redis_client, sink.url, timeout=7)

        _run(cid, batches, SessionPool(30.0), change)
        ports = [request.peer_port for request in sink.requests]
    assert len(set(ports)) == 2
    assert _slots(redis_client, "esp") == []


def test_smtp_connection_is_reused_and_redialled_after_the_server_hangs_up(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port, max_connections=1)
    cid, batches = _campaign(redis_client, "local", 15)
    seen: list[int] = []

    async def hang_up_after_the_second(pool: SessionPool) -> None:
        seen.append(smtp.handler.connections)
        if len(seen) == 2:
            smtp.hang_up()  # an idle timeout on the server's side
            for _ in range(100):
                await asyncio.sleep(0.02)  # the client's loop sees the close
                if smtp.handler.active == 0:
                    break

    _run(cid, batches, SessionPool(30.0), hang_up_after_the_second)
    assert seen == [1, 1]  # the second batch went out on the first batch's connection
    assert smtp.handler.connections == 2  # the third dialled again, and sent at once
    assert len(smtp.messages) == 15
    _all_sent_once(redis_client, cid, 15)


def test_a_session_whose_slot_expired_is_closed_not_used(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port, max_connections=1)
    cid, batches = _campaign(redis_client, "local", 10)

    async def expire_and_let_another_take_it(pool: SessionPool) -> None:
        key = f"{store.PREFIX}:connections:local"
        redis_client.zadd(key, {"another-worker": time.time() + 0.3})
        (token,) = [m for m, _ in _slots(redis_client, "local") if m != "another-worker"]
        redis_client.zadd(key, {token: time.time() - 1})

    results = _run(cid, batches, SessionPool(30.0), expire_and_let_another_take_it)
    assert smtp.handler.connections == 2  # the kept connection was closed, not used
    assert smtp.handler.peak == 1  # never two at once: max_connections holds
    assert [r.counts.get("sent") for r in results] == [5, 5]
    _all_sent_once(redis_client, cid, 10)


def test_a_batch_of_another_provider_closes_the_kept_sessions(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        first, first_batches = _campaign(redis_client, "local", 5)
        second, second_batches = _campaign(redis_client, "esp", 5)
        active: list[int] = []

        async def go() -> None:
            client = store.async_client()
            pool = SessionPool(30.0)
            try:
                await run_batch(first, first_batches[0], r=client, settings=SETTINGS, pool=pool)
                active.append(smtp.handler.active)
                await run_batch(second, second_batches[0], r=client, settings=SETTINGS, pool=pool)
                for _ in range(100):
                    if smtp.handler.active == 0:
                        break
                    await asyncio.sleep(0.02)
                active.append(smtp.handler.active)
                await pool.close_all()
            finally:
                await client.aclose()

        asyncio.run(go())
    assert active == [1, 0]
    assert _slots(redis_client, "local") == [] and _slots(redis_client, "esp") == []
    _all_sent_once(redis_client, first, 5)
    _all_sent_once(redis_client, second, 5)


def _one_task(
    r: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch, pool: SessionPool
) -> None:
    """A batch sent as the task does (runtime.run with this process's pool, ``pool``),
    its session kept."""
    smtp_provider(r, smtp.port)
    cid, batches = _campaign(r, "local", 5)
    runtime.run(lambda client: asyncio.sleep(0))  # this process's loop and client
    monkeypatch.setattr(runtime, "_pool", pool)
    result = runtime.run(
        lambda client: run_batch(
            cid, batches[0], r=client, settings=SETTINGS, pool=runtime.session_pool()
        )
    )
    assert result.counts == {"sent": 5}
    assert smtp.handler.active == 1 and len(_slots(r, "local")) == 1 and len(pool) == 1


def test_the_runtime_closes_idle_sessions_between_tasks(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No task follows: the runtime's timer closes the session and frees its slot."""
    _one_task(redis_client, smtp, monkeypatch, SessionPool(1.0))
    deadline = time.monotonic() + 10
    while (smtp.handler.active or _slots(redis_client, "local")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smtp.handler.active == 0
    assert _slots(redis_client, "local") == []
    assert len(runtime.session_pool()) == 0


def test_one_thread_closes_idle_sessions_however_many_tasks_run(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks that each keep a session start no thread of their own (a thread a task cost
    a worker about 5 % of its CPU); the one closer still closes the last session."""
    pool = SessionPool(1.0)
    _one_task(redis_client, smtp, monkeypatch, pool)  # the closer runs from here on
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    created = [_campaign(redis_client, "local", 5) for _ in range(3)]
    monkeypatch.setattr(threading.Thread, "start", start)
    for cid, batches in created:
        result = runtime.run(
            lambda client, cid=cid, b=batches[0]: run_batch(
                cid, b, r=client, settings=SETTINGS, pool=runtime.session_pool()
            )
        )
        assert result.counts == {"sent": 5} and len(pool) == 1
    assert started == []
    deadline = time.monotonic() + 10
    while (smtp.handler.active or _slots(redis_client, "local")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (smtp.handler.active, _slots(redis_client, "local"), len(pool)) == (0, [], 0)


def test_a_goodbye_that_never_ends_is_cut_short(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server gone quiet cannot hold up the batch that closes its idle session."""
    monkeypatch.setattr(session_pool, "CLOSE_SECONDS", 0.1)
    ended: list[str] = []

    async def quiet_server_quit() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("transport closed")  # the session's own cleanup still runs

    async def go() -> None:
        client = store.async_client()
        try:
            slots = _slots_of(client, "quiet")
            assert await slots.acquire("t1")
            kept = KeptSession(("quiet", "{}"), slots, "t1", session=object())  # type: ignore[arg-type]
            kept.stack.push_async_callback(quiet_server_quit)
            await asyncio.wait_for(kept.close(), 30)  # raises if the close hung
        finally:
            await client.aclose()

    asyncio.run(go())
    assert ended == ["transport closed"]
    assert _slots(redis_client, "quiet") == []


def _slots_of(client: object, nickname: str) -> ConnectionSlots:
    """Another worker's view of the slots of a provider with max_connections 1."""
    provider = parse_provider_config(
        {"nickname": nickname, "kind": "smtp", "host": "127.0.0.1", "max_connections": 1}
    )
    return ConnectionSlots(client, provider, ttl=60)  # type: ignore[arg-type]


def test_a_slot_is_not_kept_from_a_sender_that_waits(redis_client: redis.Redis) -> None:
    """One slot: a sender elsewhere waits for it while the batch sends; the batch's
    session is closed at its end instead of kept, and the waiting sender gets the slot
    (kept, it would stay taken for the pool's 30 s idle time)."""
    with HttpSink() as sink:
        sink.script(Reply(delay=1.0))
        http_provider(redis_client, sink.url, max_connections=1)
        cid, batches = _campaign(redis_client, "esp", 5)

        async def go() -> tuple[bool, int, bool]:
            client = store.async_client()
            pool = SessionPool(30.0)
            try:
                batch = asyncio.create_task(
                    run_batch(cid, batches[0], r=client, settings=SETTINGS, pool=pool)
                )
                for _ in range(500):  # until the batch holds the slot and waits on the reply
                    if sink.requests:
                        break
                    await asyncio.sleep(0.02)
                slots = _slots_of(client, "esp")
                refused = not await slots.acquire("another-worker")
                waiter = asyncio.create_task(slots.hold("another-worker", lambda: False))
                await batch
                return refused, len(pool), await asyncio.wait_for(waiter, 10)
            finally:
                await client.aclose()

        refused, kept, got = asyncio.run(go())
    assert refused  # the batch held the only slot
    assert kept == 0
    assert got
    _all_sent_once(redis_client, cid, 5)


def test_a_kept_slot_is_not_taken_back_while_a_sender_waits(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, max_connections=1)
        cid, batches = _campaign(redis_client, "esp", 10)

        async def another_worker(slots: ConnectionSlots) -> str:
            await slots.hold("another-worker", lambda: False)  # polls, flagging it wanted
            await slots.release("another-worker")
            return "got the slot"

        async def go() -> str:
            client = store.async_client()
            pool = SessionPool(30.0)
            try:
                await run_batch(cid, batches[0], r=client, settings=SETTINGS, pool=pool)
                assert len(pool) == 1  # kept: nobody waited when the first batch ended
                slots = _slots_of(client, "esp")
                waiter = asyncio.create_task(another_worker(slots))
                for _ in range(500):  # until it has asked once (and found the slot taken)
                    if redis_client.exists(slots.wanted_key):
                        break
                    await asyncio.sleep(0.01)
                await run_batch(cid, batches[1], r=client, settings=SETTINGS, pool=pool)
                return await asyncio.wait_for(waiter, 10)
            finally:
                await pool.close_all()
                await client.aclose()

        assert asyncio.run(go()) == "got the slot"
        ports = [request.peer_port for request in sink.requests]
    assert len(set(ports)) == 2  # the second batch queued for a slot and connected anew
    _all_sent_once(redis_client, cid, 10)


def test_a_stopping_worker_process_says_goodbye(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """worker_process_shutdown: QUIT on every kept connection, slots given back."""
    _one_task(redis_client, smtp, monkeypatch, SessionPool(300.0))
    runtime.shutdown()
    assert len(runtime.session_pool()) == 0
    assert _slots(redis_client, "local") == []
    deadline = time.monotonic() + 10
    while smtp.handler.active and time.monotonic() < deadline:
        time.sleep(0.05)  # the server's side of the goodbye
    assert smtp.handler.active == 0
