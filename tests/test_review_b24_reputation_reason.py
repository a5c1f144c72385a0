"""The reputation guard's reason shows the rate above its limit (review B24).

The guard pauses as soon as a rate passes its limit, so the rate it reports is nearly
always just above it: at two decimals a campaign of 100,000 with 301 complaints read
"spam complaints are 0.30% ... above DISPATCH_PAUSE_SPAM_RATE 0.30%". Real Redis, the
callback gateway given a generic callback as an ESP posts it.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import campaign_reads
from dispatch.settings import get_settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_reputation import report, small

pytestmark = pytest.mark.usefixtures("small")
__all__ = ["small"]  # a fixture: batches of 10, rates judged from 10 sent


def test_the_reason_shows_the_rate_above_its_limit(
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

    # Applied in this process, as the task does (a session worker taking the API's task
    # would judge it with its own settings: DISPATCH_PAUSE_MIN_SENT 1000, no pause).
    report(redis_client, campaign_id, ("spam", 5))

    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith(
        "reputation guard: spam complaints are 3.333% of the 30 messages sent (1), "
        "above DISPATCH_PAUSE_SPAM_RATE 3.330%;"
    ), summary["reason"]
