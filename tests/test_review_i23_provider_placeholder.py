"""A provider saved again with a payload placeholder its running campaign's recipients lack
(review I23): real Redis, a real HTTP server, the batches run as a worker runs them.

Every recipient is checked against its provider's ``$$`` placeholders when stored, so such
a failure at send time comes with the provider's new configuration, not with the
recipient: every message still queued fails ``Invalid message`` (the failure breaker
pauses a big campaign after the first 100). Once the provider is saved back, retry-failed
must send those again; it skipped them as the recipients' own fault, lost for good.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from dispatch import campaign_reads, lifecycle
from dispatch.settings import Settings
from tests.helpers import create_held, http_provider, recipients, run_batches
from tests.http_sink import HttpSink

FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=10.0)
_MSG = {
    "to": "$$To",
    "mid": "$$MessageID",
    "subject": "$$Subject",
    "html": "$$HTML",
    "from": "$$FromName <$$FromAddress>",
}


def _summary(r: redis.Redis, cid: str) -> tuple[Any, ...]:
    s = campaign_reads.campaign_summary(cid, r)
    return s["status"], s["sent"], s["failed"], s["queued"]


def test_messages_failed_by_a_placeholder_a_provider_change_added_are_retried(
    redis_client: redis.Redis,
) -> None:
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        body = {
            "provider": "esp",
            "subject": "Hi",
            "html": "<p>hi</p>",
            "recipients": recipients(3),
        }
        cid, batches = create_held(redis_client, body)
        # Saved again while the campaign runs: a per-recipient value it was never given.
        http_provider(redis_client, sink.url, body={"msgs": [{**_MSG, "code": "$$coupon"}]})
        run_batches(batches, FAST)
        assert _summary(redis_client, cid) == ("completed", 0, 3, 0)
        assert not sink.requests

        http_provider(redis_client, sink.url)  # saved back as it was
        again: list[tuple[str, int]] = []
        report, _ = lifecycle.retry_failed(
            cid, client=redis_client, enqueue=lambda c, b: again.append((c, b))
        )
        assert (report.retried, report.skipped_not_retryable) == (3, 0)
        run_batches(again, FAST)
        sent_to = Counter(m["to"] for req in sink.requests for m in req.json()["msgs"])
    assert _summary(redis_client, cid) == ("completed", 3, 0, 0)
    assert sent_to == Counter(f"user{i}@example.com" for i in range(3))


def test_of_invalid_messages_only_a_placeholder_without_value_is_retried() -> None:
    assert lifecycle.is_retryable("Invalid message", "no value for $$coupon for this recipient")
    assert lifecycle.is_retryable(
        "Invalid message", "no value for $$a, $$b for the campaign (campaign level)"
    )
    # A template failing on the recipient's own values is the recipient's data.
    detail = "html: line 3: TypeError: must be real number, not str"
    assert not lifecycle.is_retryable("Invalid message", detail)
