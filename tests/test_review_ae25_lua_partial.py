"""Scripts that raised after they had written (review AE25): Redis keeps those writes,
and the retry finds them.

- The recipient append marked a chunk's addresses known, then raised on the campaign's
  counters (a total or queued that is not an integer, a total whose part-filled last
  page is missing: a hand edit, a bug). Its recipients were never stored, or stored and
  not counted, and the retry, once the counters were mended, skipped every one of them
  as a repeat: never sent. It now refuses before its first write.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import store
from dispatch.limits import ProviderLimiter, quota_keys
from dispatch.recipient_append import RecipientAppender
from providers.config import parse_provider_config
from tests.test_recipient_store import _draft, _person, _stored


@pytest.mark.parametrize(
    ("field", "value", "first"),
    [("total", "many", 1), ("total", "1e3", 1), ("queued", "x", 1), ("total", "3", 0)],
)
def test_an_append_refused_on_bad_counters_writes_nothing_and_its_retry_stores_all(
    redis_client: redis.Redis, field: str, value: str, first: int
) -> None:
    r = redis_client
    cid = _draft(r)
    appender = RecipientAppender(cid, r)
    appender.add([_person(f"a{i}@example.com") for i in range(first)])
    good = r.hget(store.counters_key(cid), field)
    r.hset(store.counters_key(cid), field, value)  # a hand edit, an old bug
    people = [_person(f"u{i}@example.com") for i in range(3)]
    with pytest.raises(redis.ResponseError, match=f"{field} is {value}.*nothing appended"):
        appender.add(people)
    assert r.scard(store.addresses_key(cid)) == first  # none of the chunk marked known
    r.hset(store.counters_key(cid), field, str(good))  # mended by a person
    assert appender.add(people) == (3, [])  # the retry stores them all
    docs, _ = _stored(r, cid)
    assert docs == [f"a{i}@example.com" for i in range(first)] + [
        f"u{i}@example.com" for i in range(3)
    ]
    assert int(r.hget(store.counters_key(cid), "queued") or 0) == first + 3


def test_an_append_to_counters_of_another_type_writes_nothing(redis_client: redis.Redis) -> None:
    r = redis_client
    cid = _draft(r)
    appender = RecipientAppender(cid, r)
    r.delete(store.counters_key(cid))
    r.set(store.counters_key(cid), "0")
    with pytest.raises(redis.ResponseError, match="is a string: nothing appended"):
        appender.add([_person("u@example.com")])
    assert r.scard(store.addresses_key(cid)) == 0


def test_a_take_refused_on_a_bad_recipient_window_books_no_message_quota(
    redis_client: redis.Redis,
) -> None:
    r = redis_client
    config = parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "daily_quota": 10, "daily_recipient_quota": 100}
    )  # fmt: skip
    messages, recipients, _ = quota_keys("p")

    async def takes() -> list[object]:
        client = store.async_client()
        out: list[object] = []
        try:
            limiter = ProviderLimiter(client, config)
            out.append((await limiter.take_some(1)).count)
            r.hset(recipients, "sum", "1.5")  # a hand edit, an old bug
            for _ in range(3):  # the batch tried again
                with pytest.raises(redis.ResponseError, match=r"sum is 1\.5, .*nothing booked"):
                    await limiter.take_some(2)
            r.hset(recipients, "sum", "1")  # mended
            out.append((await limiter.take_some(2)).count)
        finally:
            await client.aclose()
        return out

    assert asyncio.run(takes()) == [1, 2]
    assert r.hget(messages, "sum") == "3"  # the refused takes booked nothing
    assert r.hget(recipients, "sum") == "3"
