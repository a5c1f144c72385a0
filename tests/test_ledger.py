"""The ledger script against a real Redis: claims, records, counters, events, fencing."""

from __future__ import annotations

import asyncio
import pickle

import orjson
import pytest
import redis

from dispatch import store
from dispatch.ledger import (
    BatchLease,
    LeaseLostError,
    LedgerWriter,
    claim_record,
    parse_record,
    record,
    system_event,
)
from dispatch.models import MessageState
from dispatch.settings import get_settings

CID = "ledger-test"


def _counters(client: redis.Redis) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(store.counters_key(CID)).items()}


def _run(coro_factory):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        r = store.async_client()
        try:
            return await coro_factory(r)
        finally:
            await r.aclose()

    return asyncio.run(go())


def _event(seq: int) -> str:
    return system_event(
        "Notification Sent",
        email=f"u{seq}@example.com",
        campaign_id=CID,
        meta=f"u{seq}@example.com|1|{CID}|20260101|0|d|{seq}|",
        provider="p",
    )


def test_claim_then_record_moves_counters_and_appends_one_event_each(
    redis_client: redis.Redis,
) -> None:
    redis_client.hset(store.counters_key(CID), mapping={"queued": 3, "sent": 0, "failed": 0})

    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID, provider="p")
        claimed = await w.claim_many([(s, claim_record(1)) for s in (0, 1, 2)])
        sent = record(MessageState.SENT, attempts=1)
        failed = record(MessageState.FAILED, attempts=1, detail="tab\there\nline")
        await w.put_many([(0, sent, _event(0)), (1, failed, "")])
        again = await w.claim_many([(s, claim_record(2)) for s in (0, 1, 2)])
        return claimed, again

    claimed, again = _run(go)
    assert claimed == [True, True, True]
    assert again == [False, False, False]  # settled, or still claimed (in flight)
    ledger = redis_client.hgetall(store.ledger_key(CID))
    assert parse_record(ledger["0"])["state"] == "sent"
    failed = parse_record(ledger["1"])
    assert failed is not None and failed["detail"] == "tab\there\nline"
    assert parse_record(ledger["2"])["state"] == "claimed"
    assert _counters(redis_client) == {"queued": 1, "sent": 1, "failed": 1}
    entries = redis_client.xrange(store.EVENTS_STREAM)
    assert [orjson.loads(e[1]["json"])["meta"] for e in entries] == [
        f"u0@example.com|1|{CID}|20260101|0|d|0|"
    ]
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert stats == {"p|sent": "1", "p|failed": "1"}


def test_a_message_waiting_for_a_retry_can_be_claimed_again(redis_client: redis.Redis) -> None:
    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID)
        await w.claim_many([(7, claim_record(1))])
        await w.put_many([(7, record(MessageState.RETRY, attempts=1), "")])
        return await w.claim_many([(7, claim_record(2))])

    assert _run(go) == [True]
    assert parse_record(redis_client.hget(store.ledger_key(CID), "7"))["attempts"] == 2


def test_two_operations_on_one_message_in_one_round_trip_apply_in_order(
    redis_client: redis.Redis,
) -> None:
    """Coalesced callers can put the same seq twice in one script call."""

    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID)
        first = w.claim_many([(5, claim_record(1))])
        second = w.claim_many([(5, claim_record(1))])
        return await asyncio.gather(first, second)

    assert _run(go) == [[True], [False]]
    assert _counters(redis_client) == {}  # a claim stays in the queued bucket: no move


def test_thousands_of_operations_in_one_call(redis_client: redis.Redis) -> None:
    n = 5000  # more than one HMGET/HSET piece

    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID, provider="p")
        claimed = await w.claim_many([(s, claim_record(1)) for s in range(n)])
        sent = record(MessageState.SENT, attempts=1)
        await w.put_many([(s, sent, _event(s)) for s in range(n)])
        return claimed

    assert _run(go) == [True] * n
    assert redis_client.hlen(store.ledger_key(CID)) == n
    assert redis_client.xlen(store.EVENTS_STREAM) == n
    assert _counters(redis_client) == {"queued": -n, "sent": n}


def test_a_writer_that_lost_its_lease_writes_nothing(redis_client: redis.Redis) -> None:
    async def go(r):  # type: ignore[no-untyped-def]
        lease = BatchLease(r, CID, 0, ttl_ms=60_000)
        assert await lease.acquire()
        w = LedgerWriter(r, CID, lease.token, 0)
        assert await w.claim_many([(0, claim_record(1))]) == [True]
        await r.set(store.batch_lease_key(CID, 0), "someone-else")  # taken over
        with pytest.raises(LeaseLostError):
            await w.claim_many([(1, claim_record(1))])
        await lease.release()

    _run(go)
    assert redis_client.hkeys(store.ledger_key(CID)) == ["0"]


def test_a_record_must_carry_its_state_first() -> None:
    async def go(r):  # type: ignore[no-untyped-def]
        with pytest.raises(ValueError, match="state"):
            await LedgerWriter(r, CID).put_many([(0, b'{"e":"x"}', "")])

    _run(go)


def test_a_group_of_one_record_with_events_for_some_messages_only(
    redis_client: redis.Redis,
) -> None:
    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID, provider="p")
        sent = record(MessageState.SENT, attempts=1)
        await w.put_many([(0, sent, _event(0)), (1, sent, ""), (2, sent, _event(2))])

    _run(go)
    metas = [orjson.loads(e[1]["json"])["meta"] for e in redis_client.xrange(store.EVENTS_STREAM)]
    assert metas == [f"u{s}@example.com|1|{CID}|20260101|0|d|{s}|" for s in (0, 2)]
    assert redis_client.hlen(store.ledger_key(CID)) == 3


def test_the_event_stream_stays_bounded(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_EVENTS_MAXLEN", "1000")  # the least it may be
    get_settings.cache_clear()

    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID, provider="p")
        sent = record(MessageState.SENT, attempts=1)
        await w.put_many([(s, sent, _event(s)) for s in range(3000)])

    try:
        _run(go)
    finally:
        monkeypatch.delenv("DISPATCH_EVENTS_MAXLEN")
        get_settings.cache_clear()
    # Trimmed approximately ("~"): whole stream nodes (100 entries each) at a time.
    assert 1000 <= redis_client.xlen(store.EVENTS_STREAM) <= 1100
    last = orjson.loads(redis_client.xrevrange(store.EVENTS_STREAM, count=1)[0][1]["json"])
    assert last["meta"].endswith("|2999|")  # the newest are kept


@pytest.mark.parametrize("appending", [False, True])
def test_the_write_that_settles_the_last_queued_message_completes_the_campaign(
    redis_client: redis.Redis, appending: bool
) -> None:
    campaign = store.campaign_key(CID)
    redis_client.hset(campaign, mapping={"status": "running"})
    if appending:  # create_campaign is still storing recipients: not done yet
        redis_client.hset(campaign, "appending", "1")
    redis_client.hset(store.counters_key(CID), mapping={"queued": 2, "sent": 0})

    async def go(r):  # type: ignore[no-untyped-def]
        w = LedgerWriter(r, CID, provider="p")
        sent = record(MessageState.SENT, attempts=1)
        await w.put_many([(0, sent, "")])
        first = await r.hget(campaign, "status")
        await w.put_many([(1, sent, "")])
        return first

    assert _run(go) == "running"  # one message still queued
    status = redis_client.hget(campaign, "status")
    assert status == ("running" if appending else "completed")
    if not appending:
        assert float(redis_client.hget(campaign, "completed_at") or 0) > 1_700_000_000


def test_the_outcome_of_an_own_claim_is_recorded_without_reading_it(
    redis_client: redis.Redis,
) -> None:
    """``settle_many``: the sender claimed these under its lease, so the script takes
    their current record as ``claimed`` (counters move from the queued bucket)."""
    redis_client.hset(store.counters_key(CID), mapping={"queued": 2, "sent": 0})

    async def go(r):  # type: ignore[no-untyped-def]
        lease = BatchLease(r, CID, 0, ttl_ms=60_000)
        assert await lease.acquire()
        w = LedgerWriter(r, CID, lease.token, 0, provider="p")
        assert await w.claim_many([(s, claim_record(1)) for s in (0, 1)]) == [True, True]
        sent = record(MessageState.SENT, attempts=1)
        await w.settle_many([(0, sent, _event(0)), (1, record(MessageState.RETRY), "")])
        await r.set(lease.key, "someone-else")  # taken over: nothing more is written
        with pytest.raises(LeaseLostError):
            await w.settle_many([(1, sent, _event(1))])

    _run(go)
    ledger = redis_client.hgetall(store.ledger_key(CID))
    assert {s: parse_record(v)["state"] for s, v in ledger.items()} == {"0": "sent", "1": "retry"}
    assert _counters(redis_client) == {"queued": 1, "sent": 1}
    assert redis_client.xlen(store.EVENTS_STREAM) == 1


def test_a_lease_lost_error_reads_back_the_same_from_a_pickle() -> None:
    """Its text is built from the lease's key: read back from a pickle (a task's failure
    in the result backend) it said everything twice."""
    error = LeaseLostError("dispatch:lease:c:0")
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.key) == (str(error), error.key)
