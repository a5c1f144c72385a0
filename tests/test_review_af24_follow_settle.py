"""Review AF24: `dispatch status --follow` of a big campaign that is cancelled."""

from __future__ import annotations

import json

import pytest
import redis

from dispatch import campaigns, cli, lifecycle
from dispatch.models import CampaignStatus, campaign_request
from dispatch.provider_store import save_provider
from tests.test_review_a6_operator import SMTP, run


def _cancelled_not_settled(monkeypatch: pytest.MonkeyPatch, campaign_id: str, n: int) -> None:
    """A running campaign cancelled as one past INLINE_SETTLE_LIMIT is: the answer comes
    first, its unsent messages are settled by a worker afterwards (here: not yet)."""
    monkeypatch.setattr(lifecycle, "INLINE_SETTLE_LIMIT", 2)
    save_provider(SMTP)
    request = campaign_request(
        {"id": campaign_id, "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
         "recipients": [{"email": f"r{i}@example.com"} for i in range(n)]}
    )  # fmt: skip
    campaigns.create_campaign(request, enqueue=lambda campaign_id, batch: None)
    summary = lifecycle.cancel(
        campaign_id, enqueue=lambda c, b: None, settle_later=lambda c, status: None
    )
    assert (summary["status"], summary["queued"], summary["cancelled"]) == ("cancelled", n, 0)


def test_follow_waits_for_a_cancel_to_settle_before_its_last_report(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """300,000 recipients cancelled while followed: the follow stopped at the status and
    printed its final summary with "queued": 297200, "cancelled": 0 and a bar at 0.9 %,
    while the worker settled them within 2 s: the report read as messages still to go."""
    _cancelled_not_settled(monkeypatch, "c-big", 5)
    sleeps = []

    def sleep(seconds: float) -> None:  # the worker's settling happens while it waits
        sleeps.append(seconds)
        lifecycle.settle_ended("c-big", CampaignStatus.CANCELLED, redis_client, lambda c, b: None)

    monkeypatch.setattr(cli.time, "sleep", sleep)
    code, out, err = run(capsys, "status", "c-big", "--follow")
    assert code == 1, err
    final = json.loads(out)
    assert (final["queued"], final["cancelled"]) == (0, 5), final
    assert sleeps, "it did not wait for the settling"
    assert "5/5 100.0%" in err and "settling 5 unsent messages" in err, err
    assert err.endswith("campaign 'c-big' is cancelled: 5 messages not sent\n"), err


def test_follow_stops_waiting_when_no_worker_settles(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No worker takes the settling: the follow does not wait for ever, and says why the
    campaign still counts messages queued."""
    _cancelled_not_settled(monkeypatch, "c-stuck", 3)
    monkeypatch.setattr(cli, "FOLLOW_SETTLE_SECONDS", 0.0, raising=False)
    code, out, err = run(capsys, "status", "c-stuck", "--follow")
    assert code == 1, err
    assert json.loads(out)["queued"] == 3
    assert err.endswith(
        "campaign 'c-stuck' is cancelled: 3 messages not sent "
        "(3 still counted queued: a worker settles them cancelled)\n"
    ), err
