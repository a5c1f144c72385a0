"""Campaign lifecycle over the real API, Redis and worker: pause, resume, cancel, retry-failed,
expiry and scheduled release by beat (DESIGN §5)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, recipient_append, store
from dispatch.ledger import LedgerWriter, parse_record, record
from dispatch.models import CampaignRequest, MessageState, Recipient
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.api_support import (
    api_client,
    campaign,
    covers,
    ndjson,
    save_smtp_provider,
    wait_for_campaign,
)
from tests.helpers import campaign_body, create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import FAST_ENV, WorkerProcess, wait_for


def slow(seconds: float) -> Callable[[Any], None]:
    """A DATA hook that takes ``seconds`` per message (so that a pause lands mid-campaign)."""

    def reply(envelope: Any) -> None:
        time.sleep(seconds)

    return reply


def start_slow_campaign(
    api: httpx.Client, smtp: SmtpTestServer, campaign_id: str, n: int, until_sent: int
) -> None:
    """Start a campaign whose messages take a few ms each; return once ``until_sent`` are in."""
    smtp.handler.data_reply = slow(0.004)  # type: ignore[assignment]
    save_smtp_provider(api, smtp.port, max_connections=4)
    assert api.post("/v1/campaigns", json=campaign_body(campaign_id, n)).status_code == 201
    wait_for(lambda: len(smtp.messages) >= until_sent, timeout=60)


def until_no_batch_runs(r: redis.Redis, campaign_id: str) -> None:
    """Return once no batch of the campaign holds its lease, polled after a pause or
    cancel was answered: every run that began before it has ended (its sends recorded,
    its claims given back), and one that begins after it reads the new status with its
    lease and sends nothing. (A quiet second at the SMTP server was taken for this, and
    a bound on how soon it fell: under load a run stalled for a second looked stopped.)"""
    leases = store.batch_lease_key(campaign_id, 0).removesuffix("0") + "*"
    wait_for(lambda: not any(r.scan_iter(match=leases, count=1000)), timeout=60)


@covers(
    "POST /v1/campaigns/{campaign_id}/pause",
    "POST /v1/campaigns/{campaign_id}/resume",
    "GET /v1/campaigns/{campaign_id}",
)
def test_pause_stops_sending_and_resume_sends_every_recipient_exactly_once(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    with api_client(api_server) as api:
        start_slow_campaign(api, smtp, "pause-1", 2000, until_sent=300)
        paused = api.post("/v1/campaigns/pause-1/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        until_no_batch_runs(redis_client, "pause-1")
        at_pause = len(smtp.messages)
        assert at_pause < 2000, "the pause came too late to test anything"
        summary = campaign(api, "pause-1")
        assert summary["status"] == "paused"
        assert summary["sent"] == at_pause and summary["queued"] == 2000 - at_pause
        assert len(smtp.messages) == at_pause, "a paused campaign sent more"
        # Pausing again is harmless.
        assert api.post("/v1/campaigns/pause-1/pause").json()["status"] == "paused"

        resumed = api.post("/v1/campaigns/pause-1/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
        done = wait_for_campaign(api, "pause-1", lambda s: s["status"] == "completed", 180)
    assert (done["sent"], done["queued"], done["failed"], done["unknown"]) == (2000, 0, 0, 0)
    rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(rcpts) == 2000 and max(rcpts.values()) == 1, "someone got the campaign twice"


@covers(
    "POST /v1/campaigns/{campaign_id}/cancel",
    "GET /v1/campaigns/{campaign_id}/messages",
)
def test_cancel_marks_every_unsent_message_cancelled(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    with api_client(api_server) as api:
        start_slow_campaign(api, smtp, "cancel-1", 1500, until_sent=100)
        cancelled = api.post("/v1/campaigns/cancel-1/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        until_no_batch_runs(redis_client, "cancel-1")
        summary = wait_for_campaign(api, "cancel-1", lambda s: s["queued"] == 0, 30)
        assert summary["status"] == "cancelled"
        assert summary["sent"] == len(smtp.messages) < 1500
        assert summary["sent"] + summary["cancelled"] == 1500 and summary["unknown"] == 0

        seen: Counter[str] = Counter()
        cursor = "0"
        while cursor is not None:
            page = api.get(
                "/v1/campaigns/cancel-1/messages", params={"cursor": cursor, "limit": 400}
            ).json()
            seen.update(m["status"] for m in page["items"])
            cursor = page["next_cursor"]
        assert seen == Counter({"sent": summary["sent"], "cancelled": summary["cancelled"]})
        sent_to = {m.rcpt_tos[0] for m in smtp.messages}
        filtered = api.get(
            "/v1/campaigns/cancel-1/messages", params={"status": "cancelled", "limit": 50}
        ).json()["items"]
        assert filtered and all(m["email"] not in sent_to for m in filtered)

        again = api.post("/v1/campaigns/cancel-1/cancel")  # harmless
        assert again.status_code == 200 and again.json()["cancelled"] == summary["cancelled"]


@covers("POST /v1/campaigns/{campaign_id}/retry-failed")
def test_retry_failed_after_an_outage_sends_only_the_failed(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """40 go through, then the server answers 452 (transient, not a throttle: a throttled
    try is no attempt, and 50 of them took minutes) until every other message ran out of
    attempts. After the outage retry-failed sends exactly those; the address the server
    refused for good (550) is not retried, and nobody is retried twice."""
    outage = threading.Event()
    lock = threading.Lock()

    def data_reply(envelope: Any) -> str | None:
        with lock:
            if envelope.rcpt_tos[0].startswith("stubborn@"):
                return "452 4.3.1 still not today"
            if outage.is_set() or len(smtp.messages) >= 40:
                outage.set()
                return "452 4.3.1 temporary outage, try later"
        return None

    smtp.handler.data_reply = data_reply  # type: ignore[assignment]
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("gone@") else None
    people = [*recipients(120), {"email": "gone@example.com", "vars": {"name": "Gone"}},
              {"email": "stubborn@example.com", "vars": {"name": "S"}}]  # fmt: skip
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port, max_connections=4)
        assert api.post("/v1/campaigns", json={**campaign_body("retry-1", 0), "recipients": people})
        done = wait_for_campaign(api, "retry-1", lambda s: s["status"] == "completed", 180)
        assert (done["sent"], done["failed"], done["queued"]) == (40, 82, 0)
        failed = api.get("/v1/campaigns/retry-1/messages", params={"status": "failed"}).json()
        classes = Counter(m["error_class"] for m in failed["items"])
        assert classes["SMTP invalid email ID"] == 1 and len(failed["items"]) == 82
        sent_before = {m.rcpt_tos[0] for m in smtp.messages}

        outage.clear()
        smtp.handler.data_reply = lambda envelope: (  # type: ignore[assignment]
            "452 4.3.1 still not today" if envelope.rcpt_tos[0].startswith("stubborn@") else None
        )
        retried = api.post("/v1/campaigns/retry-1/retry-failed")
        assert retried.status_code == 200, retried.text
        report = retried.json()
        assert (report["retried"], report["skipped_not_retryable"]) == (81, 1)
        assert report["campaign"]["failed"] == 1 and report["campaign"]["queued"] == 81
        assert report["campaign"]["status"] == "running"
        done = wait_for_campaign(api, "retry-1", lambda s: s["status"] == "completed", 180)
        assert (done["sent"], done["failed"], done["queued"]) == (120, 2, 0)

        again = api.post("/v1/campaigns/retry-1/retry-failed").json()
        assert (again["retried"], again["skipped_already_retried"]) == (0, 1)
        assert again["skipped_not_retryable"] == 1 and again["campaign"]["status"] == "completed"
        stubborn = api.get("/v1/campaigns/retry-1/messages", params={"status": "failed"}).json()
        assert {m["email"]: m["retried"] for m in stubborn["items"]} == {
            "gone@example.com": False,
            "stubborn@example.com": True,
        }
    rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(rcpts) == 120 and max(rcpts.values()) == 1
    assert set(rcpts) - sent_before == {f"user{i}@example.com" for i in range(120)} - sent_before


@covers(
    "POST /v1/campaigns/{campaign_id}/pause",
    "POST /v1/campaigns/{campaign_id}/resume",
    "POST /v1/campaigns/{campaign_id}/cancel",
    "POST /v1/campaigns/{campaign_id}/retry-failed",
    "POST /v1/campaigns/{campaign_id}/start",
)
def test_operations_that_do_not_fit_the_status_get_409_and_unknown_ids_404(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        api.post("/v1/campaigns", json={**campaign_body("draft-1", 3), "draft": True})
        for operation in ("pause", "resume", "retry-failed"):
            answer = api.post(f"/v1/campaigns/draft-1/{operation}")
            assert answer.status_code == 409, operation
            assert answer.json()["field"] == "status" and "draft" in answer.json()["detail"]
        assert api.post("/v1/campaigns/draft-1/cancel").json()["cancelled"] == 3
        for operation in ("start", "resume", "pause", "retry-failed"):
            assert api.post(f"/v1/campaigns/draft-1/{operation}").status_code == 409, operation
        for operation in ("start", "pause", "resume", "cancel", "retry-failed"):
            answer = api.post(f"/v1/campaigns/nope/{operation}")
            assert answer.status_code == 404 and answer.json()["field"] == "campaign_id"


def test_pausing_a_scheduled_campaign_holds_it_and_resume_schedules_it_again(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    enqueued: list[tuple[str, int]] = []
    request = CampaignRequest.model_validate(campaign_body("sched-1", 5, send_at=later))
    campaigns.create_campaign(request, client=redis_client)
    assert campaign_reads.get_status("sched-1", redis_client).value == "scheduled"
    assert lifecycle.pause("sched-1", client=redis_client)["status"] == "paused"
    assert redis_client.zscore(store.SCHEDULED_ZSET, "sched-1") is None  # beat leaves it
    summary = lifecycle.resume(
        "sched-1", client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    )
    assert summary["status"] == "scheduled" and enqueued == []
    assert redis_client.zscore(store.SCHEDULED_ZSET, "sched-1") is not None


def _put(campaign_id: str, states: dict[int, MessageState]) -> None:
    async def go() -> None:
        client = store.async_client()
        writer = LedgerWriter(client, campaign_id)
        for seq, state in states.items():
            await writer.put(seq, record(state, attempts=2))
        await client.aclose()

    asyncio.run(go())


def test_cancel_settles_messages_waiting_for_a_retry_and_hands_back_claimed_batches(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """No worker: the ledger is set by hand. Queued and ``retry`` messages end
    ``cancelled``; a message claimed by a worker is left to it, and its batch is handed
    out again so that a dead worker's claim ends ``unknown``."""
    smtp_provider(redis_client, 2525)
    enqueued: list[tuple[str, int]] = []
    request = CampaignRequest.model_validate(campaign_body("c-retry", 2500))
    campaigns.create_campaign(request, client=redis_client, enqueue=lambda c, b: None)
    _put("c-retry", {0: MessageState.SENT, 1: MessageState.FAILED, 2: MessageState.RETRY,
                     1500: MessageState.RETRY, 2100: MessageState.CLAIMED})  # fmt: skip
    before = campaign_reads.get_counters("c-retry", redis_client)
    assert (before["queued"], before["sent"], before["failed"]) == (2498, 1, 1)

    summary = lifecycle.cancel(
        "c-retry", client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    )
    assert summary["status"] == "cancelled"
    assert (summary["cancelled"], summary["queued"], summary["sent"]) == (2497, 1, 1)
    assert enqueued == [("c-retry", 2)]  # the batch holding the claimed message
    ledger = redis_client.hgetall(store.ledger_key("c-retry"))
    states = Counter((parse_record(raw) or {})["state"] for raw in ledger.values())
    assert states == Counter({"cancelled": 2497, "sent": 1, "failed": 1, "claimed": 1})
    retry_rec = parse_record(ledger["1500"])
    assert retry_rec is not None and retry_rec["attempts"] == 2  # attempts are kept

    with pytest.raises(campaigns.CampaignStateError):  # cancelled is final
        lifecycle.resume("c-retry", client=redis_client)


def test_expiry_settles_unsent_messages_expired(redis_client: redis.Redis) -> None:
    smtp_provider(redis_client, 2525)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    for cid in ("exp-draft", "exp-paused"):
        request = CampaignRequest.model_validate(
            {
                **campaign_body(cid, 1200),
                "expires_at": soon.isoformat(),
                "draft": cid == "exp-draft",
            }
        )
        campaigns.create_campaign(request, client=redis_client, enqueue=lambda c, b: None)
    lifecycle.pause("exp-paused", client=redis_client)
    _put("exp-paused", {5: MessageState.SENT, 6: MessageState.RETRY})
    campaigns.create_campaign(
        CampaignRequest.model_validate(campaign_body("no-expiry", 3)), client=redis_client,
        enqueue=lambda c, b: None,
    )  # fmt: skip

    assert lifecycle.expire_due(client=redis_client) == []  # not yet
    expired = lifecycle.expire_due(now=soon.timestamp() + 1, client=redis_client)
    assert sorted(expired) == ["exp-draft", "exp-paused"]
    for cid, sent in (("exp-draft", 0), ("exp-paused", 1)):
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert summary["status"] == "expired" and summary["reason"] == "expires_at passed"
        assert (summary["expired"], summary["sent"], summary["queued"]) == (1200 - sent, sent, 0)
    assert campaign_reads.get_status("no-expiry", redis_client).value == "running"
    assert redis_client.zcard(store.EXPIRING_ZSET) == 0
    assert lifecycle.expire_due(now=soon.timestamp() + 1, client=redis_client) == []


def test_retryable_failures() -> None:
    assert lifecycle.is_retryable("SMTP connection error", "cannot connect")
    assert lifecycle.is_retryable("SMTP timeout", "")
    assert lifecycle.is_retryable("SMTP dispatching failed", "gave up after 5 attempts: 451 x")
    assert lifecycle.is_retryable("Dispatch failed", "HTTP 503: down")
    assert lifecycle.is_retryable("SMTP invalid email ID", "gave up after 5 attempts: 450 busy")
    assert not lifecycle.is_retryable("SMTP invalid email ID", "550 5.1.1 no such user")
    assert not lifecycle.is_retryable("SMTP invalid email ID", "'x' is not an email address")
    assert not lifecycle.is_retryable("Invalid message", "subject: contains a line break")


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}")
def test_beat_releases_scheduled_campaigns_and_expires_old_ones(
    api_server: ApiServer,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
    tmp_path: Path,
) -> None:
    """A real ``dispatch beat``: send_at is honoured without any long countdown, and a
    campaign past expires_at ends ``expired``."""
    now = datetime.now(UTC)
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        scheduled = campaign_body("beat-send", 10, send_at=(now + timedelta(seconds=2)).isoformat())
        assert api.post("/v1/campaigns", json=scheduled).json()["status"] == "scheduled"
        paused = campaign_body(
            "beat-expire", 10, expires_at=(now + timedelta(seconds=2)).isoformat()
        )
        api.post("/v1/campaigns", json={**paused, "draft": True})
        env = {**os.environ, **FAST_ENV, "DISPATCH_REDIS_URL": redis_server.url}
        beat = subprocess.Popen(
            [sys.executable, "-m", "dispatch.cli", "beat", "--loglevel", "WARNING"],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            sent = wait_for_campaign(api, "beat-send", lambda s: s["status"] == "completed", 60)
            # The status flips first (so that no sender claims more), then the unsent
            # messages are settled: wait for both, as a client polling would.
            expired = wait_for_campaign(
                api, "beat-expire", lambda s: s["status"] == "expired" and s["queued"] == 0, 60
            )
        finally:
            beat.terminate()
            beat.wait(timeout=20)
    assert sent["sent"] == 10 and len(smtp.messages) == 10
    assert (expired["expired"], expired["sent"]) == (10, 0)


def test_appending_stays_possible_only_in_a_draft(redis_client: redis.Redis) -> None:
    smtp_provider(redis_client, 2525)
    campaigns.create_campaign(
        CampaignRequest.model_validate({**campaign_body("a-1", 2), "draft": True}),
        client=redis_client,
    )
    people: list[Recipient] = [{"email": r["email"], "vars": r["vars"]} for r in recipients(5)]
    assert recipient_append.append_recipients("a-1", people, client=redis_client) == 3  # 2 known
    assert campaign_reads.get_counters("a-1", redis_client)["total"] == 5
    campaigns.start_campaign("a-1", client=redis_client, enqueue=lambda c, b: None)
    with pytest.raises(campaigns.CampaignStateError):
        recipient_append.append_recipients("a-1", people, client=redis_client)
    assert list(ndjson([{"email": "x@example.com"}])) == [b'{"email": "x@example.com"}\n']


class _AppendDuringStart(redis.Redis):  # type: ignore[type-arg]
    """A client that, right after its first command on ``watched``, has another client
    append ``more`` to ``campaign``: an append landing while a start is under way."""

    watched = campaign = ""
    more: list[Recipient] = []  # noqa: RUF012

    def execute_command(self, *args: Any, **options: Any) -> Any:
        out = super().execute_command(*args, **options)
        if self.watched in map(str, args):
            self.watched = ""
            other = redis.Redis.from_url(os.environ["DISPATCH_REDIS_URL"], decode_responses=True)
            with contextlib.suppress(campaigns.CampaignStateError):  # refused: the caller knows
                recipient_append.append_recipients(self.campaign, self.more, client=other)
            other.close()
        return out


def test_recipients_appended_while_the_campaign_starts_are_all_sent(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """An append that lands while ``start`` runs is either in a batch or refused (409),
    never stored past the last batch: those recipients were never sent and the campaign
    stayed ``running`` for ever (housekeeping enqueues the batches it knows of)."""
    smtp_provider(redis_client, smtp.port)
    size = get_settings().batch_size
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate({**campaign_body("race-start", size), "draft": True}),
        client=redis_client,
    )
    starting = _AppendDuringStart.from_url(os.environ["DISPATCH_REDIS_URL"], decode_responses=True)
    starting.watched, starting.campaign = store.counters_key(cid), cid
    starting.more = [{"email": f"late{i}@example.com", "vars": {"name": "L"}} for i in range(50)]
    batches: list[tuple[str, int]] = []
    campaigns.start_campaign(cid, client=starting, enqueue=lambda c, b: batches.append((c, b)))
    starting.close()
    run_batches(batches)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["queued"]) == ("completed", 0)
    assert summary["sent"] == summary["total"] == len(smtp.messages)


def test_cancelled_messages_count_once_under_their_provider(redis_client: redis.Redis) -> None:
    """/metrics' outcomes: the cancel settles the queued messages (counted under the
    campaign's provider), and a batch that writes them cancelled again, as a running
    batch does with what it had not sent, counts nothing more."""
    smtp_provider(redis_client, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
    cid, _ = create_held(redis_client, body)
    lifecycle.cancel(cid, client=redis_client)
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert stats == {"local|cancelled": "5"}

    async def batch_writes_them_again() -> None:
        client = store.async_client()
        try:
            writer = LedgerWriter(client, cid, provider="local")
            again = record(MessageState.CANCELLED)
            await writer.put_many([(seq, again, "") for seq in range(5)])
        finally:
            await client.aclose()

    asyncio.run(batch_writes_them_again())
    assert redis_client.hgetall(store.MESSAGE_STATS_HASH) == {"local|cancelled": "5"}
    assert campaign_reads.get_counters(cid, redis_client)["cancelled"] == 5


def test_a_campaign_whose_batches_expired_its_last_messages_ends_expired(
    redis_client: redis.Redis,
) -> None:
    """Batches that run after ``expires_at`` settle the unsent messages ``expired``
    themselves, and the last of those writes completes the running campaign before beat's
    expiry looks at it. Beat then marks it ``expired``, as the campaign really ended; a
    campaign that sent everything before its ``expires_at`` stays ``completed``."""
    smtp_provider(redis_client, 2525)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    for cid in ("exp-late", "exp-done"):
        request = CampaignRequest.model_validate(
            {**campaign_body(cid, 3), "expires_at": soon.isoformat()}
        )
        campaigns.create_campaign(request, client=redis_client, enqueue=lambda c, b: None)
    _put("exp-late", {0: MessageState.SENT, 1: MessageState.EXPIRED, 2: MessageState.EXPIRED})
    _put("exp-done", {0: MessageState.SENT, 1: MessageState.SENT, 2: MessageState.SENT})
    assert campaign_reads.get_status("exp-late", redis_client).value == "completed"

    expired = lifecycle.expire_due(now=soon.timestamp() + 1, client=redis_client)
    assert expired == ["exp-late"]
    summary = campaign_reads.campaign_summary("exp-late", redis_client)
    assert summary["status"] == "expired" and summary["reason"] == "expires_at passed"
    assert (summary["sent"], summary["expired"], summary["queued"]) == (1, 2, 0)
    assert campaign_reads.get_status("exp-done", redis_client).value == "completed"


def test_a_batch_that_finds_the_campaign_expired_expires_it(redis_client: redis.Redis) -> None:
    """No beat: the batch that finds ``expires_at`` passed moves the campaign to
    ``expired`` before settling its messages, so it never reads ``completed``."""
    smtp_provider(redis_client, 2525)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3),
            "expires_at": soon.isoformat()}  # fmt: skip
    cid, batches = create_held(redis_client, body)
    wait_for(lambda: datetime.now(UTC) > soon, timeout=10)
    run_batches(batches)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["reason"]) == ("expired", "expires_at passed")
    assert (summary["expired"], summary["sent"], summary["queued"]) == (3, 0, 0)


def test_a_batch_stops_sending_once_expires_at_passes_while_it_runs(
    redis_client: redis.Redis,
) -> None:
    """No beat: a batch that is still sending when ``expires_at`` passes stops (it
    polls the clock with the status), its unsent messages end ``expired`` and so does the
    campaign. Before, it sent its whole batch after the campaign had expired, until beat's
    expiry (every 10 s) happened to run."""
    with SmtpTestServer() as smtp:
        # 60 messages at 10 a second take 6 s; the campaign expires after about 2.
        smtp_provider(redis_client, smtp.port, max_connections=1, rate_per_second=10)
        soon = datetime.now(UTC) + timedelta(seconds=2)
        cid, batches = create_held(
            redis_client,
            {**campaign_body("exp-mid", 60), "expires_at": soon.isoformat()},
        )
        run_batches(batches)
        received = len(smtp.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["reason"]) == ("expired", "expires_at passed")
    assert summary["expired"] > 0 and summary["queued"] == 0
    assert summary["sent"] == received == 60 - summary["expired"]


def test_a_batch_pausing_its_campaign_leaves_a_cancel_that_came_first(
    redis_client: redis.Redis,
) -> None:
    """A batch meeting a configuration error pauses its campaign only while it runs: a
    cancel that landed meanwhile stands (its messages are settled ``cancelled``)."""
    smtp_provider(redis_client, 9)
    running, _ = create_held(redis_client, campaign_body("pr1", 3))
    cancelled, _ = create_held(redis_client, campaign_body("pr2", 3))
    lifecycle.cancel(cancelled, client=redis_client, enqueue=lambda c, b: None)

    async def pause_both() -> None:
        client = store.async_client()
        try:
            for campaign_id in (running, cancelled):
                await lifecycle.pause_running(client, campaign_id, "SMTP connection error: x")
        finally:
            await client.aclose()

    asyncio.run(pause_both())
    assert campaign_reads.campaign_summary(running, redis_client)["status"] == "paused"
    assert (
        campaign_reads.campaign_summary(running, redis_client)["reason"]
        == "SMTP connection error: x"
    )
    assert campaign_reads.campaign_summary(cancelled, redis_client)["status"] == "cancelled"
