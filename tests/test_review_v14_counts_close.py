"""A retention too long for a Redis expiry never closes a campaign's counts (review V14).

DISPATCH_RETENTION_DAYS has no upper bound (``inf`` is a float too). The purge's close
time, past what Redis takes as an expiry (2**63 - 1 ms), made the purge's script fail
after it had deleted the per-message data, and the one-time walk over campaigns purged
by an earlier version fail at every purge pass.
"""

from __future__ import annotations

import time

import pytest
import redis

from dispatch import campaign_reads, retention, store
from tests.smtp_server import SmtpTestServer
from tests.test_review_p14_counts_close import bits, delivered, delivered_once

DAY = 86400.0
TOO_LONG = (2e11, float("inf"))  # days: 2e11 is about 1.7e22 ms from now


@pytest.mark.parametrize("days", TOO_LONG)
def test_a_purge_with_a_retention_too_long_for_an_expiry_never_closes_the_counts(
    redis_client: redis.Redis, smtp: SmtpTestServer, days: float
) -> None:
    r = redis_client
    metas = delivered_once(r, smtp, "v14-a")
    assert retention.purge(r, "v14-a", now=time.time(), retention_days=days)

    summary = campaign_reads.campaign_summary("v14-a", r)
    assert summary["purged_at"] is not None and summary["counts_closed_at"] is None
    assert not r.zscore(store.KEPT_ZSET, "v14-a")  # the purge went to its end
    assert r.pttl(bits("v14-a", "delivered")) == -1  # kept, without expiry
    assert delivered(r, metas, 1, "v14-a-1")
    assert campaign_reads.get_counters("v14-a", r)["delivered"] == 2


@pytest.mark.parametrize("days", TOO_LONG)
def test_the_walk_over_earlier_purges_with_such_a_retention_does_not_fail_the_pass(
    redis_client: redis.Redis, smtp: SmtpTestServer, days: float
) -> None:
    r = redis_client
    delivered_once(r, smtp, "v14-b")
    # As an earlier version purged it: purged_at, its bitmaps without expiry.
    assert retention.purge(r, "v14-b", now=time.time() - DAY, retention_days=0)

    assert retention.purge_due(r, retention_days=days) == []
    assert r.exists(store.COUNTS_CLOSING_INDEXED)  # walked once, not at every pass
    assert campaign_reads.campaign_summary("v14-b", r)["counts_closed_at"] is None
    assert r.pttl(bits("v14-b", "delivered")) == -1
