"""A campaign its provider's own daily quota paused resumes by itself once room frees.

It waited for a person: a Gmail provider (2,000 a day) took a 10,000-recipient campaign
five manual resumes, each after midnight. Housekeeping now resumes it once the quota's
oldest sends left its 24 hours (review A24: a rolling window, no longer a UTC day); a
person's own pause or resume in between stands, and a quota the provider reports (SES's
454) still waits for a person: its day is the provider's.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import campaign_reads, campaigns, housekeeping, lifecycle, store
from dispatch.limits import WINDOW_MINUTES
from dispatch.settings import Settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)


def _paused_by_quota(r: redis.Redis, smtp: SmtpTestServer) -> str:
    """A campaign of 8 on a provider with a daily quota of 5, run until it pauses."""
    smtp_provider(r, smtp.port, daily_quota=5)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(8)}
    campaign_id, batches = create_held(r, body)
    run_batches(batches, FAST)
    summary = campaign_reads.campaign_summary(campaign_id, r)
    assert (summary["status"], summary["sent"], summary["queued"]) == ("paused", 5, 3)
    assert "in the last 24 hours; the campaign resumes by itself at" in str(summary["reason"])
    return campaign_id


def _room_frees() -> float:
    """When sends counted up to now have left the quota's 24 hours (and a minute)."""
    return (time.time() // 60 + WINDOW_MINUTES + 1) * 60


def _new_day(r: redis.Redis) -> None:
    """24 hours later: the sends counted have left the quota's window."""
    for key in r.scan_iter(match=f"{store.PREFIX}:quota:local:*"):
        r.delete(key)


def _sweep(r: redis.Redis, now: float) -> tuple[dict[str, list[str]], list[tuple[str, int]]]:
    held: list[tuple[str, int]] = []
    done = housekeeping.sweep(r, lambda c, b: held.append((c, b)), now=now)
    return done, held


def test_the_next_day_it_resumes_and_sends_the_rest(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        campaign_id = _paused_by_quota(redis_client, smtp)
        at = float(redis_client.hget(store.campaign_key(campaign_id), "resume_at") or 0)
        assert 0 <= _room_frees() - at <= 60  # (the minute of the last sends)

        done, held = _sweep(redis_client, at - 1)  # not yet
        assert campaign_id not in done["resumed"] and held == []
        assert campaign_reads.get_status(campaign_id, redis_client) == "paused"

        _new_day(redis_client)
        done, held = _sweep(redis_client, at + 30)
        assert done["resumed"] == [campaign_id] and held
        assert campaign_reads.get_status(campaign_id, redis_client) == "running"
        assert not redis_client.hexists(store.campaign_key(campaign_id), "resume_at")
        run_batches(held, FAST)
        campaigns.finish_if_done(campaign_id, redis_client)
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert campaign_reads.campaign_summary(campaign_id, redis_client)["status"] == "completed"
    assert len(received) == 8 and max(received.values()) == 1
    assert _sweep(redis_client, at + 60)[0]["resumed"] == []  # once


def test_a_persons_pause_in_between_stands(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        campaign_id = _paused_by_quota(redis_client, smtp)
        lifecycle.pause(campaign_id, client=redis_client)  # "keep it paused"
        _new_day(redis_client)
        done, held = _sweep(redis_client, _room_frees() + 30)
    assert done["resumed"] == [] and held == []
    assert campaign_reads.get_status(campaign_id, redis_client) == "paused"


def test_a_quota_the_provider_reports_waits_for_a_person(redis_client: redis.Redis) -> None:
    """SES's "454 Throttling failure: Daily message quota exceeded": the provider's day,
    not a UTC one; nothing says when it starts again."""
    with SmtpTestServer() as smtp:
        smtp.handler.rcpt_reply = lambda address: (
            "454 Throttling failure: Daily message quota exceeded." if "3@" in address else None
        )
        smtp_provider(redis_client, smtp.port)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(8)}
        campaign_id, batches = create_held(redis_client, body)
        run_batches(batches, FAST)
        assert campaign_reads.get_status(campaign_id, redis_client) == "paused"
        assert not redis_client.hexists(store.campaign_key(campaign_id), "resume_at")
        done, held = _sweep(redis_client, _room_frees() + 30)
    assert done["resumed"] == [] and held == []


def test_a_persons_pause_just_after_the_batchs_pause_stands(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's pause and its resume time were two calls: a person's pause landing
    between them was overridden at midnight (review K8). Now one step."""
    real_eval = aioredis.Redis.eval
    paused_by_person: list[str] = []

    def eval_then_pause(self: aioredis.Redis, script: str, *args: Any) -> Any:
        pausing = "'paused'" in script or "paused" in map(str, args)  # (then, or before)
        if isinstance(self, Pipeline) or not pausing:
            return real_eval(self, script, *args)  # (a pipeline's queues the command)
        return _then_pause(real_eval(self, script, *args), args)

    async def _then_pause(call: Any, args: tuple[Any, ...]) -> Any:
        answer = await call
        if not paused_by_person:  # the batch's pause, then at once a person's
            campaign_id = str(args[1]).rsplit(":", 1)[-1]
            lifecycle.pause(campaign_id, client=redis_client)  # a person, at once after
            paused_by_person.append(campaign_id)
        return answer

    monkeypatch.setattr(aioredis.Redis, "eval", eval_then_pause)
    with SmtpTestServer() as smtp:
        campaign_id = _paused_by_quota(redis_client, smtp)
    monkeypatch.undo()
    assert paused_by_person == [campaign_id]
    _new_day(redis_client)
    done, held = _sweep(redis_client, _room_frees() + 30)
    assert done["resumed"] == [] and held == []
    assert campaign_reads.get_status(campaign_id, redis_client) == "paused"
