"""Review AF24: `dispatch status --follow` of a big campaign that is cancelled."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from dispatch import campaigns, cli, lifecycle
from dispatch.models import CampaignStatus, campaign_request
from dispatch.provider_store import save_provider
from tests.api_server import ApiServer
from tests.api_support import dispatch_client
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


def _settled_while_asleep(
    campaign_id: str, r: redis.Redis, sleeps: list[float]
) -> Callable[[float], None]:
    """A sleep during which the worker settles the campaign's unsent messages."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        lifecycle.settle_ended(campaign_id, CampaignStatus.CANCELLED, r, lambda c, b: None)

    return sleep


def test_follow_waits_for_a_cancel_to_settle_before_its_last_report(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """300,000 recipients cancelled while followed: the follow stopped at the status and
    printed its final summary with "queued": 297200, "cancelled": 0 and a bar at 0.9 %,
    while the worker settled them within 2 s: the report read as messages still to go."""
    _cancelled_not_settled(monkeypatch, "c-big", 5)
    sleeps: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", _settled_while_asleep("c-big", redis_client, sleeps))
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


def test_the_clients_wait_answers_a_cancel_once_it_settled(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DispatchClient.wait()`` returned the moment the status read cancelled, its summary
    counting every unsent message ``queued`` (AF24 left it): it now waits, as the follow
    does, and returns at once when no worker settles them (count not falling)."""
    from dispatch import client as client_module

    _cancelled_not_settled(monkeypatch, "c-wait", 4)
    sleeps: list[float] = []
    asleep = _settled_while_asleep("c-wait", redis_client, sleeps)
    monkeypatch.setattr(client_module.time, "sleep", asleep)
    with dispatch_client(api_server) as client:
        summary = client.wait("c-wait", interval=0.01)
    assert (summary.queued, summary.cancelled) == (0, 4)
    assert len(sleeps) == 1

    _cancelled_not_settled(monkeypatch, "c-wait-stuck", 3)
    monkeypatch.setattr(client_module, "SETTLE_WAIT_SECONDS", 0.0)
    with dispatch_client(api_server) as client:
        stuck = client.wait("c-wait-stuck", interval=0.01)
    assert (stuck.status.value, stuck.queued) == ("cancelled", 3)
