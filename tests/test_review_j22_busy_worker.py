"""A worker busy sending is taking tasks: its health and /metrics say so while every
process of its pool runs a batch longer than the canary's limit (the canary waits for a
free process; a batch at a provider's pace runs for minutes)."""

from __future__ import annotations

import redis

from dispatch import campaign_reads, campaigns, worker_health
from dispatch.models import CampaignRequest
from dispatch.provider_store import save_provider
from dispatch.redis_server import RedisServer
from tests.helpers import recipients
from tests.http_sink import HttpSink, Reply
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

CANARY_SECONDS = 0.5  # not consuming after 4 of them: 2 s


def test_a_worker_whose_every_process_sends_a_long_batch_is_healthy() -> None:
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    worker = WorkerProcess(
        server.url, concurrency=1, DISPATCH_WORKER_CANARY_SECONDS=str(CANARY_SECONDS)
    )
    try:
        with HttpSink(default=Reply(delay=0.6)) as sink:  # one message each 0.6 s
            save_provider(
                {
                    "nickname": "esp",
                    "kind": "http",
                    "method": "POST",
                    "endpoint": f"{sink.url}/send",
                    "batch": False,
                    "max_connections": 1,
                    "body": {
                        "to": "$$To",
                        "subject": "$$Subject",
                        "html": "$$HTML",
                        "from": "$$FromName <$$FromAddress>",
                    },
                    "from_name": "Acme",
                    "from_address": "deals@acme.example",
                },
                r,
            )
            worker.start()
            wait_for_queues(r)
            wait_for(lambda: worker_health.check(r, CANARY_SECONDS).ok, timeout=60)
            body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(10)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            # The one process has sent for over 3.6 s: past the 2 s limit since the last
            # canary it ran.
            wait_for(lambda: len(sink.requests) >= 7, timeout=60)
            health = worker_health.check(r, CANARY_SECONDS)
            sent_by_then = len(sink.requests)
            wait_for(lambda: campaign_reads.get_status(cid, r).value == "completed", timeout=60)
        assert sent_by_then < 10  # the batch was still running
        assert health.ok, health.message
    finally:
        worker.stop()
        r.close()
        server.stop()
