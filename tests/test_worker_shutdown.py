"""A worker asked to stop (SIGTERM: compose, systemd, a deploy) hands its running batches
on instead of finishing them at the provider's pace past its supervisor's patience."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import get_settings
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer, free_port
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


def states(r: redis.Redis, campaign_id: str) -> Counter[str]:
    return Counter(
        str((parse_record(raw) or {}).get("state"))
        for raw in r.hvals(store.ledger_key(campaign_id))
    )


def test_a_stopping_worker_hands_its_batch_on_and_the_next_one_finishes_it(
    smtp: SmtpTestServer,
) -> None:
    server = RedisServer().start()
    first = WorkerProcess(server.url, concurrency=1).start()
    second = WorkerProcess(server.url, concurrency=1)
    r = redis.Redis.from_url(server.url, decode_responses=True)

    enqueue = batch_enqueuer(server.url)  # on this test's Redis

    try:
        wait_for_queues(r)
        # One batch of 200 at 20 a second: about ten seconds of sending.
        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=20)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(200)}
        campaign_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        wait_for(lambda: len(smtp.messages) >= 20, timeout=60)

        assert first.proc is not None
        first.proc.terminate()  # SIGTERM: Celery's warm shutdown
        first.proc.wait(timeout=60)
        # It stopped mid-batch: what it had not sent is queued again, nothing unknown.
        sent_by_first = campaign_reads.campaign_summary(campaign_id, r)["sent"]
        assert 20 <= sent_by_first < 200
        # ("retry": claimed for the provider's pace, given back unattempted.)
        assert set(states(r, campaign_id)) <= {"sent", "retry"}
        assert len(smtp.messages) == sent_by_first
        assert list(r.scan_iter(match=store.worker_stopping_key("*"))) == []  # cleared at exit

        second.start()
        wait_for(lambda: campaign_reads.get_status(campaign_id, r).value == "completed", timeout=90)
        assert states(r, campaign_id) == Counter({"sent": 200})
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert len(received) == 200 and max(received.values()) == 1
    finally:
        first.stop()
        second.stop()
        r.close()
        server.stop()


def test_a_batch_waiting_out_a_backoff_hands_on_without_waiting_it_out(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on the provider's port (an outage): each session's failed connect
    # is retried inside the batch after 25 to 30 s (inline retries wait up to 30 s).
    monkeypatch.setenv("DISPATCH_RETRY_BASE_SECONDS", "50")
    get_settings.cache_clear()
    smtp_provider(redis_client, free_port())
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(20)}
    campaign_id, _ = create_held(redis_client, body)
    stop_key = store.worker_stopping_key("dispatch-1@test")

    async def go() -> BatchResult:
        client = store.async_client()
        try:
            run = asyncio.create_task(run_batch(campaign_id, 0, r=client, stop_key=stop_key))
            deadline = time.monotonic() + 30
            while "retry" not in states(redis_client, campaign_id):  # backing off now
                assert time.monotonic() < deadline and not run.done()
                await asyncio.sleep(0.05)
            await client.set(stop_key, "1")  # its worker is told to stop
            # A hang guard, well inside the backoff: the batch must not wait it out.
            return await asyncio.wait_for(run, 15)
        finally:
            await client.aclose()

    try:
        result = asyncio.run(go())
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    # Handed on, or parked for a later run (a backoff past the 30 s waited inline).
    assert result.counts.get("handed_on", 0) + result.counts.get("retry_later", 0) == 20
    assert result.retry_at is not None  # enqueued again for another worker
    assert set(states(redis_client, campaign_id)) <= {"retry"}  # nothing lost or unknown


def test_a_remote_shutdown_hands_the_batch_on_too(smtp: SmtpTestServer) -> None:
    """``celery control shutdown`` (Flower's button) sends no shutdown signal; the worker
    still hands its running batch on instead of sending it out at the provider's pace."""
    from celery import Celery

    server = RedisServer().start()
    worker = WorkerProcess(server.url, concurrency=1).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    control = Celery(broker=server.url)
    try:
        wait_for_queues(r)
        # One batch of 300 at 10 a second: half a minute of sending.
        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=10)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(300)}
        campaign_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
        )
        wait_for(lambda: len(smtp.messages) >= 10, timeout=60)
        control.control.shutdown()
        assert worker.proc is not None
        worker.proc.wait(timeout=60)
        sent = campaign_reads.campaign_summary(campaign_id, r)["sent"]
        assert 10 <= sent < 300 and len(smtp.messages) == sent
        assert set(states(r, campaign_id)) <= {"sent", "retry"}  # the rest handed on
    finally:
        worker.stop()
        control.close()
        r.close()
        server.stop()
