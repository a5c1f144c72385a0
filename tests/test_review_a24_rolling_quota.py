"""Review A24: a provider's daily quotas count a rolling 24 hours, as Gmail and SES do.

Dispatch counted a UTC day: a Gmail provider with ``daily_quota: 2000`` sent 2000 at
23:59 UTC and 2000 more at 00:01 UTC, and Gmail then refused the rest (550 5.4.5) and
may block the account for a day. The README told users to give half the provider's
quota. Now a send counts until 24 hours (and a minute) after the minute of its turn, on
Redis's clock, and a used-up quota says when room frees. Redis's clock is moved here by
the quota script's own reading of it (no sleeping).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, limits, store
from dispatch.limits import Grant, ProviderLimiter, QuotaExhaustedError
from dispatch.settings import Settings
from providers.config import ProviderBase, parse_provider_config
from tests.helpers import run_batches
from tests.smtp_server import SmtpTestServer
from tests.test_quota_resume import _paused_by_quota

FAST = Settings(retry_base_seconds=0.05)
NOW_LINE = "local now = tonumber(t[1]) + tonumber(t[2]) / 1e6"
DAY = 86400.0
# A day well away from today: the tests' clock is moved there (mid-minute, so that the
# milliseconds a test takes never cross into the next minute).
MIDNIGHT = datetime(2031, 3, 10, tzinfo=UTC).timestamp()


class _Clock:
    """Redis's clock as the quota script reads it (and the host's day an older version
    read), moved to a chosen time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, r: redis.Redis) -> None:
        self.monkeypatch = monkeypatch
        self.r = r
        self.take = limits._TAKE
        assert NOW_LINE in self.take
        self.offset = store.redis_time(r) - time.time()  # (the same host: about 0)

    def at(self, when: float) -> None:
        shift = when - time.time() - self.offset
        self.monkeypatch.setattr(
            limits, "_TAKE", self.take.replace(NOW_LINE, f"{NOW_LINE} + {shift!r}")
        )

        class Moved(datetime):
            @classmethod
            def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
                return datetime.fromtimestamp(time.time() + shift, UTC)

        self.monkeypatch.setattr(limits, "datetime", Moved)
        # (housekeeping reads Redis's clock in Python)
        self.monkeypatch.setattr(store, "redis_time", lambda r: time.time() + self.offset + shift)


def _config(**fields: object) -> ProviderBase:
    return parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    )


async def _takes(
    config: ProviderBase, steps: list[tuple[float, int]], clock: _Clock, per: int = 1
) -> list[object]:
    """``take_some(n)`` at each (time, n) (``per`` recipients a message): the count
    granted, or the error raised."""
    client = store.async_client()
    out: list[object] = []
    try:
        limiter = ProviderLimiter(client, config, recipients_per_message=per)
        for when, n in steps:
            clock.at(when)
            try:
                out.append((await limiter.take_some(n)).count)
            except QuotaExhaustedError as exc:
                out.append(exc)
    finally:
        await client.aclose()
    return out


def test_a_quota_used_before_midnight_is_not_given_again_after_it(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota of 10 used at 23:59:30 UTC: at 00:01:30 none may go (the old code granted
    10 more: 20 in two minutes), nor 24 hours later to the minute; a minute after that
    all 10 may."""
    clock = _Clock(monkeypatch, redis_client)
    sent = MIDNIGHT - 30
    steps = [(sent, 10), (MIDNIGHT + 90, 10), (sent + DAY + 15, 1), (sent + DAY + 91, 10)]
    first, after_midnight, a_day_later, room = asyncio.run(
        _takes(_config(daily_quota=10), steps, clock)
    )
    assert first == 10
    assert isinstance(after_midnight, QuotaExhaustedError), after_midnight
    frees = MIDNIGHT - 60 + DAY + 120  # its minute (23:59) + 24 hours + a minute, ended
    assert after_midnight.resumes_at == frees
    assert "10 messages in the last 24 hours" in after_midnight.detail
    assert "resumes by itself at 2031-03-11 00:01 UTC" in after_midnight.detail
    assert isinstance(a_day_later, QuotaExhaustedError)
    assert room == 10


def test_sends_leave_the_window_minute_by_minute(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 sent at 10:00, 4 at 16:00: the next day at 10:02 the 6 have left the 24 hours,
    the 4 not (a UTC day gave all 10 back at midnight); a give-back of sends that did not
    go out frees at once."""
    clock = _Clock(monkeypatch, redis_client)
    ten = MIDNIGHT + 10 * 3600 + 30
    config = _config(daily_quota=10)
    steps = [(ten, 6), (ten + 6 * 3600, 4), (MIDNIGHT + DAY + 5, 1), (ten + DAY + 120, 10)]
    got = asyncio.run(_takes(config, steps, clock))
    assert got[:2] == [6, 4]
    assert isinstance(got[2], QuotaExhaustedError)  # the next day, 00:00: all 10 counted
    assert got[2].resumes_at == ten - 30 + DAY + 120
    assert got[3] == 6

    async def refunded() -> tuple[int, int]:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, config)
            clock.at(ten + 2 * DAY + 300)  # (all left: 10 free)
            grant = await limiter.take_some(10)
            await limiter.refund(grant, 3)  # 3 never went out
            return grant.count, (await limiter.take_some(10)).count
        finally:
            await client.aclose()

    assert asyncio.run(refunded()) == (10, 3)


def test_the_recipient_quota_frees_when_a_whole_message_fits(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 recipients a message, a recipient quota of 12: 2 messages at 08:00, 1 at 09:00 is
    refused (15 > 12); it may go once the 08:00 ones left, not before."""
    clock = _Clock(monkeypatch, redis_client)
    config = _config(daily_recipient_quota=12)
    eight = MIDNIGHT + 8 * 3600 + 30
    steps = [(when, 2) for when in (eight, eight + 3600, eight + DAY + 60, eight + DAY + 100)]
    first, later, not_yet, room = asyncio.run(_takes(config, steps, clock, per=5))
    assert first == 2
    assert isinstance(later, QuotaExhaustedError) and later.resumes_at == eight - 30 + DAY + 120
    assert "10 recipients in the last 24 hours" in later.detail
    assert isinstance(not_yet, QuotaExhaustedError)
    assert room == 2


def test_a_campaign_paused_by_the_quota_resumes_when_room_frees(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota of 5, a campaign of 8 at 23:58 UTC: 5 sent, then paused; beat's sweep does
    not resume it at 00:05 (the old code's new day sent 3 more there), it does 24 hours
    and two minutes after the 23:58 sends, and the 3 others go then, each once."""
    clock = _Clock(monkeypatch, redis_client)
    start = MIDNIGHT - 90
    clock.at(start)
    with SmtpTestServer() as smtp:
        cid = _paused_by_quota(redis_client, smtp)
        reason = campaign_reads.campaign_summary(cid, redis_client)["reason"]
        assert "resumes by itself at 2031-03-11 00:00 UTC" in str(reason)
        at = float(redis_client.hget(store.campaign_key(cid), "resume_at") or 0)
        assert at == MIDNIGHT - 120 + DAY + 120

        def sweep(now: float) -> list[tuple[str, int]]:
            clock.at(now)
            held: list[tuple[str, int]] = []
            done = housekeeping.sweep(redis_client, lambda c, b: held.append((c, b)), now=now)
            assert (cid in done["resumed"]) == bool(held)
            return held

        assert sweep(MIDNIGHT + 300) == []  # a new UTC day: nothing frees
        assert sweep(at - 1) == []
        held = sweep(at + 20)
        assert held
        run_batches(held, FAST)
        campaigns.finish_if_done(cid, redis_client)
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert campaign_reads.campaign_summary(cid, redis_client)["status"] == "completed"
    assert len(received) == 8 and max(received.values()) == 1


def test_room_that_frees_within_the_horizon_is_waited_for(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that may wait (a horizon) is told to wait until the room frees, rather
    than paused for it: a paced campaign goes on the next day at its pace."""
    clock = _Clock(monkeypatch, redis_client)
    sent = MIDNIGHT + 30

    async def go() -> tuple[int, Grant]:
        client = store.async_client()
        try:
            limiter = ProviderLimiter(client, _config(daily_quota=3))
            clock.at(sent)
            first = (await limiter.take_some(3)).count
            clock.at(sent + DAY + 60)  # the room frees at 00:00 + 24 h + 2 min
            return first, await limiter.take_some(3, tracked=True, horizon=45.0)
        finally:
            await client.aclose()

    first, waits = asyncio.run(go())
    assert first == 3
    assert waits.count == 0 and waits.wait == pytest.approx(30.0, abs=0.5)


def test_an_upgrade_counts_what_the_day_counters_held(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys an older version wrote (messages of today and of yesterday, UTC days) are
    taken into the window once: an upgrade at 00:30 UTC after 7 sent at 23:50 does not
    give 10 more (yesterday's counter is still within the 24 hours)."""
    clock = _Clock(monkeypatch, redis_client)
    today = datetime.fromtimestamp(MIDNIGHT, UTC)
    yesterday = f"{today - timedelta(days=1):%Y%m%d}"
    redis_client.set(f"{store.PREFIX}:quota:p:{yesterday}", 7, ex=172800)
    got = asyncio.run(_takes(_config(daily_quota=10), [(MIDNIGHT + 1830, 10)], clock))
    assert got == [3]
