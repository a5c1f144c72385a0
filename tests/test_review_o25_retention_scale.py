"""Retention at scale: beat's purge reads its candidates 500 to a round trip, and every
round trip after the first must read the same fields (review O25)."""

from __future__ import annotations

import time

import redis

from dispatch import campaign_reads, lifecycle, retention
from tests.helpers import create_held, recipients, smtp_provider

DAY = 86400.0


def test_finished_campaigns_past_the_first_500_candidates_are_purged(
    redis_client: redis.Redis,
) -> None:
    """500 drafts nobody started (they stay in the index of kept campaigns, candidates
    at every pass), then two cancelled campaigns. The second round trip asked Redis for
    the fields named by the last draft's values (a None among them): the pass raised
    DataError every hour after its first 500 candidates, and once 500 old drafts or
    paused campaigns led the index no campaign was ever purged again (Redis's memory
    grew with every campaign sent)."""
    smtp_provider(redis_client, 2525)
    for i in range(500):
        create_held(
            redis_client,
            {"id": f"draft{i}", "provider": "local", "subject": "s", "html": "h", "draft": True},
        )
    finished = []
    for _ in range(2):
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
        campaign_id, _ = create_held(redis_client, body)
        lifecycle.cancel(campaign_id, client=redis_client)
        finished.append(campaign_id)

    purged = retention.purge_due(redis_client, now=time.time() + 31 * DAY)

    assert sorted(purged) == sorted(finished)
    for campaign_id in finished:
        assert campaign_reads.campaign_summary(campaign_id, redis_client)["purged_at"] is not None
        assert not any(redis_client.exists(k) for k in retention.per_message_keys(campaign_id))
    assert campaign_reads.campaign_summary("draft0", redis_client)["purged_at"] is None
