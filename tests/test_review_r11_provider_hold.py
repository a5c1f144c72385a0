"""The provider's hold after a throttling reply (review R11): only a reply about the
provider holds it, and a process's sessions look at it together."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatch import message_pages, store
from dispatch.limits import ProviderLimiter
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

HOLD = f"{store.PREFIX}:hold:local"
BUSY = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"


def test_a_recipients_busy_mailbox_does_not_hold_the_provider(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``450 4.2.1`` to one RCPT is that mailbox's (Gmail: "receiving mail too
    quickly"; greylisting alike): the message waits as a throttled try, but no worker is
    held for it (one such mailbox in twenty held the provider for up to
    inline_retry_seconds, hold after hold, and a campaign took minutes, not seconds)."""
    answered: set[str] = set()

    def rcpt(address: str) -> str | None:
        if address == "user2@example.com" and address not in answered:
            answered.add(address)
            return BUSY
        return None

    smtp.handler.rcpt_reply = rcpt
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(6)}
    settings = Settings(retry_base_seconds=0.2, retry_max_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_outcomes"):
        campaign_id, _ = run_inline(redis_client, body, settings)
    everyone = [f"user{i}@example.com" for i in range(6)]
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == everyone
    page, _ = message_pages.messages_page(campaign_id, client=redis_client)
    assert [(m["status"], m["throttles"]) for m in page][2] == ("sent", 1)
    assert not [r for r in caplog.records if "held for" in r.getMessage()]
    assert not redis_client.exists(HOLD)


def test_a_process_s_sessions_look_at_the_hold_together(own_redis: RedisServer) -> None:
    """A provider without pace or quota: eight sessions of one process asking for a
    grant at once look at its hold in Redis once, not once each."""

    async def work() -> Any:
        client = aioredis.from_url(own_redis.url, decode_responses=True)
        try:
            data = {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25}
            provider = parse_provider_config(data)
            sessions = [ProviderLimiter(client, provider) for _ in range(8)]
            await client.config_resetstat()
            grants = await asyncio.gather(*(s.take_some(4) for s in sessions))
            stats = await client.info("commandstats")
            return grants, stats.get("cmdstat_pttl", {}).get("calls", 0)
        finally:
            await client.aclose()

    grants, peeks = asyncio.run(work())
    assert [(g.count, g.wait) for g in grants] == [(4, 0.0)] * 8
    assert peeks == 1


def test_holds_in_a_row_last_no_longer_than_the_longest_backoff(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Three throttles in a row (one message's three tries) with
    DISPATCH_RETRY_MAX_SECONDS=0.2: no throttled message waits longer, nor does the
    provider (the holds doubled to inline_retry_seconds, 30 s: an outage of 451s that the
    workers' tests sat out in seconds took them minutes)."""
    replies = ["451 4.3.0 temporary outage, try later"] * 3

    def data_reply(envelope: Any) -> str | None:
        return replies.pop() if replies else None

    smtp.handler.data_reply = data_reply  # type: ignore[assignment]
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(1)}
    settings = Settings(retry_base_seconds=0.2, retry_max_seconds=0.2, inline_retry_seconds=30)
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_outcomes"):
        run_inline(redis_client, body, settings)
    holds: list[Any] = [r for r in caplog.records if "held for" in r.getMessage()]
    assert len(holds) == 3  # each throttle held it anew, none longer than the backoff
    assert all(0 < r.hold_seconds <= 0.2 for r in holds)
    assert [m.rcpt_tos for m in smtp.messages] == [["user0@example.com"]]
