"""Scripts that raised after they had written (review AG25): Redis keeps those writes.

- Starting a campaign dropped its draft's set of addresses, then raised on a total that
  is not an integer (a hand edit, a bug): the campaign stayed a draft without that set,
  and a later append stored (and the start sent) an address it already had, twice.
- Giving back a grant refunded the messages window, then raised on the recipients
  window's bucket or sum (not an integer): the windows disagreed, the grant stayed out.
Both now refuse before their first write, naming the key and field.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import campaigns, store
from dispatch.limits import ProviderLimiter, quota_keys
from dispatch.recipient_append import RecipientAppender
from tests.test_limits import _config
from tests.test_recipient_store import _draft, _person, _stored


@pytest.mark.parametrize("value", ["many", "2.5", "-2000"])
def test_a_start_refused_on_a_bad_total_keeps_the_drafts_addresses(
    redis_client: redis.Redis, value: str
) -> None:
    r = redis_client
    cid = _draft(r)
    people = [_person(f"u{i}@example.com") for i in range(2)]
    assert RecipientAppender(cid, r).add(people) == (2, [])
    r.hset(store.counters_key(cid), "total", value)  # a hand edit, an old bug
    sent: list[int] = []
    with pytest.raises(redis.ResponseError, match=f"total is {value}, not an integer"):
        campaigns.start_campaign(cid, client=r, enqueue=lambda c, b: sent.append(b))
    assert r.hget(store.campaign_key(cid), "status") == "draft" and not sent
    assert r.scard(store.addresses_key(cid)) == 2  # still there: appends still skip
    r.hset(store.counters_key(cid), "total", "2")  # mended by a person
    assert RecipientAppender(cid, r).add(people) == (0, [0, 1])  # repeats, skipped
    assert _stored(r, cid)[0] == ["u0@example.com", "u1@example.com"]
    assert campaigns.start_campaign(cid, client=r, enqueue=lambda c, b: sent.append(b)) == 1
    assert sent == [0] and not r.exists(store.addresses_key(cid))


@pytest.mark.parametrize(("field", "value"), [("bucket", "x"), ("bucket", "1.5"), ("sum", "y")])
def test_a_refund_refused_on_a_bad_recipient_window_gives_back_nothing(
    redis_client: redis.Redis, field: str, value: str
) -> None:
    r = redis_client
    config = _config(daily_quota=10, daily_recipient_quota=100)
    messages, recipients, out = quota_keys("p")

    async def settle_twice() -> None:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, config)
            grant = await limiter.take_some(2, tracked=True)
            assert grant.count == 2 and r.zcard(out) == 1
            name = str(grant.minute) if field == "bucket" else "sum"
            good = r.hget(recipients, name)
            r.hset(recipients, name, value)  # a hand edit, an old bug
            before = r.hgetall(messages), r.hgetall(recipients)
            with pytest.raises(redis.ResponseError, match=f"{name} is {value}, not an integer"):
                await limiter.settle(grant, 2)
            assert (r.hgetall(messages), r.hgetall(recipients)) == before  # nothing given back
            assert r.zcard(out) == 1
            r.hset(recipients, name, str(good))  # mended
            await limiter.settle(grant, 2)
        finally:
            await client.aclose()

    asyncio.run(settle_twice())
    assert r.hget(messages, "sum") == r.hget(recipients, "sum") == "0"
    assert r.zcard(out) == 0
