"""Retention: a finished campaign's per-message data leaves Redis after
DISPATCH_RETENTION_DAYS; its report, id and callbacks go on working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch import campaign_reads, lifecycle, message_pages, retention, store, suppressions
from dispatch.celery_app import app
from dispatch.client import Gone
from dispatch.models import CampaignStatus
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.callback_support import callback_path, inbox_empty, nested, post, stream
from tests.helpers import create_held, recipients, run_batches, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for

DAY = 86400.0


@pytest.fixture
def api(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_client(api_server) as client:
        yield client


def body(n: int = 5, campaign_id: str = "ret1") -> dict[str, object]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hi {{ name }}",
        "html": "<p>Hello {{ name }}</p>",
        "recipients": recipients(n),
    }


def sent_campaign(r: redis.Redis, smtp: SmtpTestServer, n: int = 5) -> str:
    smtp_provider(r, smtp.port)
    campaign_id, _ = run_inline(r, body(n))
    assert campaign_reads.campaign_summary(campaign_id, r)["status"] == "completed"
    assert len(smtp.messages) == n
    return campaign_id


def existing(r: redis.Redis, campaign_id: str) -> list[str]:
    return [k for k in retention.per_message_keys(campaign_id) if r.exists(k)]


def test_a_finished_campaign_keeps_its_report_and_loses_its_per_message_data(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id = sent_campaign(redis_client, smtp)
    before = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert existing(redis_client, campaign_id)  # recipients, address keys, ledger
    assert before["purged_at"] is None

    assert retention.purge_due(redis_client, now=time.time() + 29 * DAY) == []
    assert existing(redis_client, campaign_id)
    now = time.time() + 31 * DAY
    assert retention.purge_due(redis_client, now=now) == [campaign_id]

    assert existing(redis_client, campaign_id) == []
    after = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert after["purged_at"] == pytest.approx(now)
    changed = ("purged_at", "counts_closed_at")  # (counts close DISPATCH_RETENTION_DAYS later)
    assert {k: v for k, v in after.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert retention.purge_due(redis_client, now=now + DAY) == []  # once
    with pytest.raises(retention.CampaignPurgedError):
        message_pages.messages_page(campaign_id, client=redis_client)
    with pytest.raises(retention.CampaignPurgedError):
        lifecycle.retry_failed(campaign_id, client=redis_client, enqueue=lambda c, b: None)


def test_a_retention_of_zero_keeps_everything(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id = sent_campaign(redis_client, smtp)
    assert retention.purge_due(redis_client, now=time.time() + 3650 * DAY, retention_days=0) == []
    assert len(existing(redis_client, campaign_id)) == 3


def test_unfinished_campaigns_are_never_purged(redis_client: redis.Redis) -> None:
    smtp_provider(redis_client, 9)  # nothing is sent: the batches are held here
    draft = {**body(3, "draft1"), "draft": True}
    create_held(redis_client, draft)
    running, _ = create_held(redis_client, body(3, "running1"))
    paused, _ = create_held(redis_client, body(3, "paused1"))
    lifecycle.pause(paused, client=redis_client)
    later = time.time() + 400 * DAY
    assert retention.purge_due(redis_client, now=later) == []
    for campaign_id in ("draft1", running, paused):
        assert existing(redis_client, campaign_id), campaign_id
    # Nor by a direct purge: the status is checked with the deletion.
    assert not retention.purge(redis_client, running)
    assert existing(redis_client, running)


def test_the_retention_counts_from_the_last_change_not_the_creation(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 9)
    # A draft no recipient was appended to: cancelling it settles no message.
    campaign_id, _ = create_held(redis_client, {**body(0, "old1"), "draft": True})
    created = time.time() - 40 * DAY  # created long ago, cancelled now
    redis_client.zadd(store.CAMPAIGNS_ZSET, {campaign_id: created})
    redis_client.hset(store.campaign_key(campaign_id), "created_at", str(created))
    lifecycle.cancel(campaign_id, client=redis_client)

    assert retention.purge_due(redis_client, now=time.time() + 29 * DAY) == []
    assert retention.purge_due(redis_client, now=time.time() + 31 * DAY) == [campaign_id]


def test_a_campaign_retried_after_it_was_chosen_is_not_purged(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id = sent_campaign(redis_client, smtp)
    redis_client.hset(store.campaign_key(campaign_id), "status", CampaignStatus.RUNNING.value)
    assert not retention.purge(redis_client, campaign_id)
    assert len(existing(redis_client, campaign_id)) == 3


def test_beat_runs_the_purge() -> None:
    import dispatch.tasks  # noqa: F401  (what the worker imports: it registers the tasks)

    schedule = app.conf.beat_schedule["purge-finished"]
    assert schedule["task"] == "dispatch.purge_finished"
    assert "dispatch.purge_finished" in app.tasks


@covers("GET /v1/campaigns/{campaign_id}/messages", "POST /v1/campaigns/{campaign_id}/retry-failed")
def test_after_the_purge_the_api_says_gone_and_a_repost_sends_nothing(
    api: httpx.Client, api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id = sent_campaign(redis_client, smtp, n=4)
    assert api.get(f"/v1/campaigns/{campaign_id}/messages").status_code == 200
    retention.purge(redis_client, campaign_id)

    summary = api.get(f"/v1/campaigns/{campaign_id}").json()
    assert summary["status"] == "completed" and summary["sent"] == 4
    assert summary["purged_at"] > 0
    for answer in (
        api.get(f"/v1/campaigns/{campaign_id}/messages"),
        api.post(f"/v1/campaigns/{campaign_id}/retry-failed"),
    ):
        assert answer.status_code == 410, answer.text
        assert answer.json()["field"] == "campaign_id"
        assert "DISPATCH_RETENTION_DAYS" in answer.json()["detail"]
    client = dispatch_client(api_server)
    with pytest.raises(Gone) as gone:
        client.messages(campaign_id)
    assert gone.value.field == "campaign_id"
    listed = api.get("/v1/campaigns").json()["items"]
    assert [c["id"] for c in listed] == [campaign_id]

    again = api.post("/v1/campaigns", json=body(4))
    assert again.status_code == 200, again.text  # recognised: the same campaign
    summary = again.json()  # nothing stored or queued again
    assert (summary["total"], summary["queued"], summary["sent"]) == (4, 0, 4)
    assert summary["status"] == "completed"


def test_callbacks_after_the_purge_still_count_once_suppress_and_publish(
    api: httpx.Client,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    celery_worker: WorkerProcess,
) -> None:
    campaign_id = sent_campaign(redis_client, smtp, n=3)
    metas = {
        m["email"]: m["meta"]
        for m in message_pages.messages_page(campaign_id, client=redis_client)[0]
    }
    path = callback_path(redis_client, "local")
    first = {"type": "delivered", "email": "user0@example.com", "meta": metas["user0@example.com"]}
    assert post(api, path, nested(first)).status_code == 200
    wait_for(lambda: inbox_empty(redis_client), timeout=60)
    retention.purge(redis_client, campaign_id)

    events = [
        {"type": "delivered", "email": "user1@example.com", "meta": metas["user1@example.com"]},
        {"type": "hard_bounce", "email": "user2@example.com", "meta": metas["user2@example.com"]},
        # Redelivered after the dedupe TTL (another description: another content hash).
        {**first, "description": "delivered again"},
    ]
    assert post(api, path, nested(*events)).status_code == 200
    wait_for(lambda: inbox_empty(redis_client), timeout=60)

    counters = campaign_reads.get_counters(campaign_id, redis_client)
    assert counters["delivered"] == 2 and counters["hard_bounced"] == 1
    entry = suppressions.get("user2@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "hard_bounce"
    published = {(e["email"], e["event"]) for e in stream(redis_client)}
    assert ("user2@example.com", "Notification Failed") in published
    assert ("user1@example.com", "Notification Delivered") in published


def test_a_campaign_retried_while_the_purge_runs_keeps_what_it_queued(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One message failed (the server refused it); the campaign finished 40 days ago.
    smtp.handler.data_reply = lambda e: "554 5.0.0 refused" if "user1@" in e.rcpt_tos[0] else None
    smtp_provider(redis_client, smtp.port)
    campaign_id, _ = run_inline(redis_client, body(3))
    assert campaign_reads.campaign_summary(campaign_id, redis_client)["failed"] == 1
    smtp.handler.data_reply = lambda e: None
    old = time.time() - 40 * DAY
    redis_client.zadd(store.CAMPAIGNS_ZSET, {campaign_id: old})
    key = store.campaign_key(campaign_id)
    for name in ("created_at", "started_at", "progress_at", "completed_at", "status_at"):
        if redis_client.hexists(key, name):
            redis_client.hset(key, name, repr(old))

    # retry-failed queues the failed message again (a ledger write) after the purge chose
    # the campaign and before the purge itself; its move back to running comes after.
    purge = retention.purge
    retried: list[lifecycle.RetryReport] = []

    def retry_failed_lands_first(*args: object, **kwargs: object) -> bool:
        report = lifecycle.RetryReport()
        asyncio.run(requeue(report))
        retried.append(report)
        return purge(*args, **kwargs)  # type: ignore[arg-type]

    async def requeue(report: lifecycle.RetryReport) -> None:
        client = store.async_client()
        try:
            await lifecycle._requeue_failed(client, campaign_id, 1000, report)
        finally:
            await client.aclose()

    monkeypatch.setattr(retention, "purge", retry_failed_lands_first)
    assert retention.purge_due(redis_client) == []
    assert retried[0].retried == 1
    assert campaign_reads.campaign_summary(campaign_id, redis_client)["purged_at"] is None

    # The rest of retry-failed: the campaign runs again and sends the message.
    lifecycle._transition(
        redis_client, campaign_id, CampaignStatus.RUNNING, [CampaignStatus.COMPLETED]
    )
    run_batches([(campaign_id, 0)])
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 3, 0)
    assert len(smtp.messages) == 3


def test_a_run_reads_only_the_campaigns_still_kept_and_indexes_older_ones_once(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Purged campaigns leave the index a run reads, so a run's work does not grow with
    every campaign ever sent; campaigns stored before the index existed join it once."""
    campaign_id = sent_campaign(redis_client, smtp)
    assert redis_client.zscore(store.KEPT_ZSET, campaign_id) is not None  # from creation
    assert retention.purge_due(redis_client, now=time.time() + 31 * DAY) == [campaign_id]
    assert redis_client.zcard(store.KEPT_ZSET) == 0

    # As stored by a version without the index: a finished one and a purged one.
    older, _ = run_inline(redis_client, body(3, "older1"))
    redis_client.zrem(store.KEPT_ZSET, older)
    redis_client.delete(store.KEPT_INDEXED)
    assert retention.purge_due(redis_client, now=time.time() + 1 * DAY) == []  # not due
    assert redis_client.zrange(store.KEPT_ZSET, 0, -1) == [older]  # indexed, the purged one not
    assert retention.purge_due(redis_client, now=time.time() + 31 * DAY) == [older]
    assert redis_client.zcard(store.KEPT_ZSET) == 0


@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_purged_campaigns_content_is_kept_packed_and_reads_as_before(
    api: httpx.Client, api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """What stays of a purged campaign stays for good, and its templates are most of it
    (83 KB a campaign with a 60 KB HTML template, review E9): it is stored packed, and
    everything that reads it after the purge reads the same content."""
    smtp_provider(redis_client, smtp.port)
    rows = "".join(
        f'<tr><td style="padding:8px;font-family:Arial">Item {i}: {{{{ name }}}}, '
        f'<a href="https://shop.example/p/{i * 7919 % 10007}">see offer {i}</a></td></tr>'
        for i in range(400)
    )
    big = {**body(3, "ret-big"), "html": f"<table>{rows}</table>", "category": "news"}
    campaign_id, _ = run_inline(redis_client, big)
    key = store.campaign_key(campaign_id)
    content = campaign_reads.load_content(campaign_id, redis_client)
    stored = redis_client.hget(key, "content")
    assert stored is not None and stored.startswith("{")
    before = redis_client.memory_usage(key, samples=0)  # every field: 5 sampled by default

    assert retention.purge(redis_client, campaign_id)
    packed = redis_client.hget(key, "content")
    assert packed is not None and packed.startswith("zlib:")
    assert len(packed) * 3 < len(stored)
    assert redis_client.memory_usage(key, samples=0) * 3 < before
    assert campaign_reads.load_content(campaign_id, redis_client) == content
    assert not retention.purge(redis_client, campaign_id)  # once; packed once
    assert redis_client.hget(key, "content") == packed

    # What reads it after the purge: the summary, a repeat, a test message, a batch.
    assert api.get(f"/v1/campaigns/{campaign_id}").json()["purged_at"] > 0
    assert api.post("/v1/campaigns", json=big).status_code == 200  # a repeat
    with api_client(api_server) as http:
        test = http.post(
            f"/v1/campaigns/{campaign_id}/test",
            json={"to": "me@acme.example", "vars": {"name": "Tess"}},
        )
    assert test.status_code == 200 and test.json()["ok"] is True, test.text
    assert (
        "Item 399: Tess"
        in smtp.messages[-1].message.get_payload()[-1].get_payload(decode=True).decode()
    )
    results = run_batches([(campaign_id, 0)], rounds=1)  # a batch task redelivered late
    assert results[0].counts == {}
