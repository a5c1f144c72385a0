"""A message waiting for a retry goes out no sooner than it is due, whichever run sends
it: the provider's ``Retry-After`` is honoured (DESIGN §7)."""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from dispatch import campaign_reads, store
from dispatch.ledger import parse_record, record
from dispatch.limits import ConnectionSlots
from dispatch.models import MessageState
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import create_held, http_provider
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.test_http_campaigns import _body as esp_campaign
from tests.test_review_g22_retry_together import run_as_the_task_does


def test_a_retry_due_soon_after_the_next_run_starts_waits_for_its_retry_after(
    redis_client: redis.Redis,
) -> None:
    """Two messages, each told 429 with its own Retry-After (2 s and 3 s), both longer
    than the waits a run makes itself: the batch comes back for the first. The second
    is then due in 1 s, within a run's own waits: it was sent at once with the first,
    a second before its Retry-After, and met another 429 from a provider that meant it."""
    settings = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=1.5)
    arrived: dict[str, list[float]] = {}
    lock = threading.Lock()

    def answer(request: RecordedRequest) -> Reply:
        to = request.json()["msgs"][0]["to"]
        with lock:
            arrived.setdefault(to, []).append(time.time())
            first = len(arrived[to]) == 1
        if first:
            hint = "2" if to == "user0@example.com" else "3"
            return Reply(429, b"slow down", headers=(("Retry-After", hint),))
        return Reply(200, b"{}")

    with HttpSink(answer=answer) as sink:
        http_provider(redis_client, sink.url, batch=False, max_connections=2)
        campaign_id, _ = create_held(redis_client, esp_campaign(2))
        run_as_the_task_does(campaign_id, settings)
    for to, times in arrived.items():
        hint = 2.0 if to == "user0@example.com" else 3.0
        assert len(times) == 2, (to, times)
        # (time.time() whole seconds of the hint apart, less the clock's granularity)
        assert times[1] - times[0] >= hint - 0.01, (to, times[1] - times[0])
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["queued"]) == ("completed", 2, 0)
    for seq in (0, 1):
        rec = parse_record(redis_client.hget(store.ledger_key(campaign_id), str(seq)))
        assert rec is not None and (rec["attempts"], rec["throttles"]) == (1, 1)


def test_a_retry_not_yet_due_in_a_run_without_a_connection_comes_back(
    redis_client: redis.Redis,
) -> None:
    """A run that loads a retry due in a moment, but gets none of its provider's
    connections (all in use elsewhere), asks to come back soon: the retry is not left
    waiting until housekeeping finds the campaign stalled. (It is due 30 s on, well after
    the 1-2 s the run asks for, however slowly the run goes.)"""
    settings = Settings(inline_retry_seconds=60.0, slot_wait_seconds=0.2)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch=False, max_connections=1)
        campaign_id, _ = create_held(redis_client, esp_campaign(1))
        due = time.time() + 30
        waiting = record(MessageState.RETRY, attempts=1, error_class="Dispatch failed",
                         detail="HTTP 500", next_at=due)  # fmt: skip
        redis_client.hset(store.ledger_key(campaign_id), "0", waiting)
        provider = parse_provider_config(
            {"nickname": "esp", "kind": "smtp", "host": "127.0.0.1", "max_connections": 1}
        )

        async def go() -> BatchResult:
            client = store.async_client()
            try:
                slots = ConnectionSlots(client, provider, ttl=60)  # another worker's
                assert await slots.acquire("elsewhere")
                try:
                    return await run_batch(campaign_id, 0, r=client, settings=settings)
                finally:
                    await slots.release("elsewhere")
            finally:
                await client.aclose()

        result = asyncio.run(go())
        assert sink.requests == []
    assert result.counts.get("deferred") == 1
    assert result.retry_at is not None and result.retry_at < due
    rec = parse_record(redis_client.hget(store.ledger_key(campaign_id), "0"))
    assert rec is not None and rec["state"] == "retry"
