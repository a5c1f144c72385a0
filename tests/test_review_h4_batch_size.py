"""A campaign whose list was being stored when its filler died, found again after
``DISPATCH_BATCH_SIZE`` changed (a deploy that restarted the API with a new value): its
batches keep the size they were cut to, so every stored recipient is handed out."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, store
from dispatch.models import CampaignRequest
from dispatch.recipient_append import RecipientAppender
from dispatch.settings import get_settings
from tests.helpers import campaign_body, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_interrupted_creation import failing_after

N = 7


def _batch_size(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", str(size))
    get_settings.cache_clear()


def _fill_dies(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, batches: list[tuple[str, int]]
) -> CampaignRequest:
    """A campaign of N recipients in batches of 2 whose filler died after two chunks."""
    request = CampaignRequest.model_validate(campaign_body("h4-size", N))
    _batch_size(monkeypatch, 2)
    with monkeypatch.context() as patch:
        # The process dies: no handler of ours runs (a BaseException stands in for the kill).
        patch.setattr(RecipientAppender, "add", failing_after(2, KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            campaigns.create_campaign(
                request, client=r, enqueue=lambda c, b: batches.append((c, b))
            )
    _batch_size(monkeypatch, 1000)  # the deploy's new setting
    return request


def test_a_fill_taken_over_after_the_batch_size_changed_sends_everyone(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_provider(redis_client, smtp.port)
    batches: list[tuple[str, int]] = []
    request = _fill_dies(redis_client, monkeypatch, batches)
    monkeypatch.setattr(campaigns, "FILL_STALE_SECONDS", 0.0)
    batches.clear()
    again = campaigns.create_campaign(
        request, client=redis_client, enqueue=lambda c, b: batches.append((c, b))
    )
    assert again == ("h4-size", False)  # the client's retry took the fill over
    run_batches(batches)
    summary = campaign_reads.campaign_summary("h4-size", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N, N)
    got = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(got) == N and max(got.values()) == 1


def test_housekeeping_restarts_every_stored_batch_of_a_campaign_cut_to_another_size(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody repeats the request: what is stored still sends once housekeeping finds the
    campaign stalled (its batch tasks died with the process that enqueued them)."""
    smtp_provider(redis_client, smtp.port)
    lost: list[tuple[str, int]] = []
    _fill_dies(redis_client, monkeypatch, lost)
    assert lost == [("h4-size", 0), ("h4-size", 1)]
    long_ago = str(time.time() - 10_000)
    key = store.campaign_key("h4-size")
    redis_client.hset(key, mapping={"started_at": long_ago, "progress_at": long_ago})
    again: list[tuple[str, int]] = []
    done = housekeeping.sweep(redis_client, lambda c, b: again.append((c, b)))
    assert done["restarted"] == ["h4-size"] and again == lost
    run_batches(again)
    summary = campaign_reads.campaign_summary("h4-size", redis_client)
    assert (summary["total"], summary["sent"], summary["queued"]) == (4, 4, 0)
