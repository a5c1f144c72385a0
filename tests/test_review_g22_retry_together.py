"""The messages of one request (or SMTP chunk) that meet a transient failure wait the
same time, so that they go out together again: each drawing its own jitter, a batch of
1000 refused with a 500 was retried as hundreds of small requests, as each came due."""

from __future__ import annotations

import asyncio
import time

import redis

from dispatch import campaign_reads, store
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from tests.helpers import create_held, http_provider
from tests.http_sink import HttpSink, Reply
from tests.test_http_campaigns import _body as esp_campaign


def run_as_the_task_does(campaign_id: str, settings: Settings) -> list[BatchResult]:
    """Run batch 0 until nothing waits, coming back at each run's ``retry_at`` as the
    ``dispatch.send_batch`` task's countdown does."""

    async def go() -> list[BatchResult]:
        client = store.async_client()
        results: list[BatchResult] = []
        try:
            while True:
                results.append(await run_batch(campaign_id, 0, r=client, settings=settings))
                retry_at = results[-1].retry_at
                if retry_at is None or len(results) >= 5:
                    return results
                await asyncio.sleep(max(0.0, retry_at - time.time()))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_the_messages_of_one_request_are_retried_together(redis_client: redis.Redis) -> None:
    """A batch of 20 in one request answered 500: each message drew its own jitter and
    was sent again on its own as it came due (some waited inside the run, the others
    for the next one): the provider got the retry in many small requests. They now
    wait the same time and go again in one request."""
    settings = Settings(retry_base_seconds=1.0, retry_max_seconds=1.0, inline_retry_seconds=0.75)
    with HttpSink() as sink:
        sink.script(Reply(500, b"oops"))
        http_provider(redis_client, sink.url)
        campaign_id, _ = create_held(redis_client, esp_campaign(20))
        run_as_the_task_does(campaign_id, settings)
        requests = sink.requests
    assert [len(r.json()["msgs"]) for r in requests] == [20, 20]
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 20, 0)
