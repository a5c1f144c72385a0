"""Upgrading from the version that counted a UTC day (review AB24).

That version kept ``quota:NICK:YYYYMMDD`` and set its TTL again (two days) at each grant,
so the TTL tells when its last send was counted. The rolling window took its counts in
as sent at the upgrade's first send (today's) or at 23:59 (yesterday's): a daily
newsletter sent at 09:00 by the old version could not go at 09:00 the next day (its
provider's window, first made then, took in yesterday's quota as sent at 23:59, and
paused it until 00:00 the day after), and a quota used up at 01:00 held for 24 hours from
whenever the new version first sent. The counts now go in as of their last send.

Real Redis; the old keys written as the older version wrote them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import store
from dispatch.limits import QuotaExhaustedError
from tests.test_review_a24_rolling_quota import DAY, MIDNIGHT, _Clock, _config, _takes

OLD_TTL = 172800  # what the older version set the counter's TTL to at each grant


def _old_counter(r: redis.Redis, day: float, count: int, last_sent: float, now: float) -> None:
    """The older version's counter of the UTC day starting at ``day``, its TTL as that
    version left it at ``last_sent`` and read at ``now``."""
    key = f"{store.PREFIX}:quota:p:{datetime.fromtimestamp(day, UTC):%Y%m%d}"
    r.set(key, count, ex=int(OLD_TTL - (now - last_sent)))


def test_yesterdays_sends_leave_the_window_24_hours_after_they_went(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old version sent the quota (10) at 09:00; the next send is the new version's,
    at 09:05 the next day: all 10 may go (they were refused, until 00:00 a day later)."""
    clock = _Clock(monkeypatch, redis_client)
    sent, first_new = MIDNIGHT - DAY + 9 * 3600, MIDNIGHT + 9 * 3600 + 300
    _old_counter(redis_client, MIDNIGHT - DAY, 10, sent, first_new)
    assert asyncio.run(_takes(_config(daily_quota=10), [(first_new, 10)], clock)) == [10]


def test_todays_sends_count_from_when_they_went_not_from_the_upgrade(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old version used the quota up at 01:00; the new one first sends at 23:00: the
    campaign resumes at 01:02 the next day (it was 23:02), and the quota is whole then;
    nothing is given twice (none at 00:30, after the old version's day ended)."""
    clock = _Clock(monkeypatch, redis_client)
    sent, first_new = MIDNIGHT + 3600, MIDNIGHT + 23 * 3600
    _old_counter(redis_client, MIDNIGHT, 10, sent, first_new)
    steps = [(first_new, 1), (MIDNIGHT + DAY + 1800, 1), (MIDNIGHT + DAY + 3720, 10)]
    at_upgrade, after_midnight, room = asyncio.run(_takes(_config(daily_quota=10), steps, clock))
    assert isinstance(at_upgrade, QuotaExhaustedError), at_upgrade
    assert at_upgrade.resumes_at == sent + DAY + 120
    when = datetime.fromtimestamp(MIDNIGHT, UTC) + timedelta(days=1, hours=1, minutes=2)
    assert f"resumes by itself at {when:%Y-%m-%d %H:%M} UTC" in at_upgrade.detail
    assert isinstance(after_midnight, QuotaExhaustedError), after_midnight
    assert room == 10


def test_a_counter_without_the_old_ttl_counts_as_of_the_upgrade(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter whose TTL the older version did not set (written by hand, no expiry)
    tells nothing of when it was sent: counted as of now, as before."""
    clock = _Clock(monkeypatch, redis_client)
    redis_client.set(f"{store.PREFIX}:quota:p:{datetime.fromtimestamp(MIDNIGHT, UTC):%Y%m%d}", 10)
    steps = [(MIDNIGHT + 23 * 3600, 1)]
    (got,) = asyncio.run(_takes(_config(daily_quota=10), steps, clock))
    assert isinstance(got, QuotaExhaustedError)
    assert got.resumes_at == MIDNIGHT + 23 * 3600 + DAY + 120
