"""Batches that start mid-page (review R25): batch sizes that do not divide a page of
1000 recipients, recipients appended in uneven chunks (each fills the last page first),
an ESP's batch size that divides neither, and a list with repeats across the chunks it
is stored in: every recipient is sent exactly once and the books balance."""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from dispatch import campaigns, recipient_append
from dispatch.models import CampaignRequest
from dispatch.settings import get_settings
from tests.helpers import create_held, http_provider, recipients, run_batches, run_inline
from tests.http_sink import HttpSink
from tests.test_invariants import FAST, check_books


def _sent_to(sink: HttpSink) -> Counter[str]:
    return Counter(m["to"] for req in sink.requests for m in req.json()["msgs"])


@pytest.mark.parametrize(("n", "size", "chunk"), [(20, 7, 3), (21, 7, 7), (22, 7, 8)])
def test_esp_chunks_across_batches_send_each_recipient_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, n: int, size: int, chunk: int
) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", str(size))
    get_settings.cache_clear()
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch_size=chunk, max_connections=2)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(n)}
        cid, _ = run_inline(redis_client, body, FAST)
        assert all(len(req.json()["msgs"]) <= chunk for req in sink.requests)
        assert _sent_to(sink) == Counter(f"user{i}@example.com" for i in range(n))
    summary = check_books(redis_client, cid)
    assert (summary["sent"], summary["status"]) == (n, "completed")


@pytest.mark.parametrize("size", [300, 7, 1000])
def test_a_draft_appended_in_uneven_chunks_sends_each_recipient_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", str(size))
    monkeypatch.setattr(recipient_append, "APPEND_CHUNK", 333)
    get_settings.cache_clear()
    people = recipients(3003)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch_size=40, max_connections=2)
        draft = {"provider": "esp", "subject": "s", "html": "h", "draft": True}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(draft), client=redis_client, enqueue=lambda c, b: None
        )
        at = 0
        for step in (7, 995, 1, 1000, 999, 1):  # each with two repeats of the first ones
            appended = recipient_append.append_recipients(
                cid, people[at : at + step] + people[:2], client=redis_client
            )
            assert appended == step
            at += step
        held: list[tuple[str, int]] = []
        batches = campaigns.start_campaign(
            cid, client=redis_client, enqueue=lambda c, b: held.append((c, b))
        )
        assert batches == -(-3003 // size)
        run_batches(held, FAST)
        assert _sent_to(sink) == Counter(f"user{i}@example.com" for i in range(3003))
    summary = check_books(redis_client, cid)
    assert (summary["sent"], summary["status"]) == (3003, "completed")


@pytest.mark.parametrize("size", [7, 3, 1000])
def test_a_list_with_repeats_across_its_stored_chunks_enqueues_each_batch_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", str(size))
    get_settings.cache_clear()
    people = recipients(40)
    listed = []
    for i, person in enumerate(people):
        listed.append(person)
        if i % 3 == 0:
            listed.append(people[i // 2])  # a repeat, in this chunk or in an earlier one
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch_size=4, max_connections=2)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": listed}
        cid, held = create_held(redis_client, body)
        assert sorted(b for _, b in held) == list(range(-(-40 // size)))
        run_batches(held, FAST)
        assert _sent_to(sink) == Counter(f"user{i}@example.com" for i in range(40))
    summary = check_books(redis_client, cid)
    assert (summary["sent"], summary["status"]) == (40, "completed")
