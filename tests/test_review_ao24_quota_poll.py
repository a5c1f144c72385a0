"""Review AO24: a sender that polls while a used-up quota's last grants are out.

A tracked sender that finds the daily quota taken while some grants are still out (they
may come back) is told to ask again in half a second, as every sender of every batch of
the provider is. Each such answer computed when the quota next leaves room, which is of
no use to a poll: a scan of the window's every minute (a whole day of sends: about
5 ms of Redis's time per poll, in one script, at two polls a second per sender). It is
read only when the answer is that the quota is used up.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import store
from dispatch.limits import QUOTA_POLL_SECONDS, Grant, ProviderLimiter, QuotaExhaustedError
from tests.test_review_a24_rolling_quota import DAY, MIDNIGHT, _Clock, _config


def _scans(r: redis.Redis) -> int:
    """How many HGETALL Redis ran since its statistics were reset (scripts' included)."""
    return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_a_poll_while_grants_are_out_reads_no_bucket_list(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotas of 3 messages and 3 recipients taken by a grant still out: another
    sender's asks are polls, and Redis scans neither window for them (it scanned both at
    each). Once the grant is settled, the quota is used up, resuming when the grant's
    minute leaves the 24 hours."""
    clock = _Clock(monkeypatch, redis_client)
    sent = MIDNIGHT + 30
    config = _config(daily_quota=3, daily_recipient_quota=3)

    async def go() -> tuple[Grant, list[Grant], int, QuotaExhaustedError]:
        client = store.async_client()
        try:
            holder = ProviderLimiter(client, config)
            poller = ProviderLimiter(client, config)
            clock.at(sent)
            grant = await holder.take_some(3, tracked=True)
            redis_client.config_resetstat()
            polls = [await poller.take_some(2, tracked=True, horizon=60.0) for _ in range(5)]
            scans = _scans(redis_client)
            await holder.settle(grant, 0)  # (all 3 went out)
            with pytest.raises(QuotaExhaustedError) as used_up:
                await poller.take_some(2, tracked=True, horizon=60.0)
            return grant, polls, scans, used_up.value
        finally:
            await client.aclose()

    grant, polls, scans, used_up = asyncio.run(go())
    assert grant.count == 3
    assert [(p.count, p.wait) for p in polls] == [(0, QUOTA_POLL_SECONDS)] * 5
    assert scans == 0
    assert used_up.resumes_at == sent - 30 + DAY + 120
