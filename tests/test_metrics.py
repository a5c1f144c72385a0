"""/metrics reports what every worker did, read from Redis at scrape time."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis

from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.callback_support import generic_event, nested, post, save_providers
from tests.helpers import http_provider, recipients, run_inline, smtp_provider
from tests.http_sink import HttpSink, Reply
from tests.smtp_server import SmtpTestServer


def _metric(text: str, name: str, **labels: str) -> float:
    """A sample's value; its labels in any order."""
    wanted = sorted(f'{k}="{v}"' for k, v in labels.items())
    for match in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.MULTILINE):
        if sorted(match.group(1).split(",")) == wanted:
            return float(match.group(2))
    raise AssertionError(f"{name}{{{','.join(wanted)}}} not in /metrics")


def _smtp_campaign_metrics(
    api_server: ApiServer, redis_client: redis.Redis, rcpt: Callable[[str], str | None]
) -> str:
    """/metrics after 4 recipients went through a local SMTP server answering ``rcpt``."""
    with SmtpTestServer() as smtp:
        smtp.handler.rcpt_reply = rcpt
        smtp_provider(redis_client, smtp.port)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4)}
        run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
    with api_server.client() as http:
        return str(http.get("/metrics").text)


def test_messages_by_provider_and_outcome(api_server: ApiServer, redis_client: redis.Redis) -> None:
    text = _smtp_campaign_metrics(
        api_server,
        redis_client,
        lambda a: "550 5.1.1 unknown" if a.startswith("user1@") else None,
    )
    assert _metric(text, "dispatch_messages_total", outcome="sent", provider="local") == 3
    assert _metric(text, "dispatch_messages_total", outcome="failed", provider="local") == 1
    assert _metric(text, "dispatch_queue_depth", queue="sends") >= 0


def test_send_latency_and_throttles_of_an_smtp_provider(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Each message's hand-over is timed (retries too); a throttling reply counts once."""
    throttled: set[str] = set()

    def rcpt(address: str) -> str | None:
        if address.startswith("user1@") and address not in throttled:
            throttled.add(address)
            return "451 4.7.1 slow down"
        return None

    text = _smtp_campaign_metrics(api_server, redis_client, rcpt)
    assert _metric(text, "dispatch_messages_total", outcome="sent", provider="local") == 4
    assert _metric(text, "dispatch_throttles_total", provider="local") == 1
    # 4 messages and the throttled one's first try; all well under 10 s on loopback.
    assert _metric(text, "dispatch_send_seconds_count", provider="local") == 5
    assert _metric(text, "dispatch_send_seconds_bucket", provider="local", le="+Inf") == 5
    assert _metric(text, "dispatch_send_seconds_bucket", provider="local", le="10") == 5
    assert _metric(text, "dispatch_send_seconds_sum", provider="local") > 0


def test_a_throttled_http_batch_counts_one_throttle(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink:
        sink.script(Reply(429, headers=(("Retry-After", "0"),)))
        http_provider(redis_client, sink.url)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(30)}
        run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
        assert len(sink.requests) == 2  # the refused batch, then the same batch again
    with api_server.client() as http:
        text = http.get("/metrics").text
    assert _metric(text, "dispatch_messages_total", outcome="sent", provider="esp") == 30
    assert _metric(text, "dispatch_throttles_total", provider="esp") == 1
    # Each of the 30 messages was handed over twice, in one request each time.
    assert _metric(text, "dispatch_send_seconds_count", provider="esp") == 60


def test_send_stats_buckets_are_cumulative_and_bounds_inclusive(redis_client: redis.Redis) -> None:
    import asyncio

    from dispatch import store
    from dispatch.send_stats import SendStats, histograms

    stats = SendStats()
    stats.observe(0.005, 2)  # on a bound: counted under it
    stats.observe(0.3, 1)
    stats.observe(99.0, 1)  # beyond the last bound

    async def flush() -> None:
        r = store.async_client()
        try:
            for _ in range(2):  # counted once: adding starts again from zero
                pipe = r.pipeline(transaction=False)
                stats.add_to(pipe, "p")
                await pipe.execute()
        finally:
            await r.aclose()

    asyncio.run(flush())
    figures = histograms(redis_client.hgetall(store.SEND_STATS_HASH))["p"]
    buckets, seconds, throttles, deferred = figures[:4]
    cumulative = dict(buckets)
    assert (cumulative["0.005"], cumulative["0.25"], cumulative["0.5"]) == (2, 2, 3)
    assert (cumulative["30"], cumulative["+Inf"]) == (3, 4)
    assert seconds == pytest.approx(0.005 * 2 + 0.3 + 99.0) and throttles == deferred == 0


def test_batches_deferred_for_want_of_a_connection(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A batch that found its provider's only connection slot taken went back to the
    broker: /metrics counts it for that provider."""
    import time

    from dispatch import store
    from tests.helpers import create_held, run_batches

    smtp_provider(redis_client, 9, max_connections=1)  # nothing listens: never reached
    redis_client.zadd(f"{store.PREFIX}:connections:local", {"elsewhere": time.time() + 60})
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    _, batches = create_held(redis_client, body)
    (result,) = run_batches(batches, Settings(slot_wait_seconds=0.2), rounds=1)
    assert result.counts == {"deferred": 3}
    with api_server.client() as http:
        text = str(http.get("/metrics").text)
    assert _metric(text, "dispatch_batches_deferred_total", provider="local") == 1


def _callback_events(text: str, provider: str, kind: str) -> float:
    try:
        return _metric(text, "dispatch_callback_events_total", provider=provider, type=kind)
    except AssertionError:
        return 0.0  # not counted yet in this process


def test_callback_events_by_provider_and_type(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Two providers of one kind (smtp) are counted apart, by their nicknames."""
    paths = save_providers(
        redis_client, gen2={"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none"}
    )
    meta = "a@example.com|1|c-metrics|20241104|0|default|0|"
    bounce = generic_event("hard_bounce", "a@example.com", meta)
    wanted = [("gen", "delivered"), ("gen", "invalid"), ("gen2", "hard_bounce")]
    with api_server.client() as http:
        before = [_callback_events(http.get("/metrics").text, *label) for label in wanted]
        post(http, paths["gen"], nested(generic_event("delivered", "a@example.com", meta),
                                        {"type": "spam", "email": "a@example.com"}))  # fmt: skip
        post(http, paths["gen2"], nested(bounce))
        text = http.get("/metrics").text
    after = [_callback_events(text, *label) for label in wanted]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert 'dispatch_callback_events_total{kind="smtp"' not in text
