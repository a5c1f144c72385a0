"""Beat's safety net: finish campaigns a lost task left running, restart stalled ones."""

from __future__ import annotations

import time

import redis

from dispatch import campaigns, housekeeping, store
from dispatch.settings import Settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


def _create(r: redis.Redis, n: int, batches: list[tuple[str, int]]) -> str:
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
    cid, held = create_held(r, body)
    batches += held
    return cid


def test_a_done_campaign_left_running_is_finished(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        batches: list[tuple[str, int]] = []
        cid = _create(redis_client, 5, batches)
        run_batches(batches, Settings(retry_base_seconds=0.05))
    # The ledger write that settled the last message completed it ...
    assert campaigns.get_status(cid, redis_client).value == "completed"
    # ... and were that step ever lost, housekeeping completes it.
    redis_client.hset(store.campaign_key(cid), "status", "running")
    done = housekeeping.sweep(redis_client, lambda c, b: None)
    assert done["finished"] == [cid]
    assert campaigns.get_status(cid, redis_client).value == "completed"


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
        assert campaigns.campaign_summary(cid, redis_client)["status"] == "completed"
        assert len(smtp.messages) == 2500
