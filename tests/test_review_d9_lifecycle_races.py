"""Lifecycle races (review D9): an operator's step and a batch's (or another step's)
interleaved at a precise point, on a real Redis, each order forced by a hook: no timing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, recipient_append, sending, store
from dispatch.ledger import LedgerWriter
from dispatch.models import CampaignRequest, MessageState
from dispatch.settings import Settings
from tests.helpers import create_held, http_provider, recipients, run_batches, smtp_provider
from tests.http_sink import HttpSink, Reply
from tests.test_lifecycle_races import assert_settled, put


def _body(n: int, provider: str = "local") -> dict[str, Any]:
    return {"provider": provider, "subject": "s", "html": "h", "recipients": recipients(n)}


def test_retry_failed_again_after_one_that_stopped_half_way_sends_them(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retry-failed queued the failures again, then Redis failed before the campaign was
    set running (the API answered 500). The operator asks again: the messages, marked
    retried, were skipped, and the campaign stayed ``completed`` with them queued for
    ever (nothing sends or settles a completed campaign's messages)."""
    smtp_provider(redis_client, 2525)
    cid, _ = create_held(redis_client, _body(10))
    put(cid, {seq: MessageState.SENT for seq in range(6)})
    put(cid, {seq: MessageState.FAILED for seq in range(6, 10)})
    assert campaign_reads.get_status(cid, redis_client) == "completed"
    transition = lifecycle._transition
    broken: list[str] = []

    def fails_once(*args: Any, **kw: Any) -> Any:
        if not broken:
            broken.append("once")
            raise redis.ConnectionError("Connection reset by peer")
        return transition(*args, **kw)

    monkeypatch.setattr(lifecycle, "_transition", fails_once)
    with pytest.raises(redis.ConnectionError):
        lifecycle.retry_failed(cid, client=redis_client, enqueue=lambda c, b: None)
    enqueued: list[tuple[str, int]] = []
    report, summary = lifecycle.retry_failed(
        cid, client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    )
    assert (report.retried, report.skipped_already_retried) == (0, 0)
    assert (summary["status"], summary["queued"]) == ("running", 4)
    assert enqueued == [(cid, 0)]
    assert redis_client.zscore(store.ACTIVE_ZSET, cid) is not None  # housekeeping watches it


def test_a_resume_counts_the_failure_breaker_afresh_for_a_batch_that_runs_at_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume set the campaign running, then cleared the breaker's count in a second
    step: a batch task of the campaign taken by a worker in between (one queued before
    the pause) added its first failures to the old count and paused the campaign again
    at once, the fix the person resumed for untried."""
    settings = Settings(pause_after_failures=10)
    with HttpSink(default=Reply(400, b'{"error": "unknown sender"}')) as sink:
        http_provider(redis_client, sink.url, batch_size=5, max_connections=1)
        cid, batches = create_held(redis_client, _body(40, "esp"))
        run_batches(batches, settings)
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert (summary["status"], summary["failed"], summary["queued"]) == ("paused", 10, 30)
        # Fixed at the ESP, but for one more refusal (a chunk of 5).
        sink.script(Reply(400, b'{"error": "unknown sender"}'), *[Reply(200, b"{}")] * 5)
        hand_out = lifecycle._hand_out

        def a_batch_first(r: redis.Redis, campaign_id: str, enqueue: Any) -> None:
            run_batches(batches, settings)  # a worker takes a batch task right then
            hand_out(r, campaign_id, enqueue)

        monkeypatch.setattr(lifecycle, "_hand_out", a_batch_first)
        lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: None)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["failed"], summary["sent"]) == ("completed", 15, 25)


def test_a_cancel_that_lands_as_a_posted_campaign_starts_is_not_undone(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign posted with its list (and a caller-chosen id) is stored as a draft,
    then set running in a second step, unconditionally: a cancel (or a pause) that
    landed between the two answered ``cancelled``, then the campaign ran and sent
    everyone."""
    smtp_provider(redis_client, 2525)
    cid = "cancel-at-start"
    appender = recipient_append.RecipientAppender.__init__
    answers: list[str] = []

    def cancel_first(self: recipient_append.RecipientAppender, *args: Any, **kw: Any) -> None:
        if not answers:
            answer = lifecycle.cancel(cid, client=redis_client, enqueue=lambda c, b: None)
            answers.append(answer["status"])
        appender(self, *args, **kw)

    monkeypatch.setattr(recipient_append.RecipientAppender, "__init__", cancel_first)
    batches: list[tuple[str, int]] = []
    created = campaigns.create_campaign(
        CampaignRequest.model_validate({**_body(10), "id": cid}),
        client=redis_client,
        enqueue=lambda c, b: batches.append((c, b)),
    )
    assert created == (cid, True) and answers == ["cancelled"]
    assert campaign_reads.get_status(cid, redis_client) == "cancelled"
    run_batches(batches)  # whatever was handed out sends nothing
    summary = assert_settled(redis_client, cid)
    assert (summary["status"], summary["sent"]) == ("cancelled", 0)


def test_a_cancel_that_lands_as_a_batch_expires_its_messages_stands(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that found ``expires_at`` passed wrote ``expired`` over every message it
    had loaded, over a cancel that settled them ``cancelled`` in between: the campaign
    read cancelled, its messages expired, and /metrics counted each under both."""
    smtp_provider(redis_client, 2525)
    cid, batches = create_held(redis_client, _body(10))
    key = store.campaign_key(cid)
    content = campaign_reads.load_content(cid, redis_client)
    passed = content.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    redis_client.hset(key, "content", passed.model_dump_json())
    expire_now = sending.expire_now

    async def cancelled_first(r: Any, campaign_id: str) -> None:
        lifecycle.cancel(campaign_id, client=redis_client, enqueue=lambda c, b: None)
        await expire_now(r, campaign_id)

    monkeypatch.setattr(sending, "expire_now", cancelled_first)
    (result,) = run_batches(batches[:1], rounds=1)
    summary = assert_settled(redis_client, cid)
    assert campaign_reads.get_status(cid, redis_client) == "cancelled"
    assert (summary["cancelled"], summary["expired"]) == (10, 0)
    assert "expired" not in result.counts
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert (stats.get("local|cancelled"), stats.get("local|expired")) == ("10", None)


def test_retry_failed_whose_write_failed_can_be_asked_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retry-failed marked the failures retried, then its write of them failed (Redis
    gone for a moment): marked and still failed, they could never be retried again. The
    mark and the write are one step now: asked again, it sends them (review D9)."""
    smtp_provider(redis_client, 2525)
    cid, _ = create_held(redis_client, _body(10))
    put(cid, {seq: MessageState.SENT for seq in range(6)})
    put(cid, {seq: MessageState.FAILED for seq in range(6, 10)})
    submit = LedgerWriter._submit
    broken: list[str] = []

    async def fails_once(self: LedgerWriter, encoded: Any) -> list[bool]:
        if not broken:
            broken.append("once")
            raise redis.ConnectionError("Connection reset by peer")
        return await submit(self, encoded)

    monkeypatch.setattr(LedgerWriter, "_submit", fails_once)
    with pytest.raises(redis.ConnectionError):
        lifecycle.retry_failed(cid, client=redis_client, enqueue=lambda c, b: None)
    report, summary = lifecycle.retry_failed(cid, client=redis_client, enqueue=lambda c, b: None)
    assert (report.retried, report.skipped_already_retried) == (4, 0)
    assert (summary["status"], summary["failed"], summary["queued"]) == ("running", 0, 4)
    again, _ = lifecycle.retry_failed(cid, client=redis_client, enqueue=lambda c, b: None)
    assert (again.retried, again.skipped_already_retried) == (0, 0)  # none failed now
