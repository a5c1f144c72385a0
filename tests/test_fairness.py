"""Campaigns share the workers: a small campaign does not wait for a large one to end.

A large campaign is handed to the broker as all its batches at once. If the workers took
them first come, first served, every campaign created after it (on any provider) would
wait until its last batch: hours behind a newsletter paced by its provider.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import campaign_reads, campaigns
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "10")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("prefetch", [4, 1])
def test_a_small_campaign_goes_out_while_a_large_one_is_still_sending(
    smtp: SmtpTestServer, small_batches: None, prefetch: int
) -> None:
    """What the small one waits for: the large one's batch running and those the worker
    process reserved (DISPATCH_WORKER_PREFETCH), not all of them."""
    server = RedisServer().start()
    worker = WorkerProcess(
        server.url,
        concurrency=1,
        DISPATCH_BATCH_SIZE="10",
        DISPATCH_WORKER_PREFETCH=str(prefetch),
    ).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    enqueue = batch_enqueuer(server.url)
    try:
        wait_for_queues(r)
        # The large one: 30 batches of 10 at 20 messages a second (15 s of sending).
        smtp_provider(r, smtp.port, nickname="paced", rate_per_second=20)
        smtp_provider(r, smtp.port, nickname="other")
        large = {"provider": "paced", "subject": "s", "html": "h", "recipients": recipients(300)}
        large_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(large), client=r, enqueue=enqueue
        )
        wait_for(lambda: campaign_reads.campaign_summary(large_id, r)["sent"] >= 10, timeout=60)

        small = {
            "provider": "other",
            "subject": "s",
            "html": "h",
            "recipients": recipients(5, domain="small.example"),
        }
        before = campaign_reads.campaign_summary(large_id, r)["sent"]
        small_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(small), client=r, enqueue=enqueue
        )
        wait_for(lambda: campaign_reads.get_status(small_id, r).value == "completed", timeout=90)
        # Meanwhile the large one sent at most the batch running and those reserved
        # (first come, first served: all 300).
        passed = campaign_reads.campaign_summary(large_id, r)["sent"] - before
        assert passed <= (1 + prefetch) * 10, passed
        wait_for(lambda: campaign_reads.get_status(large_id, r).value == "completed", timeout=120)
        assert campaign_reads.campaign_summary(large_id, r)["sent"] == 300
    finally:
        worker.stop()
        r.close()
        server.stop()


def test_queue_depth_counts_the_tasks_of_every_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch import metrics, store

    server = RedisServer().start()  # its own: no worker takes these tasks
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        monkeypatch.setattr(store, "sync_client", lambda: r)
        sends = store.queue_keys("sends")
        r.lpush(sends[0], "a", "b")  # priority 0: the queue's own list
        r.lpush(sends[4], "c")
        r.lpush(sends[9], "d", "e", "f")
        r.lpush(store.queue_keys("events")[1], "g")
        depth = {
            sample.labels["queue"]: sample.value
            for family in metrics.RedisStateCollector().collect()
            if family.name == "dispatch_queue_depth"
            for sample in family.samples
        }
        assert depth == {"default": 0, "sends": 6, "events": 1, "celery": 0}
    finally:
        r.close()
        server.stop()
