"""Review AO24: a campaign whose messages have more recipients (to, cc and bcc) than the
provider's daily recipient quota can never send; when the message quota was used up too
(by another campaign), the reason named the message quota and said the campaign
'resumes by itself at 1969-12-31 23:59 UTC' (the pace script's 'never', -1, read as a
time), and it never did. It now says what a person must change."""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import store
from dispatch.limits import ProviderLimiter, QuotaExhaustedError
from tests.test_review_a24_rolling_quota import MIDNIGHT, _Clock, _config


def test_a_message_no_recipient_quota_fits_is_named_when_both_are_used_up(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotas of 2 messages and 3 recipients, both messages sent (one recipient each);
    a campaign with 3 bcc (4 recipients a message) is told none of its can ever go."""
    clock = _Clock(monkeypatch, redis_client)
    config = _config(daily_quota=2, daily_recipient_quota=3)

    async def go() -> tuple[int, QuotaExhaustedError]:
        client = store.async_client()
        try:
            clock.at(MIDNIGHT + 30)
            sent = (await ProviderLimiter(client, config).take_some(5)).count
            with pytest.raises(QuotaExhaustedError) as refused:
                await ProviderLimiter(client, config, recipients_per_message=4).take_some(5)
            return sent, refused.value
        finally:
            await client.aclose()

    sent, refused = asyncio.run(go())
    assert sent == 2
    assert refused.resumes_at is None
    assert "each message has 4 recipients (to, cc and bcc)" in refused.detail
    assert "none can go on any day" in refused.detail
    assert "1969" not in refused.detail and "resumes by itself" not in refused.detail
