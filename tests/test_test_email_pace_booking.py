"""A test email the provider's pace would send past its deadline books nothing: a pace
booking is never given back, so each refused test pushed every campaign's next send of
that provider one interval further (one a 100 s here: two refused tests, 200 s)."""

from __future__ import annotations

import asyncio
import re

import redis

from dispatch import store
from dispatch.test_email import TestEmailResult
from tests.smtp_server import free_port
from tests.test_review_u12_test_email_pace import _config, _just_sent


def _test_now(deadline: float) -> TestEmailResult:
    from dispatch import test_email

    config = _config(free_port(), 0.01)  # one message a 100 s (nothing listens: none goes)

    async def go() -> TestEmailResult:
        return await test_email.within_shared_limits(
            lambda limits: test_email.send_test_email(
                config, "ops@example.com", deadline=deadline, limits=limits
            )
        )

    return asyncio.run(go())


def _next_in(result: TestEmailResult) -> int:
    found = re.search(r"sends its next message in (\d+) s", result.detail)
    assert found is not None, result.detail
    return int(found[1])


def test_a_test_the_pace_refuses_books_nothing(redis_client: redis.Redis) -> None:
    asyncio.run(_just_sent(_config(free_port(), 0.01)))
    pace = f"{store.PREFIX}:pace:paced"
    booked = float(redis_client.get(pace) or 0)
    first, second = _test_now(5.0), _test_now(5.0)
    assert (first.ok, second.ok) == (False, False)
    assert first.error == second.error == "SMTP connection error"
    assert 97 <= _next_in(first) <= 100 and 97 <= _next_in(second) <= 100
    assert float(redis_client.get(pace) or 0) == booked  # the campaigns' next send as it was
