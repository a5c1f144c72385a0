"""Review Q3: the ledger of a batch while it sends, when a cancel or a Redis failure lands
in between (real Redis, real SMTP and HTTP servers, the real sender).

Every recipient ends in one terminal state that says what happened to it: a message a
cancel settled is not turned ``failed`` or ``suppressed`` by the batch afterwards, and a
message that was never handed to the provider does not end ``unknown``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import batch_items, campaign_reads, lifecycle, sending, store, suppressions
from dispatch.ledger import BatchLease, LedgerWriter, record
from dispatch.limits import ConnectionSlots
from dispatch.models import MessageState
from dispatch.sending import BatchSender
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer
from tests.test_batch_claims import _create, _states
from tests.test_lifecycle_races import assert_settled


def _cancel(r: redis.Redis, cid: str) -> Any:
    """The cancel, as the API runs it (in a thread: it is synchronous)."""
    return asyncio.to_thread(lifecycle.cancel, cid, client=r, enqueue=lambda c, b: None)


def test_a_message_that_fails_to_build_after_a_cancel_stays_cancelled(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel settled every unsent message ``cancelled`` between the batch's load and
    the build of its chunk; the build failure of one message (an address the meta string
    cannot carry) was written over its ``cancelled`` record: ``failed``, with a
    Notification Failed event, in a campaign whose cancel had settled it."""
    smtp_provider(redis_client, smtp.port)
    people = recipients(4)
    people[1]["email"] = "us|er1@example.com"
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": people}
    cid, batches = create_held(redis_client, body)
    build = BatchSender._build
    cancelled: list[bool] = []

    async def cancel_first(sender: BatchSender, chunk: Any) -> Any:
        if not cancelled:
            cancelled.append(await _cancel(redis_client, cid) is not None)
        return await build(sender, chunk)

    monkeypatch.setattr(BatchSender, "_build", cancel_first)
    run_batches(batches)
    assert cancelled == [True] and smtp.messages == []
    assert _states(redis_client, cid) == {seq: "cancelled" for seq in range(4)}
    summary = assert_settled(redis_client, cid)
    assert (summary["cancelled"], summary["failed"]) == (4, 0)
    events = [orjson.loads(f["json"])["event"] for _, f in redis_client.xrange(store.EVENTS_STREAM)]
    assert "Notification Failed" not in events


def test_a_suppressed_recipient_a_cancel_settled_after_the_load_stays_cancelled(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a recipient found on the suppression list by the load: the cancel
    that landed before the batch recorded it ``suppressed`` stands."""
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    cid, batches = create_held(redis_client, body)
    suppressions.add("user2@example.com", reason="unsubscribed", source="test")
    drop = batch_items.drop_suppressed

    async def cancel_first(*args: Any) -> Any:
        await _cancel(redis_client, cid)
        return await drop(*args)

    monkeypatch.setattr(sending, "drop_suppressed", cancel_first)
    run_batches(batches)
    assert _states(redis_client, cid) == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    summary = assert_settled(redis_client, cid)
    assert (summary["cancelled"], summary["suppressed"]) == (3, 0)


class _RedisFails:
    """Once armed, the next ``n`` Redis commands of the async clients raise
    ConnectionError (Redis restarting: nothing they carried reached it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.left = 0
        command, pipeline = aioredis.Redis.execute_command, Pipeline.execute

        async def run_command(client: aioredis.Redis, *args: Any, **kw: Any) -> Any:
            self._maybe_fail()
            return await command(client, *args, **kw)

        async def run_pipeline(pipe: Pipeline, *args: Any, **kw: Any) -> Any:
            self._maybe_fail()
            return await pipeline(pipe, *args, **kw)

        monkeypatch.setattr(aioredis.Redis, "execute_command", run_command)
        monkeypatch.setattr(Pipeline, "execute", run_pipeline)

    def _maybe_fail(self) -> None:
        if self.left > 0:
            self.left -= 1
            raise redis.ConnectionError("Redis went away")


@pytest.mark.parametrize("failures", [2, 4])
def test_claims_the_load_made_go_back_once_redis_answers_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """A one-chunk batch (Generic HTTP) is claimed by its load. Redis failed right after
    it, for the next calls too (the give-back of the claims among them): the messages
    stayed ``claimed`` and the task's next run recorded them ``unknown``, never sent,
    although the run knew it had not sent them."""
    fails = _RedisFails(monkeypatch)
    load = batch_items.load_batch

    async def load_then_fail(*args: Any, **kw: Any) -> Any:
        loaded = await load(*args, **kw)
        assert loaded.claimed
        fails.left = failures
        return loaded

    monkeypatch.setattr(sending, "load_batch", load_then_fail)
    with HttpSink() as sink:
        cid, batches = _create(redis_client, 3, sink.url)
        with pytest.raises(redis.ConnectionError):
            run_batches(batches)
        assert fails.left == 0 and sink.requests == []
        assert _states(redis_client, cid) == {0: "retry", 1: "retry", 2: "retry"}
        monkeypatch.setattr(sending, "load_batch", load)
        run_batches(batches)  # the task's retry
        sent = sorted(m["to"] for request in sink.requests for m in request.json()["msgs"])
    assert sent == [f"user{i}@example.com" for i in range(3)]
    summary = assert_settled(redis_client, cid)
    assert (summary["sent"], summary["unknown"]) == (3, 0)


def _retried_each_sent_once(
    r: redis.Redis, smtp: SmtpTestServer, cid: str, batches: list[tuple[str, int]], n: int
) -> None:
    """The task's retry sends the rest: each of the ``n`` recipients received once,
    none ``unknown``."""
    run_batches(batches)
    received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(received) == n and max(received.values()) == 1
    summary = assert_settled(r, cid)
    assert (summary["sent"], summary["unknown"]) == (n, 0)


def test_a_claim_whose_answer_was_lost_goes_back(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection broke after Redis ran a chunk's claim, before its answer came: the
    run failed with the messages claimed and never sent, and the next run recorded them
    ``unknown``."""
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(10)}
    cid, batches = create_held(redis_client, body)
    command = aioredis.Redis.execute_command
    lost: list[bool] = []

    async def lose_a_claims_answer(client: aioredis.Redis, *args: Any, **kw: Any) -> Any:
        answer = await command(client, *args, **kw)
        claims = any(isinstance(a, bytes) and a.startswith((b"cN", b"kE")) for a in args)
        if claims and not lost:
            lost.append(True)
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    monkeypatch.setattr(aioredis.Redis, "execute_command", lose_a_claims_answer)
    with pytest.raises(redis.ConnectionError):
        run_batches(batches)
    assert lost and "claimed" not in _states(redis_client, cid).values()
    monkeypatch.undo()
    _retried_each_sent_once(redis_client, smtp, cid, batches, 10)


def test_a_sender_that_fails_leaves_no_other_sender_of_its_batch_running(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One of a batch's senders met a Redis error: the run raised at once while the
    others went on claiming and sending, past the release of its lease. Their claims
    (cut off when the loop ended, or unrecordable without the lease) ended ``unknown``
    on the next run, messages that never reached the server."""
    smtp_provider(redis_client, smtp.port, max_connections=4)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(200)}
    cid, batches = create_held(redis_client, body)
    acquire = ConnectionSlots.acquire
    calls: list[str] = []

    async def second_fails(slots: ConnectionSlots, token: str) -> bool:
        calls.append(token)
        if len(calls) == 2:
            raise redis.ConnectionError("Redis went away")
        return await acquire(slots, token)

    monkeypatch.setattr(ConnectionSlots, "acquire", second_fails)
    with pytest.raises(redis.ConnectionError):
        run_batches(batches)
    assert len(calls) > 2  # the batch ran several senders
    assert "claimed" not in _states(redis_client, cid).values()
    monkeypatch.undo()
    _retried_each_sent_once(redis_client, smtp, cid, batches, 200)


def test_a_give_back_leaves_a_record_someone_else_wrote(redis_client: redis.Redis) -> None:
    """A claim is given back only while its record is still ``claimed``: given back a
    second time (after an answer lost on the way back) it does not turn the ``cancelled``
    a cancel wrote meanwhile into ``retry`` again (a queued message in a cancelled
    campaign, its counters no longer the ledger's)."""
    cid, _ = _create(redis_client, 3)

    async def go() -> None:
        r = store.async_client()
        try:
            writer = LedgerWriter(r, cid)
            retry = record(MessageState.RETRY, attempts=1)
            assert await writer.claim_many([(0, record(MessageState.CLAIMED, attempts=1))])
            await writer.give_back_many([(0, retry, "")])
            await asyncio.to_thread(
                lifecycle.cancel, cid, client=redis_client, enqueue=lambda c, b: None
            )
            await writer.give_back_many([(0, retry, ""), (1, retry, "")])
        finally:
            await r.aclose()

    asyncio.run(go())
    assert _states(redis_client, cid) == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["cancelled"], counters["queued"]) == (3, 0)


def test_a_lease_whose_renewal_failed_once_is_still_renewed(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One renewal that met a Redis error ended the renewing for good: the batch's lease
    expired under a run that was still sending (another run could take the batch over,
    and this one's records were refused)."""
    fails = _RedisFails(monkeypatch)

    async def go() -> bool:
        r = store.async_client()
        lease = BatchLease(r, "c", 0, ttl_ms=400)  # renewed every 0.1 s
        try:
            assert await lease.acquire()
            fails.left = 1  # the next renewal
            await asyncio.sleep(1.2)  # three lease lifetimes
            assert fails.left == 0
            return bool(await r.get(lease.key) == lease.token)
        finally:
            await lease.release()
            await r.aclose()

    assert asyncio.run(go())
