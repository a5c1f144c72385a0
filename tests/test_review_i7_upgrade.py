"""Upgrading a running installation (review I7): what an earlier version stored is read by
this one as it meant. The stored form is written here as the earlier version wrote it
(observed by running that version against a real Redis), not by running it."""

from __future__ import annotations

import copy

import pytest
import redis

from dispatch import store
from dispatch.campaigns import CampaignConflictError, create_campaign
from dispatch.models import CampaignRequest, CampaignStatus
from tests.helpers import create_held, smtp_provider

# A scheduled campaign whose send_at a client gave in its local offset.
SCHEDULED = {
    "id": "tz-repeat", "provider": "smtp", "subject": "Hi", "html": "<p>Hi</p>",
    "send_at": "2999-01-01T09:00:00+02:00", "recipients": [{"email": "ann@example.com"}],
}  # fmt: skip
# Its fingerprint as commit cd612fb (2026-11-23, before b5ac507 hashed times in UTC)
# stored it in dispatch:campaign:tz-repeat (field "fingerprint"), computed by that
# version's dispatch.campaigns._fingerprint for SCHEDULED.
FINGERPRINT_BEFORE_UTC = "6e5b72d0a617f81eb01573c51fcdd83b1a80dbfacb4f2903676df3a3fc90e99d"


def test_a_repeat_of_a_campaign_an_earlier_version_scheduled_in_a_local_offset_is_a_repeat(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 2525, nickname="smtp")
    campaign_id, batches = create_held(redis_client, copy.deepcopy(SCHEDULED))
    assert batches == []  # scheduled for later: nothing enqueued
    key = store.campaign_key(campaign_id)
    redis_client.hset(key, "fingerprint", FINGERPRINT_BEFORE_UTC)  # as the earlier version

    # The client posts the same file again after the upgrade (a retry, `dispatch send`):
    # a repeat, not 409 "exists with other content".
    enqueued: list[tuple[str, int]] = []
    repeat = CampaignRequest.model_validate(copy.deepcopy(SCHEDULED))
    assert create_campaign(
        repeat, client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    ) == (campaign_id, False)
    assert enqueued == []
    assert redis_client.hget(key, "status") == CampaignStatus.SCHEDULED
    assert redis_client.hget(key, "fingerprint") == FINGERPRINT_BEFORE_UTC

    # Other content under that id is still a conflict.
    other = CampaignRequest.model_validate({**copy.deepcopy(SCHEDULED), "subject": "Other"})
    with pytest.raises(CampaignConflictError, match="exists with other content"):
        create_campaign(other, client=redis_client, enqueue=lambda c, b: None)
