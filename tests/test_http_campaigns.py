"""Campaigns through the http kind with the real batch sender, Redis and a recording server."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, lifecycle, message_pages, store
from dispatch.ledger import parse_record
from dispatch.settings import Settings, get_settings
from providers.base import OutgoingMessage, SendOutcome
from providers.http import HttpSession
from tests.callback_support import HttpsServer
from tests.helpers import create_held, http_provider, recipients, run_batches, run_inline
from tests.http_sink import HttpSink, Reply

FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=10.0)


def _body(n: int) -> dict[str, Any]:
    return {
        "provider": "esp",
        "subject": "Hi {{ name }}",
        "html": "<p>{{ name }}</p>",
        "recipients": recipients(n),
    }


def test_503_then_200_is_retried_and_ends_sent(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        sink.script(Reply(503, b"busy"))
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(3), FAST)
        requests = sink.requests
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 3, 0)
    assert len(requests) == 2
    first, second = ({m["to"] for m in r.json()["msgs"]} for r in requests)
    assert first == second and len(first) == 3  # the whole batch again, once
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None and (rec["attempts"], rec["throttles"]) == (1, 1)  # 503: throttled


def test_429_retry_after_is_honoured(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        sink.script(Reply(429, b"slow down", headers=(("Retry-After", "2"),)))
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2), FAST)
        first, second = sink.requests
    assert second.at - first.at >= 2.0  # the provider's Retry-After, not our 0.05 s backoff
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 2


def test_throttled_tries_are_not_attempts(redis_client: redis.Redis) -> None:
    """DESIGN §7: a throttling reply slows the provider down rather than failing messages.
    Four 429s against max_attempts=2 still end sent, with the throttles counted apart."""
    settings = FAST.model_copy(update={"max_attempts": 2})
    with HttpSink() as sink:
        sink.script(*[Reply(429, b"slow down")] * 4)
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2), settings)
        tos = [m["to"] for r in sink.requests for m in r.json()["msgs"]]
    assert sorted(tos) == ["user0@example.com"] * 5 + ["user1@example.com"] * 5
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 2, 0)
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "1"))
    assert rec is not None and (rec["attempts"], rec["throttles"]) == (1, 4)
    page, _ = message_pages.messages_page(cid, client=redis_client)
    assert [(m["attempts"], m["throttles"]) for m in page] == [(1, 4), (1, 4)]


def test_a_parked_retry_says_when_it_is_due(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        sink.script(Reply(429, b"slow down", headers=(("Retry-After", "600"),)))
        http_provider(redis_client, sink.url)
        cid, batches = create_held(redis_client, _body(1))
        before = time.time()
        run_batches(batches, FAST, rounds=1)
    (message,), _ = message_pages.messages_page(cid, client=redis_client)
    assert (message["status"], message["throttles"]) == ("retry", 1)
    assert before + 600 <= message["next_attempt_at"] <= time.time() + 600
    assert message_pages.messages_page(cid, client=redis_client, status="queued")[0] == []


def test_a_provider_that_throttles_for_ever_fails_the_message_at_max_throttles(
    redis_client: redis.Redis,
) -> None:
    settings = FAST.model_copy(update={"max_attempts": 2, "max_throttles": 3})
    with HttpSink(default=Reply(503, b"over capacity")) as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2), settings)
        tos = [m["to"] for r in sink.requests for m in r.json()["msgs"]]
    assert sorted(tos) == ["user0@example.com"] * 3 + ["user1@example.com"] * 3
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"]) == (0, 2)
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None and rec["detail"].startswith("gave up after 3 throttled tries: ")
    assert (rec["attempts"], rec["throttles"]) == (0, 3)


def test_other_transient_failures_still_count_toward_max_attempts(
    redis_client: redis.Redis,
) -> None:
    settings = FAST.model_copy(update={"max_attempts": 2})
    with HttpSink(default=Reply(500, b"oops")) as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2), settings)
        tos = [m["to"] for r in sink.requests for m in r.json()["msgs"]]
    assert sorted(tos) == ["user0@example.com"] * 2 + ["user1@example.com"] * 2
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None and rec["state"] == "failed"
    assert rec["detail"].startswith("gave up after 2 attempts: ")


def test_an_infinite_retry_after_does_not_park_the_campaign_for_ever(
    redis_client: redis.Redis,
) -> None:
    with HttpSink() as sink:
        sink.script(Reply(429, b"slow down", headers=(("Retry-After", "inf"),)))
        http_provider(redis_client, sink.url)
        cid, results = run_inline(redis_client, _body(2), FAST)
        assert len(sink.requests) == 2
    assert all(r.retry_at is None or r.retry_at < 1e11 for r in results)
    assert campaign_reads.campaign_summary(cid, redis_client)["sent"] == 2


def test_400_fails_with_dispatch_failed_and_the_status(redis_client: redis.Redis) -> None:
    with HttpSink(default=Reply(400, b'{"error": "invalid sender"}')) as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2), FAST)
        assert len(sink.requests) == 1  # permanent: never retried
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"]) == (0, 2)
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "1"))
    assert rec is not None
    assert rec["error_class"] == "Dispatch failed"
    assert "400" in rec["detail"] and "invalid sender" in rec["detail"]


def test_2500_recipients_in_three_requests_each_once(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(2500), FAST)
        sizes = [len(r.json()["msgs"]) for r in sink.requests]
        tos = [m["to"] for r in sink.requests for m in r.json()["msgs"]]
    assert sorted(sizes) == [500, 1000, 1000]
    assert len(tos) == len(set(tos)) == 2500
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 2500


def test_an_address_that_cannot_be_sent_fails_alone(redis_client: redis.Redis) -> None:
    """The batch is claimed by its load; the bad address fails at build, the rest go."""
    body = _body(3)
    body["recipients"][1]["email"] = "two@@example.com"
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, body, FAST)
        assert len(sink.requests) == 1
        assert [m["to"] for m in sink.requests[0].json()["msgs"]] == [
            "user0@example.com",
            "user2@example.com",
        ]
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"], counters["queued"]) == (2, 1, 0)
    failed = parse_record(redis_client.hget(store.ledger_key(cid), "1"))
    assert failed is not None and failed["error_class"] == "SMTP invalid email ID"


def test_a_refused_certificate_pauses_the_campaign(redis_client: redis.Redis) -> None:
    """The endpoint's certificate is not trusted: a person must act (as with SMTP), so the
    campaign pauses with the reason instead of retrying and then failing everyone."""
    with HttpsServer() as server:
        http_provider(redis_client, f"https://{server.authority}")
        cid, _ = run_inline(redis_client, _body(3), FAST)
        assert server.paths == []
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith("Dispatch failed: TLS failed with 127.0.0.1")
    assert "CERTIFICATE_VERIFY_FAILED" in summary["reason"]
    assert (summary["failed"], summary["sent"], summary["queued"]) == (0, 0, 3)


def test_a_key_refused_with_403_half_way_pauses_with_the_rest_queued(
    redis_client: redis.Redis,
) -> None:
    """The ESP takes the first messages, then answers 403 (the key revoked, the sender's
    verification withdrawn): every further message would be refused the same way, so the
    campaign pauses with the reason instead of failing the rest of its list (the failure
    breaker only acts while nothing was sent). Resumed after the fix, the rest goes."""
    reason = paused_half_way(
        redis_client, Reply(403, b"API key does not have mail.send permission")
    )
    assert reason == (
        "Dispatch failed: not allowed: HTTP 403: API key does not have mail.send permission"
    )


def paused_half_way(r: redis.Redis, refusal: Reply) -> str:
    """The pause reason of a campaign of five, one per request, whose third request the
    ESP answers ``refusal``, the two before it and any after it taken: paused with the
    three left queued, resumed, each sent once, none failed."""
    with HttpSink() as sink:
        sink.script(Reply(), Reply(), refusal)
        http_provider(r, sink.url, batch=False, max_connections=1)
        cid, batches = create_held(r, _body(5))
        run_batches(batches, FAST)
        summary = campaign_reads.campaign_summary(cid, r)
        assert (summary["status"], summary["sent"], summary["failed"]) == ("paused", 2, 0)
        assert summary["queued"] == 3
        lifecycle.resume(cid, client=r, enqueue=lambda c, b: None)
        run_batches(batches, FAST)
        assert len(sink.requests) == 6  # the refused one, then the three left
        assert len({q.json()["msgs"][0]["to"] for q in sink.requests}) == 5
    resumed = campaign_reads.campaign_summary(cid, r)
    assert (resumed["status"], resumed["sent"], resumed["failed"]) == ("completed", 5, 0)
    return str(summary["reason"])


def test_an_adapter_that_raises_loses_only_its_chunk(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception no adapter should raise (a bug) ends that request's messages
    ``unknown`` (they may have gone out: never resent) and the batch goes on."""
    real_send = HttpSession.send

    async def send(self: HttpSession, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
        if any(m.to == "user2@example.com" for m in messages):
            raise UnicodeDecodeError("ascii", b"\xc3", 0, 1, "a bug")
        return await real_send(self, messages)

    monkeypatch.setattr(HttpSession, "send", send)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch_size=2)
        cid, _ = run_inline(redis_client, _body(6), FAST)
        got = sorted(m["to"] for r in sink.requests for m in r.json()["msgs"])
    assert got == [f"user{i}@example.com" for i in (0, 1, 4, 5)]
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["unknown"]) == ("completed", 4, 2)
    for seq in ("2", "3"):
        rec = parse_record(redis_client.hget(store.ledger_key(cid), seq))
        assert rec is not None and rec["state"] == "unknown"
        assert rec["detail"].startswith("internal error: UnicodeDecodeError")


def test_a_message_that_fails_to_build_unforeseen_fails_alone(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch.batch_campaign import BatchCampaign

    real_build = BatchCampaign.build

    def build(self: BatchCampaign, item: Any) -> OutgoingMessage:
        if item.email == "user1@example.com":
            raise KeyError("a bug")
        return real_build(self, item)

    monkeypatch.setattr(BatchCampaign, "build", build)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(3), FAST)
        assert len(sink.requests) == 1
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 2, 1)
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "1"))
    assert rec is not None and rec["error_class"] == "Invalid message"
    assert rec["detail"] == "internal error: KeyError: 'a bug'"


def test_a_campaign_whose_first_messages_all_fail_pauses_with_the_rest_queued(
    redis_client: redis.Redis,
) -> None:
    """An ESP that refuses every payload (a wrong field, a sender it does not know) failed
    the whole list; now the campaign pauses after the first failures, and after the fix
    a resume sends the rest."""
    settings = Settings(pause_after_failures=10)
    with HttpSink(default=Reply(400, b'{"error": "unknown sender"}')) as sink:
        http_provider(redis_client, sink.url, batch_size=5, max_connections=1)
        cid, batches = create_held(redis_client, _body(40))
        run_batches(batches, settings)
        assert len(sink.requests) == 2  # two chunks of 5 failed: the breaker's 10
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert (summary["status"], summary["failed"], summary["sent"]) == ("paused", 10, 0)
        assert summary["queued"] == 30
        reason = summary["reason"]
        assert "the first 10 messages failed" in reason and "unknown sender" in reason
        sink.script(*[Reply(200, b"{}")] * 6)  # fixed at the ESP
        lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: None)
        run_batches(batches, settings)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["failed"], summary["sent"]) == ("completed", 10, 30)


def test_the_breaker_counts_the_failures_of_all_the_campaigns_batches(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 6 against a breaker of 10: no single batch run reaches 10, but the
    campaign does in its second batch (with several batches at once, each run alone let
    up to its own 100 fail). A resume counts afresh."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "6")
    get_settings.cache_clear()
    settings = Settings(pause_after_failures=10)
    try:
        with HttpSink(default=Reply(400, b'{"error": "unknown sender"}')) as sink:
            http_provider(redis_client, sink.url, max_connections=1)
            cid, batches = create_held(redis_client, _body(30))
            assert len(batches) == 5
            run_batches(batches, settings)
            summary = campaign_reads.campaign_summary(cid, redis_client)
            assert (summary["status"], summary["failed"], summary["queued"]) == ("paused", 12, 18)
            assert "the first 12 messages failed" in summary["reason"]
            lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: None)
            run_batches(batches, settings)  # still refused: 12 more fail, then it pauses
            summary = campaign_reads.campaign_summary(cid, redis_client)
            assert (summary["status"], summary["failed"], summary["queued"]) == ("paused", 24, 6)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("first_sent", [True, False])
def test_the_breaker_leaves_alone_a_campaign_that_sends_or_whose_recipients_are_at_fault(
    redis_client: redis.Redis, first_sent: bool
) -> None:
    settings = Settings(pause_after_failures=3)
    body = _body(12)
    if not first_sent:  # twelve addresses that cannot be sent: the list's fault
        for person in body["recipients"]:
            person["email"] = person["email"].replace("@", "@@")
    replies = [Reply(200, b"{}")] + [Reply(400, b"no")] * 5 if first_sent else []
    with HttpSink(default=Reply(400, b"no")) as sink:
        sink.script(*replies)
        http_provider(redis_client, sink.url, batch_size=2)
        cid, _ = run_inline(redis_client, body, settings)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "completed"
    assert (summary["sent"], summary["failed"]) == ((2, 10) if first_sent else (0, 12))


def test_a_slow_chunk_to_build_keeps_its_lease(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk of an HTTP batch holds up to 1000 messages and each may render for up to
    the template limit: building it gives the event loop a turn now and then, so the
    lease is renewed meanwhile (building 40 messages of 40 ms each held the loop past a
    600 ms lease, which was then lost: the batch stopped with nothing sent)."""
    from dispatch.batch_campaign import BatchCampaign

    real_build = BatchCampaign.build

    def slow_build(self: BatchCampaign, item: Any) -> OutgoingMessage:
        time.sleep(0.04)  # a heavy template, rendering
        return real_build(self, item)

    monkeypatch.setattr(BatchCampaign, "build", slow_build)
    settings = Settings(lease_ttl_ms=600, retry_base_seconds=0.05)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch_size=40, max_connections=1)
        cid, batches = create_held(redis_client, _body(40))
        (result,) = run_batches(batches, settings, rounds=1)
        assert len(sink.requests) == 1
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"]) == ("completed", 40), (result, summary)
