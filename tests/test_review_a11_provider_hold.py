"""A throttling reply slows the whole provider down (DESIGN §7), not only the session that
got it: every session of every worker holds off, then sending resumes (review A11)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiosmtpd.smtp import Envelope
from celery import Celery

from dispatch import campaign_reads, campaigns, limits, store
from dispatch.limits import ProviderLimiter
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings, get_settings
from providers.config import parse_provider_config
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import Handler, SmtpTestServer
from tests.test_limits_workers import Workers
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

HOLD = f"{store.PREFIX}:hold:local"
CHUNK = 4  # an SMTP session's chunk: what another session may have on the wire


def _provider(**fields: Any) -> Any:
    data = {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    return parse_provider_config(data)


def _run(redis_url: str, work: Any) -> Any:
    async def go() -> Any:
        client = aioredis.from_url(redis_url, decode_responses=True)
        try:
            return await work(client)
        finally:
            await client.aclose()

    limits._seen_holds.clear()  # (a process of its own)
    return asyncio.run(go())


# -- the limiter on real Redis ---------------------------------------------------------------


@pytest.mark.parametrize("fields", [{"rate_per_second": 1000}, {"daily_quota": 100}, {}])
def test_a_hold_delays_the_grants_of_every_limiter_of_the_provider(
    redis_client: redis.Redis, redis_server: RedisServer, fields: dict[str, Any]
) -> None:
    """One limiter (one worker's session) holds the provider for 5 s: another limiter of
    it (another worker, a fresh process) is told to wait, whether the provider has a
    pace, only quotas, or no limit at all; another provider is not held."""

    async def work(client: aioredis.Redis) -> tuple[float, float, float]:
        throttled = ProviderLimiter(client, _provider(**fields))
        hold = await throttled.hold(5.0, 30.0)
        left = await client.pttl(HOLD) / 1000
        limits._seen_holds.clear()  # the other worker has not seen it
        other = await ProviderLimiter(client, _provider(**fields)).take_some(CHUNK)
        free = await ProviderLimiter(client, _provider(nickname="other", **fields)).take(1)
        assert (hold.seconds, hold.began) == (5.0, True)
        return left, other.wait, free

    left, wait, free = _run(redis_server.url, work)
    assert 0 < wait <= left + 0.001 and left <= 5.0  # (PTTL is in ms)
    assert free == 0.0


def test_a_paced_provider_resumes_at_its_pace_after_the_hold(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """At 10 a second, grants asked during a hold go one after another from its end, not
    all at once: the pace goes on from there (on Redis's clock)."""

    async def work(client: aioredis.Redis) -> tuple[float, list[float]]:
        limiter = ProviderLimiter(client, _provider(rate_per_second=10))
        await limiter.hold(10.0, 30.0)
        seconds, micros = await client.time()
        ends = seconds + micros / 1e6 + await client.pttl(HOLD) / 1000
        return ends, [await limiter.take(1) for _ in range(3)]

    ends, waits = _run(redis_server.url, work)
    assert all(w > 0 for w in waits)
    pace = float(redis_client.get(f"{store.PREFIX}:pace:local") or 0)
    assert pace == pytest.approx(ends + 0.3, abs=0.01)  # three sends from the hold's end


def test_holds_do_not_grow_by_themselves_and_keep_to_the_bound(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """Throttles one after another each hold the provider for their own delay, at most the
    bound: a busy provider's sporadic throttles never add up to holds of the bound (a
    doubling hold stopped a campaign through a server that throttled 4 % of replies)."""

    async def work(client: aioredis.Redis) -> list[tuple[float, bool]]:
        limiter = ProviderLimiter(client, _provider())
        seen = []
        for _ in range(5):
            seen.append(await limiter.hold(1.0, 6.0))
            # A reply to a send that left before the hold: the hold is not longer.
            seen.append(await limiter.hold(1.0, 6.0))
            await client.delete(HOLD)  # the hold ends; the next throttle comes at once
        seen.append(await limiter.hold(9.0, 6.0))
        return [(h.seconds, h.began) for h in seen]

    seen = _run(redis_server.url, work)
    assert [s for s, began in seen if began] == [1.0] * 5 + [6.0]
    again = [s for s, began in seen if not began]
    assert len(again) == 5 and all(0 < s <= 1.0 for s in again)


def test_a_longer_delay_while_held_lengthens_the_hold_and_no_bound_means_no_hold(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    async def work(client: aioredis.Redis) -> tuple[float, float, float]:
        limiter = ProviderLimiter(client, _provider())
        await limiter.hold(1.0, 30.0)
        longer = await limiter.hold(8.0, 30.0)
        assert not longer.began
        left = await client.pttl(HOLD)
        await client.delete(HOLD)
        none = await limiter.hold(5.0, 0.0)  # DISPATCH_INLINE_RETRY_SECONDS=0
        return longer.seconds, left / 1000, none.seconds

    longer, left, none = _run(redis_server.url, work)
    assert longer == 8.0 and 1.0 < left <= 8.0
    assert none == 0.0 and not redis_client.exists(HOLD)


# -- a real server, real workers -------------------------------------------------------------


class ThrottleOnce:
    """The SMTP server's DATA reply: once two connections are open (two sessions send),
    the next message gets a throttling ``451`` (a ``421`` on a connection that answered
    before is read as the server's cap of messages a connection, not a throttle: the
    adapter reconnects at once); every other is taken. For each one taken: whether the
    provider was held (its hold in Redis) at that moment, and whether it came after the
    throttle."""

    def __init__(self, r: redis.Redis, handler: Handler, sessions: int = 2) -> None:
        self.r = r
        self.handler = handler
        self.sessions = sessions
        self.throttled = False
        self.taken: list[tuple[str, bool, bool]] = []  # (recipient, held, after the throttle)
        self.lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> str | None:
        with self.lock:
            if not self.throttled and self.handler.active >= self.sessions:
                self.throttled = True
                return "451 4.7.1 Throttling: slow down"
            held = int(self.r.pttl(HOLD)) > 0
            self.taken.append((envelope.rcpt_tos[0], held, self.throttled))
            return None


class Deployment(Workers):
    """``processes`` workers of ``concurrency`` on a Redis of their own; the retry
    backoff long enough (1.5 to 3 s for a first throttle) that a provider held for it
    has much left to send after."""

    def __init__(self, processes: int, concurrency: int, **env: str) -> None:
        self.server = RedisServer().start()
        self.r = redis.Redis.from_url(self.server.url, decode_responses=True)
        env = {"DISPATCH_RETRY_BASE_SECONDS": "3", "DISPATCH_RETRY_MAX_SECONDS": "3", **env}
        self.env = env
        self.procs = [
            WorkerProcess(self.server.url, concurrency=concurrency, **env).start()
            for _ in range(processes)
        ]
        self.enqueue = batch_enqueuer(self.server.url)
        wait_for_queues(self.r)
        broker = Celery(broker=self.server.url)
        try:  # every worker takes tasks: each gets a batch
            ready = lambda: len(broker.control.ping(timeout=0.5)) >= processes  # noqa: E731
            wait_for(ready, timeout=60, interval=0.5)
        finally:
            broker.close()

    def start_campaign(self, n: int) -> str:
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
        with pytest.MonkeyPatch.context() as mp:  # cut in the workers' batches
            mp.setenv("DISPATCH_BATCH_SIZE", self.env.get("DISPATCH_BATCH_SIZE", "1000"))
            get_settings.cache_clear()
            campaign_id, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=self.r, enqueue=self.enqueue
            )
        get_settings.cache_clear()
        return campaign_id


@pytest.fixture
def two_workers() -> Iterator[Deployment]:
    """Two worker processes with one session each: the provider's two connections are
    one in each worker."""
    started = Deployment(
        2,
        1,
        DISPATCH_SESSIONS_PER_WORKER="1",
        DISPATCH_BATCH_SIZE="50",
        DISPATCH_WORKER_PREFETCH="1",  # a batch in each worker
    )
    yield started
    started.stop()


@pytest.fixture
def one_worker() -> Iterator[Deployment]:
    """One worker process whose batch sends over two sessions."""
    started = Deployment(1, 1, DISPATCH_SESSIONS_PER_WORKER="2")
    yield started
    started.stop()


def _send_with_one_throttle(deployment: Deployment, n: int, **limits_: Any) -> ThrottleOnce:
    r = deployment.r
    with SmtpTestServer() as smtp:
        replies = ThrottleOnce(r, smtp.handler)
        smtp.handler.data_reply = replies  # type: ignore[assignment]
        smtp_provider(r, smtp.port, max_connections=2, **limits_)
        campaign_id = deployment.start_campaign(n)
        status = lambda: campaign_reads.get_status(campaign_id, r).value  # noqa: E731
        wait_for(lambda: status() == "completed", timeout=90)
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert replies.throttled  # (once two sessions were sending)
    # Every recipient got exactly one message; the throttled one too, later.
    assert len(received) == n and set(received.values()) == {1}
    summary = campaign_reads.campaign_summary(campaign_id, r)
    assert (summary["sent"], summary["failed"]) == (n, 0)
    after = [t for t in replies.taken if t[2]]
    assert len(after) > CHUNK  # sending resumed (with plenty left when the hold began)
    # While it was held nothing went out, but the other session's chunk that was on the
    # wire already (granted before the hold).
    assert sum(1 for _, held, _ in replies.taken if held) <= CHUNK
    return replies


def test_a_throttle_in_one_worker_holds_the_other_worker(two_workers: Deployment) -> None:
    """A paced provider (1000 a second: the pace itself holds nothing back here), its two
    connections in two worker processes: after the 451 to one, the other worker sends
    nothing new until the provider's hold ends; then both go on, each recipient once."""
    _send_with_one_throttle(two_workers, 100, rate_per_second=1000)


def test_a_throttle_holds_the_other_sessions_of_a_provider_without_limits(
    one_worker: Deployment,
) -> None:
    """A provider with no pace and no quota: the batch's other session holds off too."""
    _send_with_one_throttle(one_worker, 100)


def test_the_hold_is_logged_once(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One line says the provider is held, for how long, with the batch's context."""
    smtp.handler.data_reply = ThrottleOnce(redis_client, smtp.handler, 1)  # type: ignore[assignment]
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(6)}
    settings = Settings(retry_base_seconds=0.2, retry_max_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_outcomes"):
        campaign_id, _ = run_inline(redis_client, body, settings)
    held = [r for r in caplog.records if "held for" in r.getMessage()]
    assert len(held) == 1
    record: Any = held[0]
    assert record.provider == "local" and record.campaign_id == campaign_id
    assert 0 < record.hold_seconds <= 0.2
    assert len(smtp.messages) == 6


def test_a_recipient_greylisted_at_rcpt_does_not_hold_the_provider(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 451 to one recipient's RCPT is about that recipient (greylisting, a mailbox
    receiving too fast): its message waits and is sent later, the provider is not held
    (a few greylisted recipients of a busy provider held every worker's sends)."""
    greylisted: list[str] = []

    def rcpt_reply(address: str) -> str | None:
        if address.startswith("user2@") and not greylisted:
            greylisted.append(address)
            return "451 4.7.1 Greylisted, please try again later"
        return None

    smtp.handler.rcpt_reply = rcpt_reply  # type: ignore[method-assign]
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(6)}
    settings = Settings(retry_base_seconds=0.2, retry_max_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_outcomes"):
        campaign_id, _ = run_inline(redis_client, body, settings)
    assert greylisted  # (the server did refuse it once)
    assert not [r for r in caplog.records if "held for" in r.getMessage()]
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == sorted(
        str(p["email"]) for p in recipients(6)
    )
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["sent"], summary["failed"]) == (6, 0)
