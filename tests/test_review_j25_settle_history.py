"""What a cancel or the expiry writes into the record of a message that was tried:
its attempts and its last error stay (review J25)."""

from __future__ import annotations

import asyncio
import time

import redis

from dispatch import campaign_reads, lifecycle, store
from dispatch.ledger import LedgerWriter, parse_record, record
from dispatch.models import MessageState
from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.api_support import api_client, wait_for_campaign
from tests.helpers import campaign_body, create_held, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

GREYLISTED = "451 4.7.1 greylisted, try again later"  # a throttling reply: no attempt
FULL = "452 4.2.2 mailbox over quota for now"


def test_a_cancel_keeps_the_attempts_and_last_error_of_messages_waiting_for_a_retry(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Two recipients are greylisted (451, a throttle), three refused for now (452): tried
    once, they wait a minute for their retry. The cancel settles them ``cancelled``; their
    page still says how often they were tried and why they did not go.

    The batch runs here, once (a worker of the test's own shared the session's Redis with
    the session's worker, which retried them within a second until they failed)."""
    later = {f"user{i}@example.com": GREYLISTED if i < 2 else FULL for i in range(5)}
    smtp.handler.rcpt_reply = later.get
    smtp_provider(redis_client, smtp.port)
    _, batches = create_held(redis_client, campaign_body("j25", 20))
    (result,) = run_batches(batches, Settings(retry_base_seconds=60, retry_max_seconds=120), 1)
    assert result.retry_at is not None and result.retry_at > time.time() + 5  # not soon
    with api_client(api_server) as api:
        waiting = api.get("/v1/campaigns/j25/messages", params={"status": "retry"})
        assert {m["email"] for m in waiting.json()["items"]} == set(later)
        assert wait_for_campaign(api, "j25", lambda s: s["sent"] == 15, 1)["queued"] == 5
        cancelled = api.post("/v1/campaigns/j25/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == 5
        page = api.get("/v1/campaigns/j25/messages", params={"status": "cancelled"})
    items = page.json()["items"]
    assert {m["email"] for m in items} == set(later)
    for m in items:
        assert later[m["email"]] in m["detail"] and m["error_class"], m
        assert m["next_attempt_at"] is None, m
    # Tried once each: the greylisted ones count a throttle, the others an attempt.
    assert sorted((m["attempts"], m["throttles"]) for m in items) == [(0, 1)] * 2 + [(1, 0)] * 3


# A detail as a server may word it: quotes, a backslash, and text that reads like the
# record's own keys once escaped.
ODD = '452 4.3.1 "busy", try again ,"n":1,"t":2} C:\\queue'


def _put(campaign_id: str, writes: dict[int, bytes]) -> None:
    async def go() -> None:
        client = store.async_client()
        try:
            await LedgerWriter(client, campaign_id).put_many(
                [(seq, rec, "") for seq, rec in writes.items()]
            )
        finally:
            await client.aclose()

    asyncio.run(go())


def _records(r: redis.Redis, campaign_id: str) -> dict[int, dict[str, object]]:
    ledger = r.hgetall(store.ledger_key(campaign_id))
    return {int(seq): parse_record(raw) or {} for seq, raw in ledger.items()}


def test_the_expiry_keeps_the_history_of_retries_and_of_retry_failed_requeues(
    redis_client: redis.Redis,
) -> None:
    """No worker: a message waiting for a retry (an odd detail), and failures that
    retry-failed queued again, are settled by beat's expiry; their records keep the
    attempts, throttled tries, class and detail, lose the next attempt's time."""
    smtp_provider(redis_client, 2525)
    body = campaign_body("j25-exp", 3000, expires_at="2100-01-01T00:00:00Z")
    cid, _ = create_held(redis_client, body)
    later = time.time() + 600
    failed = record(MessageState.FAILED, attempts=3, error_class="SMTP connection failed",
                    detail="gave up after 3 attempts: connection refused")  # fmt: skip
    waiting = record(MessageState.RETRY, attempts=2, throttles=1, next_at=later,
                     error_class="SMTP dispatching failed", detail=ODD)  # fmt: skip
    _put(cid, {5: failed, 2500: failed, 7: waiting, 2999: waiting})
    report, _ = lifecycle.retry_failed(cid, client=redis_client, enqueue=lambda c, b: None)
    assert report.retried == 2

    assert lifecycle.expire_due(now=4_200_000_000, client=redis_client) == [cid]
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (int(counters["expired"]), int(counters["queued"])) == (3000, 0)
    recs = _records(redis_client, cid)
    assert {rec["state"] for rec in recs.values()} == {"expired"}
    for seq in (7, 2999):
        assert recs[seq]["attempts"] == 2 and recs[seq]["throttles"] == 1
        assert (recs[seq]["error_class"], recs[seq]["detail"]) == ("SMTP dispatching failed", ODD)
        assert recs[seq]["next_at"] == 0.0
    for seq in (5, 2500):
        assert recs[seq]["error_class"] == "SMTP connection failed"
        assert recs[seq]["detail"] == (
            "queued again by retry-failed after: gave up after 3 attempts: connection refused"
        )
    assert recs[0] == {**recs[0], "attempts": 0, "error_class": "", "detail": ""}


def test_a_batch_that_finds_its_campaign_cancelled_keeps_its_retries_history(
    redis_client: redis.Redis,
) -> None:
    """A big campaign's cancel answers before a worker settles it: a batch run that finds
    it cancelled first settles its own messages, those due for a retry among them."""
    smtp_provider(redis_client, 2525)
    cid, batches = create_held(redis_client, campaign_body("j25-run", 10))
    due = record(MessageState.RETRY, attempts=1, throttles=2, next_at=time.time() - 1,
                 error_class="SMTP dispatching failed", detail=ODD)  # fmt: skip
    _put(cid, {3: due})
    redis_client.hset(store.campaign_key(cid), "status", "cancelled")  # not settled yet
    (result,) = run_batches(batches[:1])
    assert result.counts == {"cancelled": 10}
    rec = _records(redis_client, cid)[3]
    assert (rec["state"], rec["attempts"], rec["throttles"]) == ("cancelled", 1, 2)
    assert (rec["error_class"], rec["detail"]) == ("SMTP dispatching failed", ODD)
