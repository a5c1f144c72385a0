"""A quota refusal that no 24 hours would lift (more asked at once than the quota holds)
named a resume time of 1969: the room's time was -1, "never", written out as a date."""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import store
from dispatch.limits import ProviderLimiter, QuotaExhaustedError
from providers.config import parse_provider_config


def _config(**fields: object) -> object:
    return parse_provider_config(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    )


def _refusal(limiter_for: list[tuple[dict[str, object], int, int]]) -> QuotaExhaustedError:
    """The refusal of the last of the given takes ((fields, recipients a message, n))."""

    async def go() -> QuotaExhaustedError:
        client = store.async_client()
        try:
            *before, (fields, per, n) = limiter_for
            for f, p, k in before:
                await ProviderLimiter(client, _config(**f), p).take(k)  # type: ignore[arg-type]
            last = ProviderLimiter(client, _config(**fields), per)  # type: ignore[arg-type]
            with pytest.raises(QuotaExhaustedError) as caught:
                await last.take_some(n) if n == 1 else await last.take(n)
            return caught.value
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_more_at_once_than_the_quota_waits_for_a_person(redis_client: redis.Redis) -> None:
    refusal = _refusal([({"daily_quota": 5}, 1, 6)])
    assert refusal.resumes_at is None
    assert "1969" not in str(refusal) and "resumes by itself" not in str(refusal)


def test_messages_quota_full_and_a_message_over_the_recipient_quota(
    redis_client: redis.Redis,
) -> None:
    """The messages quota used up, and each message of this campaign has more recipients
    than the recipient quota: none can go on any day, as when that quota alone stops it."""
    fields = {"daily_quota": 1, "daily_recipient_quota": 1}
    refusal = _refusal([(fields, 1, 1), (fields, 2, 1)])
    assert refusal.resumes_at is None
    assert "1969" not in str(refusal)
    assert "more than the daily recipient quota of 1" in str(refusal)
