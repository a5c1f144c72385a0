"""The reputation guard's reason shows the rate above its limit (review B24).

The guard pauses as soon as a rate passes its limit, so the rate it reports is nearly
always just above it: at two decimals a campaign of 100,000 with 301 complaints read
"spam complaints are 0.30% ... above DISPATCH_PAUSE_SPAM_RATE 0.30%". Real Redis, the
real API over HTTP, a generic callback as an ESP posts it.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import campaign_reads, effects, message_pages, store
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.callback_support import callback_path, generic_event, nested, post
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_reputation import small

pytestmark = pytest.mark.usefixtures("small")
__all__ = ["small"]  # a fixture: batches of 10, rates judged from 10 sent


def test_the_reason_shows_the_rate_above_its_limit(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One complaint of 30 is 3.333...%: past a limit of 3.33 %, and both 3.33% at two decimals.
    monkeypatch.setenv("DISPATCH_PAUSE_SPAM_RATE", "0.0333")
    get_settings.cache_clear()
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(40)}
    campaign_id, batches = create_held(redis_client, body)
    run_batches(batches[:3])  # 30 sent

    item = message_pages.messages_page(campaign_id, client=redis_client)[0][5]
    with api_server.client() as api:
        event = generic_event("spam", item["email"], item["meta"], description="abuse")
        answer = post(api, callback_path(redis_client, "local"), nested(event))
        assert answer.status_code == 200, answer.text
    for batch_id in redis_client.hkeys(store.CALLBACK_INBOX_HASH):  # as the worker does
        effects.apply_batch(batch_id, redis_client)

    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith(
        "reputation guard: spam complaints are 3.333% of the 30 messages sent (1), "
        "above DISPATCH_PAUSE_SPAM_RATE 3.330%;"
    ), summary["reason"]
