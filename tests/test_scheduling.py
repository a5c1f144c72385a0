"""Time in dispatch, against a real Redis: beat's release of ``send_at`` campaigns when a
release fails half-way or runs twice at once, and ``retry-failed`` once ``expires_at``
has passed (DESIGN §5)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, message_pages, store, tasks
from dispatch.ledger import LedgerWriter, record
from dispatch.models import CampaignRequest, MessageState
from tests.helpers import campaign_body, smtp_provider


def schedule(r: redis.Redis, campaign_id: str, n: int, send_at: datetime) -> None:
    request = CampaignRequest.model_validate(
        campaign_body(campaign_id, n, send_at=send_at.isoformat())
    )
    campaigns.create_campaign(request, client=r, enqueue=lambda c, b: None)
    assert campaign_reads.get_status(campaign_id, r).value == "scheduled"


def send_at_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis's clock, which beat's release and the start read, moved past the
    ``send_at`` of the campaigns scheduled (a minute ahead: storing them, 20 of 1,001
    recipients on a busy machine, took longer than a send_at a second ahead)."""
    real = store.redis_time
    monkeypatch.setattr(store, "redis_time", lambda r: real(r) + AHEAD * 2)


AHEAD = 60.0  # seconds ahead a test's campaigns are scheduled


def held_starts(monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> list[tuple[str, int]]:
    """Batches of the campaigns beat's release starts, held here instead of enqueued; the
    first ``fail_first`` starts meet a broken Redis connection (Redis restarted)."""
    real = campaigns.start_campaign
    held: list[tuple[str, int]] = []
    failures = [fail_first]
    lock = threading.Lock()

    def start(campaign_id: str, *, client: Any = None, enqueue: Any = None) -> int:
        with lock:
            if failures[0] > 0:
                failures[0] -= 1
                raise redis.ConnectionError("Connection closed by server.")

        def hold(cid: str, batch: int) -> None:
            with lock:
                held.append((cid, batch))

        return real(campaign_id, client=client, enqueue=hold)

    monkeypatch.setattr(campaigns, "start_campaign", start)
    return held


def test_a_release_that_fails_half_way_starts_the_campaign_at_the_next_tick(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis went away while beat's release ran: the campaign must not stay ``scheduled``
    for ever; the next tick (5 s later) starts it."""
    smtp_provider(redis_client, 2525)
    schedule(redis_client, "rel-broken", 3, datetime.now(UTC) + timedelta(seconds=AHEAD))
    held = held_starts(monkeypatch, fail_first=1)
    send_at_reached(monkeypatch)
    with pytest.raises(redis.ConnectionError):
        tasks.release_scheduled()
    assert tasks.release_scheduled() == 1
    assert campaign_reads.get_status("rel-broken", redis_client).value == "running"
    assert held == [("rel-broken", 0)]
    assert redis_client.zcard(store.SCHEDULED_ZSET) == 0
    assert tasks.release_scheduled() == 0


def test_two_releases_at_once_start_each_campaign_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two beat processes (a common deployment mistake) run the release at the same
    moment: each campaign's batches are handed out once."""
    smtp_provider(redis_client, 2525)
    send_at = datetime.now(UTC) + timedelta(seconds=AHEAD)
    ids = [f"rel-twice-{i}" for i in range(20)]
    for campaign_id in ids:
        schedule(redis_client, campaign_id, 1001, send_at)
    held = held_starts(monkeypatch)
    assert tasks.release_scheduled() == 0 and held == []  # (not before send_at)
    send_at_reached(monkeypatch)
    counts: list[int] = []
    go = threading.Barrier(4)

    def beat() -> None:
        go.wait()
        counts.append(tasks.release_scheduled())

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == len(ids)
    assert Counter(held) == Counter({(cid, batch): 1 for cid in ids for batch in (0, 1)})
    assert {campaign_reads.get_status(cid, redis_client).value for cid in ids} == {"running"}
    assert redis_client.zcard(store.SCHEDULED_ZSET) == 0


def test_a_campaign_left_in_the_schedule_that_is_not_scheduled_leaves_it(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 2525)
    schedule(redis_client, "rel-stale", 1, datetime.now(UTC) + timedelta(seconds=60))
    lifecycle.cancel("rel-stale", client=redis_client, enqueue=lambda c, b: None)
    redis_client.zadd(store.SCHEDULED_ZSET, {"rel-stale": 1.0, "rel-gone": 1.0})
    assert lifecycle.release_due(client=redis_client, enqueue=lambda c, b: None) == []
    assert redis_client.zcard(store.SCHEDULED_ZSET) == 0
    assert campaign_reads.get_status("rel-stale", redis_client).value == "cancelled"


def _fail_all(campaign_id: str, n: int) -> None:
    async def go() -> None:
        client = store.async_client()
        writer = LedgerWriter(client, campaign_id, provider="local")
        failed = record(
            MessageState.FAILED, attempts=5, error_class="SMTP connection error", detail="down"
        )
        for seq in range(n):
            await writer.put(seq, failed)
        await client.aclose()

    asyncio.run(go())


def test_retry_failed_after_expires_at_is_refused_and_keeps_the_failures(
    redis_client: redis.Redis,
) -> None:
    """Queued again after ``expires_at``, the failed messages could only end ``expired``:
    retry-failed would have answered "retried" and erased what went wrong with them."""
    smtp_provider(redis_client, 2525)
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    request = CampaignRequest.model_validate(
        campaign_body("rf-late", 3, expires_at=expires_at.isoformat())
    )
    enqueued: list[tuple[str, int]] = []
    campaigns.create_campaign(request, client=redis_client, enqueue=lambda c, b: None)
    _fail_all("rf-late", 3)
    assert campaign_reads.get_status("rf-late", redis_client).value == "completed"
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.1)

    with pytest.raises(campaigns.CampaignStateError) as refused:
        lifecycle.retry_failed(
            "rf-late", client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
        )
    assert refused.value.field == "expires_at" and "expired at" in str(refused.value)
    summary = campaign_reads.campaign_summary("rf-late", redis_client)
    assert (summary["status"], summary["failed"], summary["queued"]) == ("completed", 3, 0)
    items, _ = message_pages.messages_page("rf-late", client=redis_client)
    assert {(m["status"], m["error_class"]) for m in items} == {("failed", "SMTP connection error")}
    assert enqueued == []


def test_times_need_a_zone_and_a_past_send_at_starts_at_once(redis_client: redis.Redis) -> None:
    """README: ISO 8601 with a zone or Unix seconds; a naive time is refused."""
    for naive in ("2030-11-23T10:00:00", "2030-11-23"):
        with pytest.raises(campaigns.CampaignError) as refused:
            campaigns.create_from_task(campaign_body("tz-naive", 1, send_at=naive), None)
        assert refused.value.field == "send_at" and "timezone" in str(refused.value)
    india = CampaignRequest.model_validate(
        campaign_body("x", 1, send_at="2030-11-23T10:00:00+05:30")
    )
    utc = CampaignRequest.model_validate(campaign_body("x", 1, send_at="2030-11-23T04:30:00Z"))
    unix = CampaignRequest.model_validate(campaign_body("x", 1, send_at=1921638600))
    assert india.send_at == utc.send_at == unix.send_at

    smtp_provider(redis_client, 2525)
    batches: list[tuple[str, int]] = []
    past = campaign_body("tz-past", 2, send_at="2026-01-01T10:00:00+05:30")
    campaigns.create_campaign(
        CampaignRequest.model_validate(past),
        client=redis_client,
        enqueue=lambda c, b: batches.append((c, b)),
    )
    assert campaign_reads.get_status("tz-past", redis_client).value == "running"
    assert batches == [("tz-past", 0)]


def test_a_scheduled_campaign_that_cannot_start_is_paused_and_holds_up_no_other(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its content no longer loads (an upgrade changed a rule): the campaigns due after it
    still start, and it waits, paused with the reason, instead of failing every tick."""
    smtp_provider(redis_client, 2525)
    send_at = datetime.now(UTC) + timedelta(seconds=AHEAD)
    schedule(redis_client, "rel-bad", 1, send_at)
    schedule(redis_client, "rel-good", 1, send_at + timedelta(milliseconds=1))
    redis_client.hset(store.campaign_key("rel-bad"), "content", "{}")
    held = held_starts(monkeypatch)
    send_at_reached(monkeypatch)
    assert tasks.release_scheduled() == 1
    assert held == [("rel-good", 0)]
    status, reason = redis_client.hmget(store.campaign_key("rel-bad"), ["status", "reason"])
    assert status == "paused" and "could not start" in str(reason)
    assert redis_client.zcard(store.SCHEDULED_ZSET) == 0


def test_a_repeat_after_expires_at_is_answered_as_a_repeat(redis_client: redis.Redis) -> None:
    """A task redelivered (or a request retried) after the campaign's expires_at: the
    campaign it created is answered again, not refused; a new campaign with a past
    expires_at is still refused naming it."""
    smtp_provider(redis_client, 2525)
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    body = {"id": "late-1", "provider": "local", "subject": "s", "html": "h",
            "expires_at": expires_at.isoformat(), "draft": True}  # fmt: skip
    create = campaigns.create_campaign
    assert create(CampaignRequest.model_validate(body), client=redis_client)[1]
    while datetime.now(UTC) <= expires_at:
        time.sleep(0.1)
    again = create(CampaignRequest.model_validate(body), client=redis_client)
    assert again == ("late-1", False)
    with pytest.raises(campaigns.CampaignError) as refused:
        create(CampaignRequest.model_validate({**body, "id": "late-2"}), client=redis_client)
    assert (refused.value.field, str(refused.value)) == ("expires_at", "must be in the future")


def test_a_repeat_giving_the_same_instants_in_another_zone_is_a_repeat(
    redis_client: redis.Redis,
) -> None:
    """A retried request may spell its times in another offset (a client that formats
    them in local time): the same instants are the same campaign, not "other content"."""
    smtp_provider(redis_client, 2525)
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    expires_at = send_at + timedelta(days=1)
    plus_one = timezone(timedelta(hours=1))
    body = {"id": "zones-1", "provider": "local", "subject": "s", "html": "h", "draft": True,
            "send_at": send_at.isoformat().replace("+00:00", "Z"),
            "expires_at": expires_at.isoformat()}  # fmt: skip
    create = campaigns.create_campaign
    assert create(CampaignRequest.model_validate(body), client=redis_client) == ("zones-1", True)
    again = {**body, "send_at": send_at.astimezone(plus_one).isoformat(),
             "expires_at": expires_at.astimezone(plus_one).isoformat()}  # fmt: skip
    assert create(CampaignRequest.model_validate(again), client=redis_client) == ("zones-1", False)
    # Another instant is other content.
    later = {**body, "send_at": (send_at + timedelta(minutes=1)).isoformat()}
    with pytest.raises(campaigns.CampaignConflictError):
        create(CampaignRequest.model_validate(later), client=redis_client)
