"""The README's Redis memory note on drafts (review R14): a draft's recipients take about
76 bytes more each, its set of addresses (20-character addresses), until it leaves draft
(tests/test_review_k14_keys.py and test_review_s5_lifecycle_data.py: the set goes)."""

from __future__ import annotations

import redis

from dispatch import store
from tests.helpers import create_held, recipients, smtp_provider

COUNT = 5000


def test_a_draft_s_set_of_addresses_takes_about_76_bytes_a_recipient(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 9)
    body = {"id": "r14-draft", "provider": "local", "subject": "s", "html": "h",
            "recipients": recipients(COUNT), "draft": True}  # fmt: skip
    campaign_id, _ = create_held(redis_client, body)
    key = store.addresses_key(campaign_id)
    assert redis_client.scard(key) == COUNT
    sample = str(redis_client.srandmember(key))
    assert 18 <= len(sample) <= 21, sample  # user<n>@example.com, as the README measured
    per_recipient = int(redis_client.memory_usage(key, samples=0) or 0) / COUNT
    assert 60 <= per_recipient <= 95, per_recipient
