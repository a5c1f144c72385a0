"""``"id": uuid.uuid4()`` in a ``dispatch.enqueue_campaign`` body (review I14): Celery's
JSON carries a UUID typed, the worker got a ``uuid.UUID`` and refused it, ``id: Input
should be a valid string``; it is the campaign whose id is its string form, as over
HTTP (DESIGN section 5: the same JSON)."""

from __future__ import annotations

import uuid

import redis
from kombu.utils.json import dumps, loads

from dispatch import campaigns
from tests.helpers import recipients, smtp_provider

CAMPAIGN = {"provider": "i14", "subject": "Hello", "text": "Hi", "draft": True}


def test_a_uuid_id_is_the_campaign_id_of_its_string_form(redis_client: redis.Redis) -> None:
    smtp_provider(redis_client, 2525, nickname="i14")
    campaign_id = uuid.uuid4()
    # What the worker gets when another service sends "id": uuid.uuid4() as JSON.
    body = loads(dumps({**CAMPAIGN, "id": campaign_id, "recipients": recipients(2)}))
    assert isinstance(body["id"], uuid.UUID)
    assert campaigns.create_from_task(body, "the-task-id") == str(campaign_id)
    assert redis_client.exists(f"dispatch:campaign:{campaign_id}")
    # The same campaign again, its id as a string: a repeat, not a conflict.
    again = {**body, "id": str(campaign_id)}
    assert campaigns.create_from_task(again, "another-task-id") == str(campaign_id)
