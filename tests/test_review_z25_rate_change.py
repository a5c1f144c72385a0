"""A provider's ``rate_per_second`` changed while its campaign sends (review Z25): real
Redis, a real SMTP server, the batch run as a worker runs it.

Each sender of a slowly paced batch reserves its next send on the provider's shared pace
(one a sender: at one send every ten seconds, four senders reserve forty seconds ahead).
A faster rate saved meanwhile stops the batch and runs it again with the new rate, but
the next sends waited out the reservations made at the old rate (the stopped senders',
never used): raising 0.2 a second to 50 took 22 s to show with one worker, and minutes at
one a minute.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.limits import ProviderLimiter
from dispatch.models import CampaignRequest
from dispatch.provider_store import load_provider
from dispatch.sending import run_batch
from dispatch.session_pool import SessionPool
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer

SETTINGS = Settings(batch_size=20, retry_base_seconds=0.05, sessions_per_worker=4)


def _limiter(client: object, rate: float) -> ProviderLimiter:
    config = parse_provider_config(
        {"nickname": "paced", "kind": "smtp", "host": "127.0.0.1", "port": 25,
         "rate_per_second": rate}
    )  # fmt: skip
    return ProviderLimiter(client, config)  # type: ignore[arg-type]


def test_a_faster_rate_saved_mid_batch_is_not_held_back_by_the_slower_reservations(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One send every ten seconds, four senders (reserved up to 30 s ahead); the rate
    raised to 100 a second after the first send: the batch runs again, and its next
    send's turn comes at once (was: after the old reservations, 30 s on), then the rest
    go, each once."""
    monkeypatch.setattr(campaigns, "get_settings", lambda: SETTINGS)
    with SmtpTestServer() as server:
        smtp_provider(redis_client, server.port, rate_per_second=0.1)
        body = {"provider": "local", "subject": "Hi", "html": "<p>hi</p>",
                "recipients": recipients(12)}  # fmt: skip
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=redis_client, enqueue=lambda c, b: None
        )
        pool = SessionPool(30.0)

        async def go() -> tuple[float, dict[str, int]]:
            client = store.async_client()
            try:

                async def raise_rate() -> None:
                    while not server.messages:
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.3)  # (every sender has reserved its send)
                    await asyncio.to_thread(
                        smtp_provider, redis_client, server.port, rate_per_second=100
                    )

                aside = asyncio.create_task(raise_rate())
                first = await run_batch(cid, 0, r=client, settings=SETTINGS, pool=pool)
                await aside
                assert first.counts.get("reconfigured")  # (runs again with the new rate)
                # The next send at the new rate: its turn now (was: 30 s on).
                new = ProviderLimiter(client, load_provider("local", redis_client))
                wait = (await new.take_some(1)).wait
                second = await run_batch(cid, 0, r=client, settings=SETTINGS, pool=pool)
                await pool.close_all()
                return wait, second.counts
            finally:
                await client.aclose()

        wait, counts = asyncio.run(go())
        assert wait < 1.0, wait
        assert counts.get("sent") == 11
        assert sorted(to for m in server.messages for to in m.rcpt_tos) == sorted(
            r["email"] for r in recipients(12)
        )
        assert campaign_reads.get_counters(cid, redis_client)["sent"] == 12


def _near(wait: float, reserved: float) -> bool:
    """A wait the pace script answered for a send ``reserved`` seconds after the first
    take: shorter by the time that passed between the takes (a loaded machine's), never
    longer."""
    return reserved - 0.3 <= wait <= reserved + 0.05


def test_a_slower_rate_keeps_the_reservations_made_and_paces_after_them(
    redis_client: redis.Redis,
) -> None:
    """Lowered (an ESP asks to slow down): what was reserved at the faster rate keeps
    its turn, and the sends after it go at the slower rate, one a second here."""

    async def go() -> list[float]:
        client = store.async_client()
        try:
            fast, slow = _limiter(client, 10), _limiter(client, 1)
            waits = [(await fast.take_some(1)).wait for _ in range(5)]  # 0 .. 0.4 s
            waits += [(await slow.take_some(1)).wait for _ in range(2)]
            return waits
        finally:
            await client.aclose()

    waits = asyncio.run(go())
    assert _near(waits[4], 0.4)
    assert _near(waits[5], 0.5)  # after the fast ones' last
    assert _near(waits[6], 1.5)  # then at the slower rate


def test_the_pace_of_a_faster_rate_is_shortened_once_and_then_kept(
    redis_client: redis.Redis,
) -> None:
    """Four sends reserved at one every ten seconds (30 s ahead), then the rate raised to
    ten a second: the reservations count as four sends at the new rate (0.4 s), and the
    new rate's own reservations are not shortened again."""

    async def go() -> list[float]:
        client = store.async_client()
        try:
            slow, fast = _limiter(client, 0.1), _limiter(client, 10)
            for _ in range(4):
                await slow.take_some(1)
            return [(await fast.take_some(1)).wait for _ in range(3)]
        finally:
            await client.aclose()

    waits = asyncio.run(go())
    assert all(map(_near, waits, [0.4, 0.5, 0.6])), waits  # was: 40, 40.1, 40.2
    assert redis_client.get(f"{store.PREFIX}:pace:paced:rate") == "10.0"
