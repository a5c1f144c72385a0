"""The suppression list is checked again right before a batch sends (DESIGN §5)."""

from __future__ import annotations

import redis

from dispatch import campaign_reads, campaigns, suppressions
from dispatch.models import CampaignRequest
from tests.helpers import run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

PEOPLE = [
    {"email": "Kai@Bücher.Example", "vars": {"name": "Kai"}},  # non-ASCII domain
    {"email": "ann@example.com", "vars": {"name": "Ann"}},
    {"email": "Bob@Example.com", "vars": {"name": "Bob"}},  # case differs from the entry
    {"email": "cy@example.com", "vars": {"name": "Cy"}},
]


def test_addresses_suppressed_after_the_campaign_was_stored_are_not_sent(
    redis_client: redis.Redis,
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        batches: list[tuple[str, int]] = []
        body = {"provider": "local", "subject": "Hi {{ name }}", "html": "<p>Hi</p>"}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate({**body, "recipients": PEOPLE}),
            client=redis_client,
            enqueue=lambda c, b: batches.append((c, b)),
        )
        # Stored, not sent yet: now two of them unsubscribe.
        suppressions.add("kai@bücher.example", reason="unsubscribed", source="test")
        suppressions.add("bob@example.com", reason="unsubscribed", source="test")
        run_batches(batches)
        received = sorted(m.rcpt_tos[0] for m in smtp.messages)
    assert received == ["ann@example.com", "cy@example.com"]
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["suppressed"]) == (2, 2)
    assert campaign_reads.get_status(cid, redis_client).value == "completed"
