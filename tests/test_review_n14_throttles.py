"""Review N14: a claim given back unsent (dispatch.claim_returns) wrote its message's
throttled tries as none. Since 6dd9da2 a run cut short counts one, as a throttling reply
does, and a message fails at DISPATCH_MAX_THROTTLES of them: a give-back between them
started the count again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from dispatch import ledger, store
from dispatch.batch_items import Item
from dispatch.claim_returns import WAITED, give_back_after_failure, give_back_claims


@pytest.mark.parametrize("how", ["waiting", "after a failure"])
def test_a_claim_given_back_keeps_the_throttled_tries_of_its_message(
    redis_client: redis.Redis, how: str
) -> None:
    """A message its sender claimed, then gave back unsent (its slot lost while its chunk
    waited, above; or its claim's answer lost to the Redis error that ended the run)
    keeps its throttled tries in the ledger (GET /messages shows them, and its next run
    counts on from them): the give-back wrote them as none, and a message throttled, or
    its runs cut short, started counting again from nought."""
    campaign_id = "n14-throttles"

    async def go() -> dict[str, Any] | None:
        r = store.async_client()
        try:
            lease = ledger.BatchLease(r, campaign_id, 0, ttl_ms=60_000)
            assert await lease.acquire()
            writer = ledger.LedgerWriter(r, campaign_id, lease.token, 0)
            item = Item(0, "user0@example.com", "u0", {})
            item.attempts, item.throttles = 1, 2
            assert await writer.claim_many([(0, ledger.claim_record(1))]) == [True]
            item.claimed = True
            if how == "waiting":
                await give_back_claims(writer, [item], WAITED)
            else:
                await give_back_after_failure(writer, [item], 60_000)
            await lease.release()
            return ledger.parse_record(await r.hget(store.ledger_key(campaign_id), "0"))
        finally:
            await r.aclose()

    rec = asyncio.run(go())
    assert rec is not None and rec["state"] == "retry", rec
    assert (rec["attempts"], rec["throttles"]) == (1, 2), rec
