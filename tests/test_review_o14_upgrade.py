"""A rolling upgrade (review O14): what the previous release (5ba5125) left in Redis, a
campaign half sent and a connection slot held, is carried on by this version. The old
data is written here by hand, byte for byte as that release wrote it (its ledger records
and its slot set have the same shape as this version's: a change to either breaks a
campaign an upgrade takes over)."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.ledger import parse_record
from dispatch.limits import ConnectionSlots
from providers.config import SmtpConfig
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

N = 12
T = b"1795560000.0"  # (when the old worker wrote)
# What 5ba5125's workers wrote of messages 0-6 before they were stopped: four sent, one
# given back at a run's cut before its session opened (its throttled tries not kept),
# one throttled twice (due now), and one claimed by a run that was killed.
OLD_RECORDS = {
    **{seq: b'{"s":"sent","a":1,"t":' + T + b"}" for seq in range(4)},
    4: b'{"s":"retry","a":0,"t":' + T + b',"c":"SMTP timeout","d":"not sent: the '
    b"provider's session was still opening at the batch task's time limit "
    b'(DISPATCH_VISIBILITY_TIMEOUT / 2); the next run sends it"}',
    5: b'{"s":"retry","a":1,"t":' + T + b',"h":2,"c":"SMTP dispatching failed",'
    b'"d":"451 4.7.0 try again later","n":1.0}',
    6: b'{"s":"claimed","a":1}',
}


def test_a_campaign_half_sent_by_the_previous_release_is_finished_each_address_once(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port)
    body = {"id": "upgraded", "provider": "local", "subject": "s", "html": "<p>h</p>"}
    campaign_id, batches = create_held(redis_client, {**body, "recipients": recipients(N)})
    ledger, counters = store.ledger_key(campaign_id), store.counters_key(campaign_id)
    redis_client.hset(ledger, mapping={str(seq): rec for seq, rec in OLD_RECORDS.items()})
    redis_client.hincrby(counters, "queued", -4)  # (as its ledger script counted them)
    redis_client.hincrby(counters, "sent", 4)

    run_batches(batches)

    campaigns.finish_if_done(campaign_id, redis_client)
    received = Counter(a for m in smtp.handler.messages for a in m.rcpt_tos)
    # Sent before the upgrade: not again; the killed run's claim: unknown, not resent.
    assert sorted(received) == sorted(f"user{seq}@example.com" for seq in (4, 5, *range(7, N)))
    assert set(received.values()) == {1}
    states = [parse_record(redis_client.hget(ledger, str(seq))) for seq in range(N)]
    expected = ["sent"] * 6 + ["unknown"] + ["sent"] * (N - 7)
    assert [s["state"] if s else None for s in states] == expected
    assert (states[5] or {})["throttles"] == 2  # (the old record's count, kept)
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "completed"
    assert (summary["sent"], summary["unknown"], summary["queued"]) == (N - 1, 1, 0)


def test_a_connection_slot_an_old_worker_holds_counts_against_max_connections(
    redis_client: redis.Redis,
) -> None:
    """5ba5125's acquire script added its token scored by its expiry (Redis's clock); this
    version's acquire (a token holding its slot takes it again) still counts it, and
    takes its place once it has expired."""
    provider = SmtpConfig.model_validate(
        {"nickname": "mixed", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
         "security": "none", "from_address": "a@acme.example", "max_connections": 1}
    )  # fmt: skip
    key = f"{store.PREFIX}:connections:mixed"
    now = float(redis_client.time()[0])
    redis_client.zadd(key, {"old-worker-token": now + 2})

    async def twice() -> tuple[bool, bool]:
        slots = ConnectionSlots(store.async_client(), provider, ttl=60)
        try:
            refused = await slots.acquire("new-worker-token")
            while float(redis_client.time()[0]) <= now + 2:  # (the old slot expires)
                await asyncio.sleep(0.2)
            return refused, await slots.acquire("new-worker-token")
        finally:
            await slots.client.aclose()

    assert asyncio.run(twice()) == (False, True)
    assert redis_client.zrange(key, 0, -1) == ["new-worker-token"]
