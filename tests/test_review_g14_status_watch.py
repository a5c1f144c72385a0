"""Review G14: a batch run's status watch (dispatch.status_watch.watch_status) that met
anything but a Redis error ended for good, without a word: the run sent on to the
batch's end, a pause or a cancel unseen, the time-limit and worker-stop hand-ons and the
metrics flush gone with it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis

from dispatch import lifecycle, send_stats, store
from dispatch.send_stats import SendStats
from dispatch.sending import BatchResult, run_batch
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_invariants import check_books

_MESSAGES = 20


def _paced_campaign(r: redis.Redis, smtp: SmtpTestServer) -> str:
    """A campaign of 20 messages at four a second through one connection: its batch runs
    about five seconds, the watch polls every half second."""
    smtp_provider(r, smtp.port, rate_per_second=4.0, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(_MESSAGES)}
    cid, _ = create_held(r, body)
    return cid


def _logged_with_traceback(caplog: pytest.LogCaptureFixture, error: str) -> bool:
    """The watch logged ``error`` as an error, with its traceback."""
    return any(
        rec.name == "dispatch.status_watch"
        and rec.levelno >= logging.ERROR
        and rec.exc_info is not None
        and error in str(rec.exc_info[1])
        for rec in caplog.records
    )


def test_a_pause_stops_a_batch_whose_metrics_flush_failed(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One flush of the send metrics raised (a bug): the watch ended, and the pause that
    came next was never seen (all 20 went out), with nothing logged. The flush's error is
    logged with its traceback and the watch goes on."""
    cid = _paced_campaign(redis_client, smtp)
    monkeypatch.setattr(send_stats, "FLUSH_SECONDS", 0.0)  # at every poll
    failed: list[bool] = []

    async def flush_fails_once(stats: SendStats, client: Any, provider: str) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug in the flush")

    monkeypatch.setattr(SendStats, "flush", flush_fails_once)

    async def pause_once_failed() -> None:
        while not (failed and smtp.messages):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(lifecycle.pause, cid, client=redis_client)

    async def go() -> None:
        async with store.async_client() as client:
            await asyncio.gather(run_batch(cid, 0, r=client), pause_once_failed())

    asyncio.run(go())
    summary = check_books(redis_client, cid)
    assert summary["status"] == "paused"
    assert summary["sent"] == len(smtp.messages) < _MESSAGES and summary["queued"] > 0, summary
    assert _logged_with_traceback(caplog, "a bug in the flush")


def test_a_batch_whose_status_cannot_be_read_stops_and_is_handed_on(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A status the watch cannot read (written by hand, or by a newer version) ended the
    watch: the batch sent all 20 of a campaign that was not ``running``. The run stops
    after the chunk on the wire and hands the batch on (logged with the traceback); the
    next run, reading the campaign afresh, sends nothing while it is not running."""
    cid = _paced_campaign(redis_client, smtp)

    async def go() -> tuple[BatchResult, BatchResult]:
        client = store.async_client()
        try:
            run = asyncio.create_task(run_batch(cid, 0, r=client))
            while not smtp.messages:
                await asyncio.sleep(0.05)
            await client.hset(store.campaign_key(cid), "status", "on-hold")
            first = await run
            return first, await run_batch(cid, 0, r=client)
        finally:
            await client.aclose()

    first, again = asyncio.run(go())
    sent = len(smtp.messages)
    assert sent < _MESSAGES
    assert first.counts.get("handed_on") == _MESSAGES - sent and first.retry_at is not None
    assert again.counts == {} and len(smtp.messages) == sent
    assert _logged_with_traceback(caplog, "'on-hold' is not a valid CampaignStatus")
