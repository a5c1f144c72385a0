"""Review Q3: the ledger of a batch while it sends, when a cancel or a Redis failure lands
in between (real Redis, real SMTP and HTTP servers, the real sender).

Every recipient ends in one terminal state that says what happened to it: a message a
cancel settled is not turned ``failed`` or ``suppressed`` by the batch afterwards, and a
message that was never handed to the provider does not end ``unknown``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis

from dispatch import batch_items, campaigns, lifecycle, sending, store, suppressions
from dispatch.ledger import LedgerWriter, record
from dispatch.models import MessageState
from dispatch.sending import BatchSender
from tests.helpers import create_held, recipients, run_batches, smtp_provider
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
    counters = campaigns.get_counters(cid, redis_client)
    assert (counters["cancelled"], counters["queued"]) == (3, 0)
