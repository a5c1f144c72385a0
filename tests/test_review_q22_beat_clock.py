"""Which clock beat's scheduled passes read: a worker host whose clock runs ahead of Redis's
(and of every other host's) released a scheduled campaign, and expired one, that long
early; the release and the expiry run on whichever worker takes beat's task, so with one
such host among the workers the time a campaign went out depended on which took it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, store
from dispatch.models import CampaignRequest
from tests.helpers import campaign_body, smtp_provider

AHEAD = 600.0  # seconds this "worker host's" clock runs ahead of Redis's


class _AheadDatetime(datetime):
    @classmethod
    def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
        return datetime.fromtimestamp(time.time() + AHEAD, UTC)


class _AheadTime:
    """The ``time`` module as a host whose clock runs ``AHEAD`` sees it."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() + AHEAD


def _host_clock_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "time", _AheadTime())
    monkeypatch.setattr(campaigns, "time", _AheadTime())
    monkeypatch.setattr(campaigns, "datetime", _AheadDatetime)


def _create(r: redis.Redis, campaign_id: str, **times: datetime) -> list[tuple[str, int]]:
    body = campaign_body(campaign_id, 2, **{k: v.isoformat() for k, v in times.items()})
    batches: list[tuple[str, int]] = []
    request = CampaignRequest.model_validate(body)
    campaigns.create_campaign(request, client=r, enqueue=lambda c, b: batches.append((c, b)))
    return batches


def test_a_worker_clock_ahead_does_not_release_a_campaign_before_its_send_at(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_provider(redis_client, 2525)
    send_at = datetime.fromtimestamp(store.redis_time(redis_client) + 300, UTC)
    assert _create(redis_client, "clk-release", send_at=send_at) == []
    _host_clock_ahead(monkeypatch)

    released: list[tuple[str, int]] = []
    due = lifecycle.release_due(client=redis_client, enqueue=lambda c, b: released.append((c, b)))
    assert (due, released) == ([], [])
    assert campaign_reads.get_status("clk-release", redis_client).value == "scheduled"
    # Nor does an API host whose clock runs ahead start one posted for then at once.
    assert _create(redis_client, "clk-create", send_at=send_at) == []
    assert campaign_reads.get_status("clk-create", redis_client).value == "scheduled"


def test_a_worker_clock_ahead_does_not_expire_a_campaign_before_its_expires_at(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_provider(redis_client, 2525)
    send_at = datetime.fromtimestamp(store.redis_time(redis_client) + 200, UTC)
    expires_at = send_at + timedelta(seconds=100)
    _create(redis_client, "clk-expire", send_at=send_at, expires_at=expires_at)
    _host_clock_ahead(monkeypatch)

    assert lifecycle.expire_due(client=redis_client, enqueue=lambda c, b: None) == []
    summary = campaign_reads.campaign_summary("clk-expire", redis_client)
    assert (summary["status"], summary["queued"], summary["expired"]) == ("scheduled", 2, 0)
