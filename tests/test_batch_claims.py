"""A batch that goes out as one chunk is claimed by its load (real Redis, real sender).

Claims still come before the send, and only for messages still queued, not suppressed, of
a running campaign whose lease the loader holds; a run that stops before it sends gives
its claims back, so nothing it never attempted is recorded ``unknown``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, lifecycle, store, suppressions
from dispatch.batch_items import load_batch
from dispatch.ledger import BatchLease, LedgerWriter, parse_record, record
from dispatch.limits import ProviderLimiter
from dispatch.models import MessageState
from dispatch.provider_store import load_provider
from dispatch.sending import run_batch
from tests.helpers import create_held, http_provider, recipients, run_batches
from tests.http_sink import HttpSink


def _create(
    r: redis.Redis, n: int, url: str = "http://127.0.0.1:9", **provider: Any
) -> tuple[str, list[tuple[str, int]]]:
    """A running campaign of ``n`` through an http provider posting to ``url`` (by
    default nothing listens: the batches are not run)."""
    http_provider(r, url, **provider)
    body = {"provider": "esp", "subject": "Hi {{ name }}", "html": "<p>{{ name }}</p>"}
    return create_held(r, {**body, "recipients": recipients(n)})


def _states(r: redis.Redis, cid: str) -> dict[int, str]:
    ledger = r.hgetall(store.ledger_key(cid))
    return {int(seq): parse_record(raw)["state"] for seq, raw in ledger.items()}  # type: ignore[index]


def _load(cid: str, *, lose_lease: bool = False) -> bool:
    async def go() -> bool:
        r = store.async_client()
        try:
            lease = BatchLease(r, cid, 0)
            assert await lease.acquire()
            if lose_lease:
                await r.set(lease.key, "someone-else")
            loaded = await load_batch(r, cid, 0, 1000, "default", lease)
            return loaded.claimed
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_the_load_claims_queued_unsuppressed_messages_and_moves_no_counter(
    redis_client: redis.Redis,
) -> None:
    cid, _ = _create(redis_client, 4)
    suppressions.add("user1@example.com", reason="unsubscribed", source="test")

    async def fail_one() -> None:
        r = store.async_client()
        await LedgerWriter(r, cid).put_many([(3, record(MessageState.FAILED, attempts=1), "")])
        await r.aclose()

    asyncio.run(fail_one())
    before = campaign_reads.get_counters(cid, redis_client)
    assert _load(cid) is True
    assert _states(redis_client, cid) == {0: "claimed", 2: "claimed", 3: "failed"}
    assert parse_record(redis_client.hget(store.ledger_key(cid), "0"))["attempts"] == 1  # type: ignore[index]
    assert campaign_reads.get_counters(cid, redis_client) == before


@pytest.mark.parametrize("why", ["paused", "lease lost"])
def test_the_load_claims_nothing_unless_running_under_its_lease(
    redis_client: redis.Redis, why: str
) -> None:
    cid, _ = _create(redis_client, 3)
    if why == "paused":
        lifecycle.pause(cid, client=redis_client)
    assert _load(cid, lose_lease=why == "lease lost") is False
    assert _states(redis_client, cid) == {}


def test_suppressed_after_storing_are_not_sent_by_a_one_chunk_batch(
    redis_client: redis.Redis,
) -> None:
    with HttpSink() as sink:
        cid, batches = _create(redis_client, 5, sink.url)
        suppressions.add("User3@Example.com", reason="unsubscribed", source="test")
        run_batches(batches)
        sent_to = [m["to"] for request in sink.requests for m in request.json()["msgs"]]
    assert sent_to == ["user0@example.com", "user1@example.com", "user2@example.com",
                       "user4@example.com"]  # fmt: skip
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["suppressed"], counters["queued"]) == (4, 1, 0)
    assert campaign_reads.get_status(cid, redis_client).value == "completed"


@pytest.mark.parametrize("wait", ["slot", "pace"])
def test_a_batch_that_stops_before_sending_gives_its_claims_back(
    redis_client: redis.Redis, wait: str
) -> None:
    """Paused while it waits for a connection slot or the provider's pace: after resume
    every message is sent, none is recorded ``unknown`` (a claim left behind would read
    as a lost send). The load's claims are given back as soon as the run must wait: none
    waits claimed (a worker killed meanwhile leaves them to be sent, not ``unknown``)."""
    with HttpSink() as sink:
        slots = f"{store.PREFIX}:connections:esp"
        if wait == "slot":
            cid, batches = _create(redis_client, 3, sink.url, max_connections=1)
            redis_client.zadd(slots, {"another-worker": time.time() + 600})
        else:
            cid, batches = _create(redis_client, 3, sink.url, rate_per_second=1)

        async def paused_while_waiting() -> None:
            r = store.async_client()
            try:
                if wait == "pace":  # another batch took the next 30 seconds of the pace
                    await ProviderLimiter(r, load_provider("esp", redis_client), 1).take_some(30)
                running = asyncio.create_task(run_batch(cid, 0, r=r))
                # A one-chunk batch's load claims them, and gives them back to wait for
                # a slot; paced ones go out in chunks claimed only once their turn came.
                waiting = {"retry"} if wait == "slot" else set()
                for _ in range(20):
                    await asyncio.sleep(0.05)
                    assert "claimed" not in _states(redis_client, cid).values()
                assert set(_states(redis_client, cid).values()) == waiting
                assert not running.done()  # still waiting for its turn
                lifecycle.pause(cid, client=redis_client)
                await asyncio.wait_for(running, timeout=10)
            finally:
                await r.aclose()

        asyncio.run(paused_while_waiting())
        assert set(_states(redis_client, cid).values()) <= {"retry"}
        assert sink.requests == []
        redis_client.zrem(slots, "another-worker")
        redis_client.delete(f"{store.PREFIX}:pace:esp")
        again: list[tuple[str, int]] = []
        lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: again.append((c, b)))
        run_batches(again)
        sent = [m["to"] for request in sink.requests for m in request.json()["msgs"]]
        assert sorted(sent) == [f"user{i}@example.com" for i in range(3)]
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["unknown"], counters["queued"]) == (3, 0, 0)
    assert batches == [(cid, 0)]


def test_a_campaign_stored_without_its_providers_name_still_sends(
    redis_client: redis.Redis,
) -> None:
    with HttpSink() as sink:
        cid, batches = _create(redis_client, 2, sink.url)
        redis_client.hdel(store.campaign_key(cid), "provider")
        run_batches(batches)
        assert len(sink.requests) == 1
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 2


@pytest.mark.parametrize("where", ["connection slot", "templates"])
def test_claims_are_given_back_when_the_run_fails_before_sending(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Redis fails while a session waits for its connection slot, or the campaign's
    templates cannot be prepared before any session starts."""
    from dispatch import sending
    from dispatch.limits import ConnectionSlots

    async def refused(self: ConnectionSlots, token: str) -> bool:
        raise ConnectionError("Redis went away")

    def broken(content: object) -> object:
        raise ConnectionError("cannot prepare the templates")

    if where == "connection slot":
        monkeypatch.setattr(ConnectionSlots, "acquire", refused)
    else:
        monkeypatch.setattr(sending, "compiled_for", broken)
    with HttpSink() as sink:
        cid, batches = _create(redis_client, 3, sink.url)
        with pytest.raises(ConnectionError):
            run_batches(batches)
        assert set(_states(redis_client, cid).values()) == {"retry"}
        monkeypatch.undo()
        run_batches(batches)  # the task's next delivery
        assert len(sink.requests) == 1
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["unknown"]) == (3, 0)
