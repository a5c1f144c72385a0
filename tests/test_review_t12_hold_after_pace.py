"""Review T12: a sender that waited for its turn on the provider's pace looks at the
provider's hold again before it sends. The pace script reads the hold when it books a
turn, but a throttling reply elsewhere (another worker) that held the provider while the
sender waited was not seen: it sent into the hold."""

from __future__ import annotations

import asyncio
import threading
import time

import redis
import redis.asyncio as aioredis

from dispatch import campaign_reads, store
from dispatch.limits import ProviderLimiter
from dispatch.redis_server import RedisServer
from providers.config import parse_provider_config
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

HOLD = f"{store.PREFIX}:hold:local"
PACE = f"{store.PREFIX}:pace:local"


def test_a_hold_set_while_a_sender_waits_for_its_pace_holds_its_send(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """One connection at a message every 2 s: the second message's turn is booked as the
    first goes out; then another worker's throttling reply holds the provider for 5 s
    (set in Redis, not seen by this process). On the old code the second message went
    out at its turn, 3 s into the hold; now it waits for the hold's end."""
    held_at_rcpt: dict[str, int] = {}

    def rcpt(address: str) -> str | None:
        held_at_rcpt[address] = int(redis_client.pttl(HOLD))
        return None  # (accepted)

    def hold_once_the_second_turn_is_booked() -> None:
        seen: list[str | None] = []
        deadline = time.monotonic() + 20
        while len(set(seen) - {None}) < 2 and time.monotonic() < deadline:
            value = redis_client.get(PACE)
            if not seen or value != seen[-1]:
                seen.append(value)
            time.sleep(0.005)
        redis_client.set(HOLD, "1", px=5000)

    smtp.handler.rcpt_reply = rcpt
    smtp_provider(redis_client, smtp.port, max_connections=1, rate_per_second=0.5)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2)}
    holder = threading.Thread(target=hold_once_the_second_turn_is_booked)
    holder.start()
    try:
        campaign_id, _ = run_inline(redis_client, body)
    finally:
        holder.join()
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [
        "user0@example.com",
        "user1@example.com",
    ]
    assert held_at_rcpt["user1@example.com"] <= 0  # (-2: no hold) not sent while held
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["sent"], summary["unknown"], summary["failed"]) == (2, 0, 0)


def test_a_sender_that_waited_for_its_pace_looks_at_the_hold_without_a_round_trip(
    own_redis: RedisServer,
) -> None:
    """Each grant tells the process how long the provider is held: a sender that looks
    again after its pace's wait asks Redis nothing more (a generous pace, whose senders
    wait a little for nearly every chunk, would pay a round trip each)."""

    async def work() -> tuple[float, int]:
        client = aioredis.from_url(own_redis.url, decode_responses=True)
        try:
            data = {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25}
            limiter = ProviderLimiter(
                client, parse_provider_config({**data, "rate_per_second": 1000})
            )
            await limiter.take_some(100)
            await client.config_resetstat()
            held = await limiter.held()
            stats = await client.info("commandstats")
            return held, stats.get("cmdstat_pttl", {}).get("calls", 0)
        finally:
            await client.aclose()

    assert asyncio.run(work()) == (0.0, 0)
