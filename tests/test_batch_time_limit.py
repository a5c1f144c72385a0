"""A batch that takes longer than Celery's time limit allows (a slow pace: 1000 messages
at one every two seconds take 2000 s, the hard limit is 1800) hands itself on before the
limit and runs again, instead of being killed mid-send with its chunk on the wire."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from dispatch import campaign_reads, campaigns
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


def test_a_batch_longer_than_the_task_time_limit_is_handed_on_and_completes() -> None:
    """The smallest visibility timeout (60 s) gives a 30 s hard time limit; 80 messages
    at 2 a second take 40 s in one batch. The worker kills a task at its limit (the
    campaign then stalled until beat's sweep, none here): now the run hands the batch on
    after a quarter of the visibility timeout and the next run sends the rest, each
    recipient once."""
    sends_each_once_under_a_short_time_limit(80, max_connections=1, rate_per_second=2)


def sends_each_once_under_a_short_time_limit(n: int, **provider: Any) -> None:
    """``n`` messages in one batch through a provider with these fields, on a worker
    whose visibility timeout is 60 s (a run hands its batch on after 15 s): each
    recipient gets one, none unknown or failed."""
    server = RedisServer().start()
    worker = WorkerProcess(server.url, concurrency=1, DISPATCH_VISIBILITY_TIMEOUT="60").start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        wait_for_queues(r)
        with SmtpTestServer() as smtp:
            smtp_provider(r, smtp.port, **provider)
            body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            done = lambda: campaign_reads.get_status(cid, r).value == "completed"  # noqa: E731
            wait_for(done, timeout=150, interval=0.5)
            received = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert len(received) == n and set(received.values()) == {1}
        summary = campaign_reads.campaign_summary(cid, r)
        assert (summary["sent"], summary["unknown"], summary["failed"]) == (n, 0, 0)
    finally:
        worker.stop()
        server.stop()
