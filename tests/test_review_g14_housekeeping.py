"""Review G14: beat's sweep (dispatch.housekeeping.sweep) met a campaign whose stored
fields it could not read, and raised: that sweep, and every one after it, looked after
none of the campaigns behind it (the newest first): a stalled one was never restarted, a
done one never finished, a quota-paused one never resumed, while beat ticked on."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from dispatch import housekeeping, store
from tests.helpers import create_held, recipients, smtp_provider


def test_a_campaign_the_sweep_cannot_read_does_not_hold_up_the_others(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_provider(redis_client, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    stalled, lost = create_held(redis_client, body)
    redis_client.hset(store.campaign_key(stalled), "started_at", str(time.time() - 10_000))
    unreadable, _ = create_held(redis_client, body)  # newer: looked at first
    redis_client.hset(store.campaign_key(unreadable), "progress_at", "yesterday")
    again: list[tuple[str, int]] = []
    done = housekeeping.sweep(redis_client, lambda c, b: again.append((c, b)))
    assert done["restarted"] == [stalled] and again == lost
    assert any(
        rec.levelno == logging.ERROR and rec.exc_info and unreadable in rec.getMessage()
        for rec in caplog.records
    )
