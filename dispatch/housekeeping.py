"""Beat's safety net for running campaigns: finish the done, re-enqueue the stalled.

Batch tasks finish their campaign themselves; this catches what a lost task left: a
campaign with nothing queued still marked running, or one whose batches stopped (a worker
died and Redis would hand its task out again only after the visibility timeout,
PITFALLS). Re-enqueueing is safe: a batch skips what its ledger settled and a live
worker's lease turns a duplicate away.
"""

from __future__ import annotations

import math
import time

import redis

from dispatch import campaigns, store
from dispatch.models import CampaignStatus
from dispatch.recipient_pages import stored_count
from dispatch.settings import get_settings

RECENT_CAMPAIGNS = 1000  # newest campaigns looked at each sweep


def sweep(
    r: redis.Redis, enqueue: campaigns.EnqueueBatch, now: float | None = None
) -> dict[str, list[str]]:
    """One pass; returns the campaigns it ``finished`` and those it ``restarted``."""
    now = time.time() if now is None else now
    settings = get_settings()
    # Longer than any wait a batch may park for, so live retry chains are never doubled.
    stall = max(settings.retry_max_seconds * 2, settings.lease_ttl_ms / 1000 * 2)
    done: dict[str, list[str]] = {"finished": [], "restarted": []}
    for member in r.zrevrange(store.CAMPAIGNS_ZSET, 0, RECENT_CAMPAIGNS - 1):
        campaign_id = str(member)
        fields = r.hmget(
            store.campaign_key(campaign_id), ["status", "progress_at", "started_at", "batches"]
        )
        status, progress_at, started_at, batches = fields
        if status != CampaignStatus.RUNNING.value:
            continue
        if campaigns.finish_if_done(campaign_id, r):
            done["finished"].append(campaign_id)
            continue
        if now - max(float(progress_at or 0), float(started_at or 0)) < stall:
            continue
        if next(r.scan_iter(match=store.batch_lease_key(campaign_id, 0)[:-1] + "*"), None):
            continue  # a worker is on it
        total = stored_count(r, campaign_id)
        count = int(batches or math.ceil(total / settings.batch_size))
        r.hset(store.campaign_key(campaign_id), "progress_at", str(now))
        for batch in range(count):
            enqueue(campaign_id, batch)
        done["restarted"].append(campaign_id)
    return done
