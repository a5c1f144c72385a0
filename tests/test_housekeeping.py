"""Beat's safety net: finish campaigns a lost task left running, restart stalled ones."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, store
from dispatch.ledger import BatchLease
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings, get_settings
from tests.helpers import (
    assert_each_sent_once,
    create_held,
    recipients,
    run_batches,
    smtp_provider,
)
from tests.smtp_server import SmtpTestServer
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


def _create(r: redis.Redis, n: int, batches: list[tuple[str, int]]) -> str:
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
    cid, held = create_held(r, body)
    batches += held
    return cid


async def _take_lease(campaign_id: str, batch: int) -> None:
    """A batch lease taken as a worker takes it (and left held: the renewer stops)."""
    r = store.async_client()
    try:
        assert await BatchLease(r, campaign_id, batch).acquire()
    finally:
        await r.aclose()


def test_a_done_campaign_left_running_is_finished(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        batches: list[tuple[str, int]] = []
        cid = _create(redis_client, 5, batches)
        run_batches(batches, Settings(retry_base_seconds=0.05))
    # The ledger write that settled the last message completed it ...
    assert campaign_reads.get_status(cid, redis_client).value == "completed"
    # ... and were that step ever lost, housekeeping completes it.
    redis_client.hset(store.campaign_key(cid), "status", "running")
    done = housekeeping.sweep(redis_client, lambda c, b: None)
    assert done["finished"] == [cid]
    assert campaign_reads.get_status(cid, redis_client).value == "completed"


def test_a_stalled_campaign_is_enqueued_again(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        lost: list[tuple[str, int]] = []
        cid = _create(redis_client, 2500, lost)  # 3 batches whose tasks are "lost"
        # Just started: left alone.
        assert housekeeping.sweep(redis_client, lambda c, b: None)["restarted"] == []
        # Started long ago and no batch ever wrote: stalled.
        redis_client.hset(store.campaign_key(cid), "started_at", str(time.time() - 10_000))
        again: list[tuple[str, int]] = []
        recent = housekeeping.sweep(redis_client, lambda c, b: again.append((c, b)))
        assert recent["restarted"] == [cid]
        assert again == lost
        # A campaign that progressed recently is left alone.
        redis_client.hset(store.campaign_key(cid), "progress_at", str(time.time()))
        assert housekeeping.sweep(redis_client, lambda c, b: None)["restarted"] == []
        run_batches(again, Settings(retry_base_seconds=0.05))
        housekeeping.sweep(redis_client, lambda c, b: None)
        assert campaign_reads.campaign_summary(cid, redis_client)["status"] == "completed"
        assert len(smtp.messages) == 2500


def test_a_long_campaign_is_watched_however_many_were_created_after_it(
    redis_client: redis.Redis,
) -> None:
    """The sweep read only the newest 1000 campaigns: one running while a thousand others
    were created (many small campaigns beside a long one) was never finished, restarted
    or judged by the reputation guard again."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        lost: list[tuple[str, int]] = []
        cid = _create(redis_client, 5, lost)
        created = float(redis_client.zscore(store.CAMPAIGNS_ZSET, cid) or 0)
        newer = {f"newer-{i}": created + 1 + i for i in range(housekeeping.RECENT_CAMPAIGNS)}
        redis_client.zadd(store.CAMPAIGNS_ZSET, newer)
        redis_client.hset(store.campaign_key(cid), "started_at", str(time.time() - 10_000))
        again: list[tuple[str, int]] = []
        done = housekeeping.sweep(redis_client, lambda c, b: again.append((c, b)))
        assert done["restarted"] == [cid] and again == lost
        run_batches(again, Settings(retry_base_seconds=0.05))
        redis_client.hset(store.campaign_key(cid), "status", "running")  # the step lost
        assert housekeeping.sweep(redis_client, lambda c, b: None)["finished"] == [cid]
    # Found finished: off the index at the next sweep.
    assert redis_client.zscore(store.ACTIVE_ZSET, cid) is not None
    housekeeping.sweep(redis_client, lambda c, b: None)
    assert redis_client.zscore(store.ACTIVE_ZSET, cid) is None


def test_a_quiet_campaign_is_restarted_sooner_when_nothing_runs_or_waits(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a Redis restart the workers have forgotten their reserved tasks: nothing
    runs, nothing waits, and the campaign is restarted after two lease TTLs instead of
    the long wait kept for campaigns whose tasks may be queued behind others."""
    settings = get_settings()
    quick = settings.lease_ttl_ms / 1000 * 2
    assert quick * 2 < settings.retry_max_seconds * 2  # the two waits differ
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        lost: list[tuple[str, int]] = []
        cid = _create(redis_client, 5, lost)
        started = float(redis_client.hget(store.campaign_key(cid), "started_at") or 0)

        def sweep(after: float) -> list[str]:
            return housekeeping.sweep(redis_client, lambda c, b: None, now=started + after)[
                "restarted"
            ]

        assert sweep(quick - 1) == []
        # Another campaign's batch runs: this one may be waiting behind it.
        asyncio.run(_take_lease("other", 3))
        assert sweep(quick + 1) == []
        redis_client.delete(store.batch_lease_key("other", 3))
        # A batch task waits in the queue: the same. (A queue of the test's own: the
        # session's worker would take a task from the real one, and die of this one.)
        monkeypatch.setattr(store, "SENDS_QUEUE", f"{store.PREFIX}:test:sends")
        redis_client.lpush(store.SENDS_QUEUE, "a task")
        assert sweep(quick + 1) == []
        redis_client.delete(store.SENDS_QUEUE)
        # ... at any priority (a campaign's later batches wait in lists of their own).
        redis_client.lpush(store.queue_keys(store.SENDS_QUEUE)[5], "a task")
        assert sweep(quick + 1) == []
        redis_client.delete(*store.queue_keys(store.SENDS_QUEUE))
        # One of its batches parked itself for a retry until later: quiet, not stalled.
        redis_client.hset(store.campaign_key(cid), "parked_until", str(started + quick * 3))
        assert sweep(quick + 1) == []
        assert sweep(quick * 3 + 1) == []
        assert sweep(quick * 4 + 1) == [cid]


@pytest.mark.integration
def test_a_campaign_goes_on_after_redis_restarts(
    monkeypatch: pytest.MonkeyPatch, smtp: SmtpTestServer
) -> None:
    """Redis restarts mid-campaign (AOF on): the worker reconnects but Celery has dropped
    the batch tasks it held, which Redis would hand out again only after the visibility
    timeout. Beat's sweep restarts the campaign once its leases lapse; every address gets
    its message once (those in flight at the stop may end ``unknown``, never resent)."""
    # The sweep's settings: the worker's short leases, and the long wait of 20 minutes.
    lease_ttl_ms = int(FAST_ENV["DISPATCH_LEASE_TTL_MS"])
    sweeping = Settings(lease_ttl_ms=lease_ttl_ms, retry_max_seconds=600)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)
    server = RedisServer(appendonly=True).start()
    worker = WorkerProcess(server.url, concurrency=2).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        wait_for_queues(r)

        enqueue = batch_enqueuer(server.url)

        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=400)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3000)}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        wait_for(lambda: len(smtp.messages) >= 500, timeout=60)
        server.restart()  # a clean stop (the AOF is complete) and a start on the same data
        r = redis.Redis.from_url(server.url, decode_responses=True)

        def completed() -> bool:
            if worker.proc is not None and worker.proc.poll() is not None:
                # Celery's worker may exit on the lost connection (a race in kombu's
                # channel close): its supervisor starts it again (compose: restart).
                worker.start()
            housekeeping.sweep(r, enqueue)  # as beat does every 30 s
            return campaign_reads.get_status(cid, r).value == "completed"

        wait_for(completed, timeout=90, interval=1.0)
        unknown = assert_each_sent_once(r, cid, [m.rcpt_tos[0] for m in smtp.messages])
        assert unknown <= 8  # at most a chunk of 4 on the wire in each worker process
    finally:
        worker.stop()
        r.close()
        server.stop()
