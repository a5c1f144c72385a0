"""The reputation guard: hard bounces or complaints past a share of what a running
campaign sent pause it; a person's resume makes the guard stand down for it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from dispatch import (
    callbacks,
    campaign_reads,
    effects,
    housekeeping,
    lifecycle,
    message_pages,
    reputation,
)
from dispatch.settings import get_settings
from tests.callback_support import callback_path, nested
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Batches of 10, and rates judged from 10 messages sent (not 1000)."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "10")
    monkeypatch.setenv("DISPATCH_PAUSE_MIN_SENT", "10")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def half_sent(r: redis.Redis, smtp: SmtpTestServer) -> tuple[str, list[tuple[str, int]]]:
    """A running campaign of 30 whose first batch (10 messages) was sent."""
    smtp_provider(r, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(30)}
    campaign_id, batches = create_held(r, body)
    run_batches(batches[:1])
    summary = campaign_reads.campaign_summary(campaign_id, r)
    assert (summary["status"], summary["sent"]) == ("running", 10)
    return campaign_id, batches


def report(r: redis.Redis, campaign_id: str, *kinds_and_seqs: tuple[str, int]) -> None:
    """The provider calls back (through the gateway, applied as the task would)."""
    metas = {m["seq"]: m for m in message_pages.messages_page(campaign_id, client=r)[0]}
    events = [
        {"type": kind, "email": metas[seq]["email"], "meta": metas[seq]["meta"]}
        for kind, seq in kinds_and_seqs
    ]
    nickname, token = callback_path(r, "local").split("/")[-2:]
    answer = callbacks.ingest(
        nickname,
        token,
        json.dumps(nested(*events)).encode(),
        {},
        client=r,
        enqueue=lambda batch_id: effects.apply_batch(batch_id, r),
    )
    assert answer.status == 200, answer.body


@pytest.mark.usefixtures("small")
def test_hard_bounces_past_the_limit_pause_the_campaign(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id, batches = half_sent(redis_client, smtp)
    report(redis_client, campaign_id, ("soft_bounce", 0), ("delivered", 1))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "running"

    report(redis_client, campaign_id, ("hard_bounce", 2))  # 1 of 10: 10 % > 5 %
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith("reputation guard: hard bounces are 10.00% of the 10")
    assert "DISPATCH_PAUSE_HARD_BOUNCE_RATE 5.00%" in summary["reason"]
    run_batches(batches[1:])  # the paused campaign's batches send nothing
    assert len(smtp.messages) == 10

    # A person looked at the list and resumed: the guard leaves the campaign alone.
    lifecycle.resume(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    report(redis_client, campaign_id, ("hard_bounce", 3))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "running"
    run_batches(batches)
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["sent"], summary["hard_bounced"]) == ("completed", 30, 2)
    assert len(smtp.messages) == 30


@pytest.mark.usefixtures("small")
def test_spam_complaints_past_the_limit_pause_the_campaign(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id, _ = half_sent(redis_client, smtp)
    report(redis_client, campaign_id, ("unsubscribed", 0), ("clicked", 1))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "running"
    report(redis_client, campaign_id, ("spam", 4))
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith("reputation guard: spam complaints are 10.00%")


def test_too_few_sent_or_a_limit_of_zero_never_pause(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "10")
    get_settings.cache_clear()
    try:
        campaign_id, _ = half_sent(redis_client, smtp)
        # 10 sent is under the default 1000 the rates are judged from.
        report(redis_client, campaign_id, ("hard_bounce", 0), ("spam", 1))
        assert campaign_reads.get_status(campaign_id, redis_client).value == "running"
        monkeypatch.setenv("DISPATCH_PAUSE_MIN_SENT", "10")
        monkeypatch.setenv("DISPATCH_PAUSE_HARD_BOUNCE_RATE", "0")
        monkeypatch.setenv("DISPATCH_PAUSE_SPAM_RATE", "0")
        get_settings.cache_clear()
        report(redis_client, campaign_id, ("hard_bounce", 2), ("spam", 3))
        assert campaign_reads.get_status(campaign_id, redis_client).value == "running"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.usefixtures("small")
def test_a_finished_or_person_paused_campaign_is_left_as_it_is(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    campaign_id, _ = half_sent(redis_client, smtp)
    lifecycle.pause(campaign_id, client=redis_client)
    report(redis_client, campaign_id, ("hard_bounce", 0), ("hard_bounce", 1))
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["reason"]) == ("paused", "")
    # Resuming what a person paused does not turn the guard off.
    lifecycle.resume(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    report(redis_client, campaign_id, ("hard_bounce", 2))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "paused"


@pytest.mark.usefixtures("small")
def test_a_bounce_applied_while_a_person_resumes_does_not_undo_the_resume(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id, _ = half_sent(redis_client, smtp)
    report(redis_client, campaign_id, ("hard_bounce", 0))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "paused"

    # Bounces keep coming (5 % of a campaign's messages is a steady stream): one batch
    # is applied right after the resume moved the status back to running.
    transition = lifecycle._transition

    def with_a_callback_landing(*args: object, **kwargs: object) -> object:
        found = transition(*args, **kwargs)  # type: ignore[arg-type]
        reputation.check(redis_client, [campaign_id])
        return found

    monkeypatch.setattr(lifecycle, "_transition", with_a_callback_landing)
    summary = lifecycle.resume(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    assert (summary["status"], summary["reason"]) == ("running", "")
    monkeypatch.setattr(lifecycle, "_transition", transition)
    report(redis_client, campaign_id, ("hard_bounce", 1))
    assert campaign_reads.get_status(campaign_id, redis_client).value == "running"


def test_housekeeping_pauses_a_campaign_whose_rate_crossed_after_its_last_callback(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounces that came in while too few were sent to judge, and none after: the guard
    judges again at beat's sweep, not only when a callback arrives."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "10")
    monkeypatch.setenv("DISPATCH_PAUSE_MIN_SENT", "15")
    get_settings.cache_clear()
    try:
        campaign_id, batches = half_sent(redis_client, smtp)
        report(redis_client, campaign_id, ("hard_bounce", 0), ("hard_bounce", 1))
        assert campaign_reads.get_status(campaign_id, redis_client).value == "running"  # 10 < 15
        run_batches(batches[1:2])  # 20 sent now, 2 bounced: 10 %, and no callback since
        assert campaign_reads.get_status(campaign_id, redis_client).value == "running"

        done = housekeeping.sweep(redis_client, lambda c, b: None)
        assert done["paused"] == [campaign_id]
        summary = campaign_reads.campaign_summary(campaign_id, redis_client)
        assert summary["status"] == "paused"
        assert "hard bounces are 10.00% of the 20" in summary["reason"]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
