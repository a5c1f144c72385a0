"""A campaign paused before its ``send_at`` and resumed: races with a pause and with a
repeat of the resume, and a resume cut short before the start (DESIGN §5)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, reputation, store
from dispatch.models import CampaignRequest
from tests.helpers import campaign_body, create_held, smtp_provider


def _paused_before_start(r: redis.Redis, campaign_id: str, send_at: datetime) -> None:
    """A campaign scheduled for ``send_at``, paused while it waits."""
    smtp_provider(r, 2525)
    body = campaign_body(campaign_id, 3, send_at=send_at.isoformat())
    campaigns.create_campaign(CampaignRequest.model_validate(body), client=r)
    assert campaign_reads.get_status(campaign_id, r).value == "scheduled"
    lifecycle.pause(campaign_id, client=r)


def test_a_pause_landing_inside_a_resume_never_starts_a_campaign_before_send_at(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client resumes twice, another pauses between: the second resume read the
    campaign ``scheduled`` (the first one's doing) and the pause landed before its change.
    It must not set ``running`` a campaign that never started: it sent an hour early."""
    send_at = datetime.now(UTC) + timedelta(hours=1)
    _paused_before_start(redis_client, "h4-race", send_at)
    enqueued: list[tuple[str, int]] = []

    def enqueue(campaign_id: str, batch: int) -> None:
        enqueued.append((campaign_id, batch))

    assert lifecycle.resume("h4-race", client=redis_client, enqueue=enqueue)["status"] == (
        "scheduled"
    )
    real_stand_down = reputation.stand_down

    def pause_lands_meanwhile(r: redis.Redis, campaign_id: str) -> None:
        lifecycle.pause(campaign_id, client=r)  # the other client
        real_stand_down(r, campaign_id)

    monkeypatch.setattr(reputation, "stand_down", pause_lands_meanwhile)
    summary = lifecycle.resume("h4-race", client=redis_client, enqueue=enqueue)
    assert enqueued == []
    status = campaign_reads.get_status("h4-race", redis_client).value
    assert summary["status"] == status
    assert not redis_client.hexists(store.campaign_key("h4-race"), "started_at")
    # Either order of the two is right: paused (out of the schedule), or waiting in it.
    in_schedule = redis_client.zscore(store.SCHEDULED_ZSET, "h4-race")
    assert (status, in_schedule) in (("paused", None), ("scheduled", send_at.timestamp()))


def test_a_resume_repeated_on_a_campaign_waiting_for_send_at_is_answered_not_refused(
    redis_client: redis.Redis,
) -> None:
    """The client repeats a resume whose answer was lost (README: resume is safe twice):
    the repeat finds the campaign waiting for its send_at again, which is what it asked
    for, and answers so instead of 409."""
    send_at = datetime.now(UTC) + timedelta(hours=1)
    _paused_before_start(redis_client, "h4-twice", send_at)
    first = lifecycle.resume("h4-twice", client=redis_client, enqueue=lambda c, b: None)
    again = lifecycle.resume("h4-twice", client=redis_client, enqueue=lambda c, b: None)
    assert first["status"] == again["status"] == "scheduled"
    assert redis_client.zscore(store.SCHEDULED_ZSET, "h4-twice") == send_at.timestamp()
    # A campaign that is not paused nor waiting is still refused.
    lifecycle.cancel("h4-twice", client=redis_client)
    with pytest.raises(campaigns.CampaignStateError, match="cancelled: it cannot be resumed"):
        lifecycle.resume("h4-twice", client=redis_client)


def test_a_resume_cut_short_before_the_start_leaves_the_campaign_to_beat(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume's process dies (or the start fails) after the campaign went back to
    ``scheduled``: beat's release starts it, instead of it waiting ``scheduled`` for ever
    outside the schedule."""
    send_at = datetime.now(UTC) + timedelta(seconds=0.5)
    _paused_before_start(redis_client, "h4-cut", send_at)
    while datetime.now(UTC) <= send_at:
        time.sleep(0.05)

    def dies(*_: Any, **__: Any) -> int:
        raise RuntimeError("the API process died here")

    with monkeypatch.context() as patch:
        patch.setattr(campaigns, "start_campaign", dies)
        with pytest.raises(RuntimeError):
            lifecycle.resume("h4-cut", client=redis_client, enqueue=lambda c, b: None)
    enqueued: list[tuple[str, int]] = []
    started = lifecycle.release_due(
        client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    )
    assert started == ["h4-cut"] and enqueued == [("h4-cut", 0)]
    assert campaign_reads.get_status("h4-cut", redis_client).value == "running"


def test_pausing_a_campaign_the_workers_paused_keeps_their_reason(
    redis_client: redis.Redis,
) -> None:
    """A batch paused the campaign for what a person must fix; the person pauses it too
    (to be sure, or a script pausing every campaign): it stays paused, saying why."""
    smtp_provider(redis_client, 2525)
    campaign_id, _ = create_held(redis_client, campaign_body("h4-why", 3))
    reason = "SMTP connection error: 535 authentication failed"

    async def workers_pause() -> bool:
        client = store.async_client()
        try:
            return await lifecycle.pause_running(client, campaign_id, reason)
        finally:
            await client.aclose()

    assert asyncio.run(workers_pause())
    summary = lifecycle.pause(campaign_id, client=redis_client)
    assert (summary["status"], summary["reason"]) == ("paused", reason)
    resumed = lifecycle.resume(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    assert (resumed["status"], resumed["reason"]) == ("running", "")
