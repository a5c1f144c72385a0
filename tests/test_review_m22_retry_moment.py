"""The messages of one request that wait for a retry are due at one moment, to the bit:
a run that loads them before their time (the one that takes over a batch handed on by a
stopping worker, a resume after a pause) sends them again in one request."""

from __future__ import annotations

import asyncio

import redis

from dispatch import campaign_reads, lifecycle, store
from dispatch.ledger import parse_record
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from tests.helpers import create_held, http_provider
from tests.http_sink import HttpSink, Reply
from tests.test_http_campaigns import _body as esp_campaign
from tests.test_worker_shutdown import states


def test_a_request_handed_on_while_it_waits_for_its_retry_goes_again_whole(
    redis_client: redis.Redis,
) -> None:
    """A batch of 1000 in one request answered 500 waits inside its run for the retry;
    its worker is told to stop meanwhile and hands the batch on. Each message's retry
    time was taken a moment after the one before, so the run that took the batch over
    requeued them one timer each: its sender, woken by the first, sent the retry split
    ([1000, 23, 977])."""
    settings = Settings(retry_base_seconds=3.0, retry_max_seconds=3.0, inline_retry_seconds=5.0)
    stop_key = store.worker_stopping_key("dispatch-1@test")
    with HttpSink() as sink:
        sink.script(Reply(500, b"oops"))
        http_provider(redis_client, sink.url)
        campaign_id, _ = create_held(redis_client, esp_campaign(1000))

        async def go() -> list[BatchResult]:
            client = store.async_client()
            try:
                first = asyncio.create_task(
                    run_batch(campaign_id, 0, r=client, settings=settings, stop_key=stop_key)
                )
                while "retry" not in states(redis_client, campaign_id):  # waiting now
                    await asyncio.sleep(0.02)
                await client.set(stop_key, "1")  # its worker is told to stop
                handed_on = await first
                due = {
                    parse_record(raw)["next_at"]  # type: ignore[index]
                    for raw in redis_client.hvals(store.ledger_key(campaign_id))
                }
                assert len(due) == 1  # one moment for the request's messages
                await client.delete(stop_key)
                return [handed_on, await run_batch(campaign_id, 0, r=client, settings=settings)]
            finally:
                await client.aclose()

        results = asyncio.run(go())
        requests = sink.requests
    assert [r.counts for r in results] == [{"handed_on": 1000}, {"sent": 1000}]
    assert [len(r.json()["msgs"]) for r in requests] == [1000, 1000]
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 1000, 0)


def test_a_request_paused_while_it_waits_for_its_retry_goes_again_whole_after_resume(
    redis_client: redis.Redis,
) -> None:
    """The same after a pause while the request's messages wait: the run that the resume
    hands the batch to loads them before their time ([1000, 85, 915])."""
    settings = Settings(retry_base_seconds=3.0, retry_max_seconds=3.0, inline_retry_seconds=5.0)
    with HttpSink() as sink:
        sink.script(Reply(500, b"oops"))
        http_provider(redis_client, sink.url)
        campaign_id, _ = create_held(redis_client, esp_campaign(1000))

        async def go() -> None:
            client = store.async_client()
            try:
                first = asyncio.create_task(run_batch(campaign_id, 0, r=client, settings=settings))
                while "retry" not in states(redis_client, campaign_id):  # waiting now
                    await asyncio.sleep(0.02)
                lifecycle.pause(campaign_id, client=redis_client)
                await first
                lifecycle.resume(campaign_id, client=redis_client, enqueue=lambda c, b: None)
                await run_batch(campaign_id, 0, r=client, settings=settings)
            finally:
                await client.aclose()

        asyncio.run(go())
        requests = sink.requests
    assert [len(r.json()["msgs"]) for r in requests] == [1000, 1000]
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 1000, 0)
