"""A worker busy sending is taking tasks: its health and /metrics say so while every
process of its pool runs a batch longer than the canary's limit (the canary waits for a
free process; a batch at a provider's pace runs for minutes).

Decided by the order of events, not by time: the provider holds its answer to the
batch's second request until the worker's canary note is written again. The worker's
one process waits for that answer, so no canary task can run meanwhile: only its main
process can note it (before, none did, and the note went stale for as long as the batch
ran)."""

from __future__ import annotations

import time

import redis

from dispatch import campaign_reads, campaigns, store, worker_health
from dispatch.models import CampaignRequest
from dispatch.provider_store import save_provider
from dispatch.redis_server import RedisServer
from tests.helpers import recipients
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

CANARY_SECONDS = 0.5
HOLD_SECONDS = 20.0  # the longest the provider holds its answer (40 canary intervals)


def test_a_worker_whose_every_process_sends_a_long_batch_is_healthy() -> None:
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    worker = WorkerProcess(
        server.url, concurrency=1, DISPATCH_WORKER_CANARY_SECONDS=str(CANARY_SECONDS)
    )
    answered: list[RecordedRequest] = []
    seen: list[tuple[bool, worker_health.Health | None]] = []  # at the second request

    def noted() -> object:
        return r.zrange(store.WORKERS_ZSET, 0, -1, withscores=True)

    def hold_the_second(request: RecordedRequest) -> Reply | None:
        answered.append(request)
        if len(answered) == 2:  # (the sink's own thread: the worker waits meanwhile)
            before = noted()
            deadline = time.monotonic() + HOLD_SECONDS
            while noted() == before and time.monotonic() < deadline:
                time.sleep(0.05)
            changed = noted() != before
            seen.append((changed, worker_health.check(r, CANARY_SECONDS) if changed else None))
        return None

    try:
        with HttpSink(answer=hold_the_second) as sink:
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
            body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(3)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            wait_for(lambda: campaign_reads.get_status(cid, r).value == "completed", timeout=90)
        assert len(sink.requests) == 3
        assert seen and seen[0][0], "no canary noted while the batch held the worker's process"
        health = seen[0][1]
        assert health is not None and health.ok, health
    finally:
        worker.stop()
        r.close()
        server.stop()
