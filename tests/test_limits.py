"""Provider pace and daily quota, shared through Redis by every worker."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dispatch import campaign_reads, store
from dispatch.ledger import parse_record
from dispatch.limits import ProviderLimiter, QuotaExhaustedError, chunk_limit
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer


def _config(**fields: object) -> object:
    return parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    )


def test_two_workers_share_one_pace(redis_client: redis.Redis) -> None:
    """Reservations from two limiters (two workers) queue behind each other: each starts
    where the one before ends (the provider's next free time, kept in Redis), whoever
    made it. Read from Redis, not from the clock: at one send a second, the calls come
    well within the first reservation however loaded the machine is."""
    pace = f"{store.PREFIX}:pace:p"

    async def go() -> list[float]:
        client = store.async_client()
        try:
            a = ProviderLimiter(client, _config(rate_per_second=1))  # type: ignore[arg-type]
            b = ProviderLimiter(client, _config(rate_per_second=1))  # type: ignore[arg-type]
            free = []
            waits = []
            for limiter, n in ((a, 10), (b, 10), (a, 5)):
                waits.append(await limiter.take(n))
                free.append(float(redis_client.get(pace) or 0))
            assert waits[0] == 0.0 and 0 < waits[1] < waits[2]
            return free
        finally:
            await client.aclose()

    first, second, third = asyncio.run(go())
    assert second - first == pytest.approx(10.0, abs=1e-3)  # b's 10 after a's 10, at 1/s
    assert third - second == pytest.approx(5.0, abs=1e-3)


def test_quota_is_counted_across_calls(redis_client: redis.Redis) -> None:
    async def go() -> None:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, _config(daily_quota=10))  # type: ignore[arg-type]
            assert await limiter.take(6) == 0.0
            with pytest.raises(QuotaExhaustedError, match="daily quota of 10"):
                await limiter.take(5)
            assert await limiter.take(4) == 0.0
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_used_up_quota_pauses_the_campaign(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, daily_quota=5, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(8)}
        cid, _ = run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
        delivered = len(smtp.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    # The reason is the quota, not the "SMTP connection error" class of a configuration
    # error: nothing is wrong with the connection.
    assert summary["reason"].startswith("daily quota of 5 messages for provider 'local' is used")
    assert delivered == summary["sent"] <= 5
    assert summary["queued"] == 8 - summary["sent"]  # nothing failed: they wait for resume


def test_max_connections_hold_across_concurrent_batches(redis_client: redis.Redis) -> None:
    """Two batches (as two workers would run them) share the provider's 2 connections.
    One batch may take both slots: the other then waits ``slot_wait_seconds`` and goes
    back to the broker (on a loaded machine, the first's 1000 sends outlast the wait).
    The broker's retry is run here too, still with the server counting connections."""
    from dispatch.sending import run_batch

    with SmtpTestServer() as smtp:
        slow = lambda envelope: time.sleep(0.002)  # noqa: E731 (keep connections busy)
        smtp.handler.data_reply = slow  # type: ignore[assignment,return-value]
        smtp_provider(redis_client, smtp.port, max_connections=2)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2000)}
        cid, batches = create_held(redis_client, body)

        async def both() -> None:
            client = store.async_client()
            try:
                todo = batches
                for _ in range(5):  # (the broker runs a deferred batch again)
                    results = await asyncio.gather(*(run_batch(c, b, r=client) for c, b in todo))
                    todo = [(r.campaign_id, r.batch) for r in results if r.retry_at is not None]
                    if not todo:
                        break
            finally:
                await client.aclose()

        asyncio.run(both())
        peak = smtp.handler.peak
    assert len(batches) == 2
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 2000
    assert 1 <= peak <= 2


@pytest.mark.parametrize("kind", ["http", "smtp"])
def test_a_batch_that_gets_no_connection_slot_goes_back_to_the_broker(
    redis_client: redis.Redis, kind: str
) -> None:
    """Every slot of the provider is held elsewhere: after ``slot_wait_seconds`` the batch
    stops waiting (its worker process is free for other batches) and asks to be run
    again, having sent nothing and left no claim behind; once a slot is free it sends."""
    from dispatch.ledger import parse_record
    from dispatch.sending import run_batch
    from tests.helpers import http_provider
    from tests.http_sink import HttpSink

    with HttpSink() as sink, SmtpTestServer() as smtp:
        if kind == "http":  # one chunk: its load claims the whole batch
            http_provider(redis_client, sink.url, nickname="local", max_connections=1)
        else:
            smtp_provider(redis_client, smtp.port, max_connections=1)
        slots = f"{store.PREFIX}:connections:local"
        redis_client.zadd(slots, {"another-worker": time.time() + 60})
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
        cid, ((_, batch),) = create_held(redis_client, body)

        async def run() -> object:
            client = store.async_client()
            try:
                fast = Settings(slot_wait_seconds=0.3)
                # Bounded: a batch that waited for the slot would hang here for a minute.
                return await asyncio.wait_for(run_batch(cid, batch, r=client, settings=fast), 20)
            finally:
                await client.aclose()

        before = time.time()
        asyncio.run(run())  # twice: waiting again costs nothing either
        deferred = asyncio.run(run())
        assert deferred.counts == {"deferred": 5}  # type: ignore[attr-defined]
        assert deferred.retry_at is not None and deferred.retry_at > before  # type: ignore[attr-defined]
        assert sink.requests == [] and smtp.messages == []
        states = {
            (parse_record(raw) or {}).get("state")
            for raw in redis_client.hgetall(store.ledger_key(cid)).values()
        }
        assert "claimed" not in states  # given back: a claim left behind reads as a lost send
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert (summary["status"], summary["queued"], summary["sent"]) == ("running", 5, 0)
        progress = redis_client.hget(store.campaign_key(cid), "progress_at")
        assert float(progress or 0) >= int(before)  # alive: housekeeping leaves it alone
        parked = redis_client.hget(store.campaign_key(cid), "parked_until")
        assert float(parked or 0) == pytest.approx(deferred.retry_at)  # type: ignore[attr-defined]

        redis_client.zrem(slots, "another-worker")
        again = asyncio.run(run())
        assert again.counts == {"sent": 5} and again.retry_at is None  # type: ignore[attr-defined]
        delivered = [m["to"] for r in sink.requests for m in r.json()["msgs"]]
        delivered += [m.rcpt_tos[0] for m in smtp.messages]
    assert sorted(delivered) == sorted(str(r["email"]) for r in recipients(5))
    assert campaign_reads.campaign_summary(cid, redis_client)["status"] == "completed"
    records = [parse_record(raw) for raw in redis_client.hgetall(store.ledger_key(cid)).values()]
    assert [(r or {}).get("attempts") for r in records] == [1] * 5  # waiting cost no attempt


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_messages_waiting_for_the_pace_stop_with_a_cancel_or_pause(
    redis_client: redis.Redis, action: str
) -> None:
    """A chunk claimed and waiting for the provider's pace is not sent once the campaign
    is cancelled (its messages end cancelled) or paused (they wait for the resume)."""
    from dispatch import lifecycle
    from dispatch.sending import run_batch

    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, max_connections=1, rate_per_second=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(12)}
        cid, ((_, batch),) = create_held(redis_client, body)

        async def run() -> tuple[int, int]:
            client = store.async_client()
            try:
                sending = asyncio.create_task(run_batch(cid, batch, r=client))
                while not smtp.messages:  # the first chunk went out; the next one waits
                    await asyncio.sleep(0.05)
                stop = lifecycle.cancel if action == "cancel" else lifecycle.pause
                await asyncio.to_thread(stop, cid, client=redis_client)
                at_stop = len(smtp.messages)
                await asyncio.wait_for(sending, 20)
                return at_stop, len(smtp.messages)
            finally:
                await client.aclose()

        at_stop, at_end = asyncio.run(run())
    assert at_end == at_stop < 12  # nothing more went out once the stop returned
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["sent"] == at_end
    left = 12 - at_end
    if action == "cancel":
        assert (summary["cancelled"], summary["queued"]) == (left, 0)
    else:
        assert (summary["status"], summary["queued"]) == ("paused", left)
        states = {
            (parse_record(raw) or {}).get("state")
            for raw in redis_client.hgetall(store.ledger_key(cid)).values()
        }
        assert "claimed" not in states  # given back: a claim left behind reads as a lost send


def test_the_last_of_the_quota_is_granted_not_refused(redis_client: redis.Redis) -> None:
    """Chunks of 4 against a quota of 10: 4, 4, then the 2 left (all-or-nothing stopped
    at 8), and only then the quota is used up."""

    async def go() -> list[int]:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, _config(daily_quota=10))  # type: ignore[arg-type]
            counts = [(await limiter.take_some(4)).count for _ in range(3)]
            with pytest.raises(QuotaExhaustedError, match="daily quota of 10 messages"):
                await limiter.take_some(4)
            return counts
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [4, 4, 2]


def test_sends_that_did_not_go_out_are_given_back_to_the_quota(
    redis_client: redis.Redis,
) -> None:
    async def go() -> int:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, _config(daily_quota=5))  # type: ignore[arg-type]
            grant = await limiter.take_some(4)
            await limiter.refund(grant, 3)  # refused by the server, or never handed over
            return (await limiter.take_some(10)).count
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 4  # 5 - 1 that went out


def test_cc_and_bcc_count_against_the_daily_recipient_quota(redis_client: redis.Redis) -> None:
    """Gmail counts each recipient of each message (10,000 a day, reference §3): messages
    of 5 recipients (to and 4 cc) reach it at a fifth of the message count."""
    gmail = parse_provider_config(
        {"nickname": "g", "kind": "gmail", "host": "127.0.0.1", "security": "none"}
    )
    assert (gmail.daily_quota, gmail.daily_recipient_quota) == (2000, 10000)
    lowered = gmail.model_copy(update={"daily_recipient_quota": 12})

    async def go() -> int:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, lowered, recipients_per_message=5)
            granted = (await limiter.take_some(4)).count
            with pytest.raises(QuotaExhaustedError, match="recipient quota of 12 recipients"):
                await limiter.take_some(1)
            return granted
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 2  # 10 recipients; a third message would make 15


@pytest.mark.parametrize(
    ("rate", "limit"),
    [(0.0, 4), (0.5, 1), (1.0, 1), (2.5, 1), (5.0, 1), (6.0, 3), (8.0, 4), (10.0, 2), (50.0, 2)],
)
def test_a_low_rate_hands_messages_over_one_at_a_time(rate: float, limit: int) -> None:
    """A chunk goes out at once: at 1 a second a chunk of 4 would be a burst of 4 and
    then 4 seconds of nothing; at 5 a second chunks of 4, 0.8 s apart, put 8 in a second
    (no second holds more than ceil(rate) messages: n divides it)."""
    assert chunk_limit(_config(rate_per_second=rate), 4) == limit  # type: ignore[arg-type]


def test_a_slot_that_expired_under_its_session_closes_the_connection_first(
    redis_client: redis.Redis,
) -> None:
    """A worker stalled past the slot's TTL and another took the provider's only slot:
    the renewal finds it gone, so the sender closes its connection (max_connections
    holds) and waits for a slot before it sends again; nothing is lost or sent twice."""
    import threading

    from dispatch.sending import run_batch
    from tests.worker import wait_for

    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, max_connections=1, rate_per_second=5)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(40)}
        cid, ((_, batch),) = create_held(redis_client, body)
        settings = Settings(lease_ttl_ms=3000, slot_wait_seconds=60)  # renewed each second

        async def send() -> None:
            client = store.async_client()
            try:
                await run_batch(cid, batch, r=client, settings=settings)
            finally:
                await client.aclose()

        runner = threading.Thread(target=asyncio.run, args=(send(),))
        runner.start()
        try:
            wait_for(lambda: len(smtp.messages) >= 5, timeout=30)
            slots = f"{store.PREFIX}:connections:local"
            redis_client.delete(slots)  # ours expired: another worker's now
            redis_client.zadd(slots, {"another-worker": time.time() + 60})
            wait_for(lambda: redis_client.exists(f"{slots}:wanted") == 1, timeout=10)
            wait_for(lambda: smtp.handler.active == 0, timeout=10)  # closed while it waits
            assert len(smtp.messages) < 40
            redis_client.zrem(slots, "another-worker")
        finally:
            runner.join(timeout=60)
        assert not runner.is_alive()
        assert smtp.handler.peak == 1
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == sorted(
        str(r["email"]) for r in recipients(40)
    )
    assert campaign_reads.campaign_summary(cid, redis_client)["sent"] == 40
