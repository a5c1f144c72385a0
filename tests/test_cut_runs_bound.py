"""A provider whose session never opens within a run (its greeting stalled past the run's
deadline, under a ``timeout`` longer than the run can wait: warned, not refused) had its
chunk given back at every run's cut, never an attempt: the batch ran again for ever and
no message ever failed. Each such cut now counts as a throttled try, and a message cut
``max_throttles`` times fails, saying why (review L14's open question)."""

from __future__ import annotations

import pytest
import redis

from dispatch import campaign_reads, campaigns, sending, store
from dispatch.ledger import parse_record
from dispatch.settings import Settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider

CUT = 1.0  # the run's deadline, seconds into it


def test_messages_cut_before_their_session_opened_fail_after_max_throttles_runs(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, silent_endpoint: int
) -> None:
    monkeypatch.setattr(sending, "cut_after", lambda visibility_timeout: CUT)
    smtp_provider(redis_client, silent_endpoint, timeout=30.0, max_connections=1)
    body = {"id": "stall", "provider": "local", "subject": "s", "html": "<p>h</p>"}
    campaign_id, batches = create_held(redis_client, {**body, "recipients": recipients(3)})
    results = run_batches(batches, Settings(max_throttles=3), rounds=5)
    # Two runs give the chunk back (throttles 1, then 2); the third fails it.
    assert [r.retry_at is not None for r in results] == [True, True, False], results
    ledger = store.ledger_key(campaign_id)
    records = [parse_record(redis_client.hget(ledger, str(seq))) for seq in range(3)]
    for rec in records:
        assert rec is not None and rec["state"] == "failed", rec
        gave_up = "gave up after 3 throttled tries, the last a run cut short: not sent"
        assert rec["detail"].startswith(gave_up), rec
        assert (rec.get("attempts", 0), rec["throttles"]) == (0, 3), rec
    campaigns.finish_if_done(campaign_id, redis_client)
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["failed"], summary["queued"]) == ("completed", 3, 0)
