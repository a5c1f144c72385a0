"""Loops that work through a campaign in windows, driven past one window (review R25):
each constant made small, the sizes around it (one more, an exact multiple, one less),
so that a second window and a partly filled last one are exercised as a big campaign
exercises them. The code reads each constant when it runs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from dispatch import effects, lifecycle, message_pages, store
from dispatch.ledger import parse_record
from dispatch.models import MessageState
from providers.callbacks import EventType
from tests.helpers import create_held, recipients, smtp_provider
from tests.test_invariants import _event, check_books
from tests.test_lifecycle_races import put


def _campaign(r: redis.Redis, n: int, batch_size: int = 7) -> str:
    smtp_provider(r, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
    cid = create_held(r, body)[0]
    r.hset(store.campaign_key(cid), "batch_size", batch_size)  # as if the setting said so
    return cid


def _states(r: redis.Redis, cid: str, n: int) -> Counter[str]:
    raw = r.hmget(store.ledger_key(cid), [str(s) for s in range(n)])
    return Counter(((parse_record(x) or {}).get("state", "queued")) for x in raw)


@pytest.mark.parametrize("n", [5, 10, 11, 9])
def test_a_cancel_settles_every_window(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    monkeypatch.setattr(lifecycle, "SETTLE_WINDOW", 5)
    cid = _campaign(redis_client, n)
    put(cid, {0: MessageState.SENT, n - 1: MessageState.SENT})
    summary = lifecycle.cancel(cid, client=redis_client, enqueue=lambda c, b: None)
    assert summary["cancelled"] == n - 2 and summary["queued"] == 0
    assert _states(redis_client, cid, n) == {"sent": 2, "cancelled": n - 2}
    check_books(redis_client, cid)


@pytest.mark.parametrize("n", [3, 6, 7, 8])
def test_retry_failed_queues_the_failures_of_every_window(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    monkeypatch.setattr(lifecycle, "WINDOW", 3)
    cid = _campaign(redis_client, n, batch_size=2)
    put(cid, {seq: MessageState.FAILED if seq % 2 else MessageState.SENT for seq in range(n)})
    enqueued: list[int] = []
    report, summary = lifecycle.retry_failed(
        cid, client=redis_client, enqueue=lambda c, b: enqueued.append(b)
    )
    failed = [seq for seq in range(n) if seq % 2]
    assert report.retried == len(failed) and summary["queued"] == len(failed)
    assert report.batches == {seq // 2 for seq in failed}
    assert _states(redis_client, cid, n) == {"sent": n - len(failed), "retry": len(failed)}


def _walk(cid: str, r: redis.Redis, **filters: Any) -> list[int]:
    seen: list[int] = []
    cursor: int | None = 0
    while cursor is not None:
        items, cursor = message_pages.messages_page(cid, cursor=cursor, client=r, **filters)
        seen += [m["seq"] for m in items]
    return seen


@pytest.mark.parametrize("limit", [3, 7, 8, 1000])
def test_message_pages_list_each_message_once_whatever_the_window(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    monkeypatch.setattr(message_pages, "WINDOW", 7)
    monkeypatch.setattr(message_pages, "PAGE_SCAN_LIMIT", 50)
    n = 1013  # two recipient pages, the last partly filled
    cid = _campaign(redis_client, n)
    failed = {seq for seq in range(n) if seq % 7 == 3 or 995 <= seq <= 1004}
    put(cid, dict.fromkeys(failed, MessageState.FAILED))
    assert _walk(cid, redis_client, limit=limit) == list(range(n))
    assert _walk(cid, redis_client, limit=limit, status="failed") == sorted(failed)
    queued = sorted(set(range(n)) - failed)
    assert _walk(cid, redis_client, limit=limit, status="queued") == queued
    clicked = [0, 6, 7, 8, 13, 14, 15, 16, 999, 1000, 1001, 1012]  # edges of windows, bytes
    for seq in clicked:
        redis_client.setbit(store.callback_bits_key(cid, "clicked"), seq, 1)
    assert _walk(cid, redis_client, limit=limit, callback="clicked") == clicked
    both = [seq for seq in clicked if seq in failed]
    assert _walk(cid, redis_client, limit=limit, callback="clicked", status="failed") == both


@pytest.mark.parametrize("n", [4, 8, 9, 7])
def test_callback_events_apply_in_every_chunk_and_the_batch_leaves_the_inbox_after_the_last(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    monkeypatch.setattr(effects, "CHUNK", 4)
    cid = _campaign(redis_client, n)
    put(cid, dict.fromkeys(range(n), MessageState.SENT))
    metas = [m["meta"] for m in message_pages.messages_page(cid, client=redis_client)[0]]
    assert all(metas) and len(metas) == n
    events = [_event(EventType.DELIVERED, meta, 0) for meta in metas]
    events += [_event(EventType.DELIVERED, metas[-1], 0)]  # a redelivery, in another chunk
    events += [_event(EventType.CLICKED, meta, 1) for meta in metas[::3]]
    redis_client.hset(store.CALLBACK_INBOX_HASH, "b1", "{}")
    new = effects.apply_events(
        events, provider="local", kind="smtp", batch_id="b1", client=redis_client
    )
    assert new == len(events) - 1
    summary = check_books(redis_client, cid)
    assert (summary["delivered"], summary["clicked"]) == (n, len(metas[::3]))
    assert not redis_client.hexists(store.CALLBACK_INBOX_HASH, "b1")


@pytest.mark.parametrize("n", [1000, 1001, 2000, 2001, 4001])
def test_a_ledger_write_past_one_command_piece_writes_and_counts_every_message(
    redis_client: redis.Redis, n: int
) -> None:
    """The ledger's script reads and writes in pieces of 2000 arguments (a thousand
    messages' records): a write of more messages (retry-failed's, a settle) crosses it."""
    cid = _campaign(redis_client, n)
    half = {seq: MessageState.SENT if seq % 3 else MessageState.FAILED for seq in range(n)}
    put(cid, half)  # read nothing ("s" groups)
    put(cid, {seq: MessageState.CANCELLED for seq in range(n) if seq % 2})  # reads every one
    summary = check_books(redis_client, cid)
    sent = sum(1 for seq in range(n) if seq % 3 and not seq % 2)
    assert (summary["cancelled"], summary["sent"]) == (n // 2, sent)
    assert summary["failed"] == n - n // 2 - sent
