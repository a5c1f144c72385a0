"""What Redis keeps of a campaign over a deployment's lifetime (review K14): a key that
nothing reads any more leaves when its campaign ends, not weeks later with the purge."""

from __future__ import annotations

import redis

from dispatch import lifecycle, store
from dispatch.models import CampaignRequest
from dispatch.recipient_append import append_recipients
from tests.helpers import create_held, recipients, smtp_provider


def _draft(r: redis.Redis, campaign_id: str, **fields: object) -> str:
    """A draft with recipients posted and appended (its addresses set holds them)."""
    smtp_provider(r, 9)
    body = {"id": campaign_id, "provider": "local", "subject": "s", "html": "h",
            "recipients": recipients(3), "draft": True, **fields}  # fmt: skip
    created, _ = create_held(r, body)
    more = CampaignRequest.model_validate({**body, "recipients": recipients(5)}).recipients
    assert append_recipients(created, more, client=r) == 2  # three known already
    assert r.scard(store.addresses_key(created)) == 5
    return created


def test_a_cancelled_draft_drops_its_set_of_addresses(redis_client: redis.Redis) -> None:
    """Nothing appends to a campaign once it has left ``draft`` (the append script refuses),
    so its set of addresses (76 bytes a recipient) is dead data; a start dropped it, a
    cancel kept it until the retention purge, DISPATCH_RETENTION_DAYS later."""
    campaign_id = _draft(redis_client, "k14-draft")
    summary = lifecycle.cancel(campaign_id, client=redis_client)
    assert (summary["status"], summary["cancelled"]) == ("cancelled", 5)
    assert not redis_client.exists(store.addresses_key(campaign_id))
    # What the messages' outcomes are read from stays until the purge.
    assert redis_client.exists(store.ledger_key(campaign_id), store.recipients_key(campaign_id))


def test_an_expired_draft_drops_its_set_of_addresses(redis_client: redis.Redis) -> None:
    campaign_id = _draft(redis_client, "k14-expiring", expires_at="2099-01-01T00:00:00Z")
    after = 4_102_444_800 + 1  # 2099-01-01T00:00:01Z
    assert lifecycle.expire_due(now=after, client=redis_client) == [campaign_id]
    assert redis_client.hget(store.campaign_key(campaign_id), "status") == "expired"
    assert not redis_client.exists(store.addresses_key(campaign_id))
