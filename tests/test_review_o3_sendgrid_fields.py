"""Review O3: a SendGrid event is kept when a field it does not need is malformed.

A ``group_unsubscribe`` whose ``asm_group_id`` was not a scalar was refused whole, so the
person's unsubscribe was lost: losing the group is better than losing the unsubscribe.
Only ``event`` and ``email`` are needed; any other field that is not text is noted and
read as absent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from dispatch import suppressions
from providers.callbacks import EventType, parse_sendgrid
from tests.callback_support import callback_entries, post
from tests.test_review_o3_sns_age import apply_inbox

META = "user2@example.com|1|spring-1|20241104|0|wzrk_default|3|"
SUCCESS = {"status": "success", "message": "Callback processed successfully"}


def unsubscribe(group: Any) -> dict[str, Any]:
    return {
        "event": "group_unsubscribe",
        "email": "user2@example.com",
        "timestamp": 1730714682,
        "asm_group_id": group,
        "sg_event_id": "ev-1",
        "sg_message_id": "msg-1.filter",
        "clevertap_meta": META,
        "campaign_id": "spring-1",
    }


@pytest.mark.parametrize("group", [[7], {"id": 7}, True])
def test_a_malformed_asm_group_id_loses_the_group_not_the_unsubscribe(group: Any) -> None:
    result = parse_sendgrid(json.dumps([unsubscribe(group)]))

    assert result.failed == 0
    parsed = result.events[0]
    assert (parsed.type, parsed.email, parsed.description) == (
        EventType.UNSUBSCRIBED,
        "user2@example.com",
        "group_unsubscribe",
    )
    assert parsed.meta == META and parsed.campaign_id == "spring-1"
    assert parsed.timestamp == datetime.fromtimestamp(1730714682, tz=UTC)
    assert parsed.provider_message_id == "msg-1.filter"
    assert [note for note in parsed.notes if note.startswith("asm_group_id ignored")]


def test_a_bounce_whose_type_is_not_text_is_soft_and_kept() -> None:
    raw = {"event": "bounce", "type": {"x": 1}, "reason": ["550"], "email": "b@example.com"}

    parsed = parse_sendgrid(json.dumps([raw])).events[0]

    assert parsed.type is EventType.SOFT_BOUNCE  # unknown: never suppress on a guess
    assert parsed.description == "bounce"


def test_the_gateway_applies_that_unsubscribe_with_its_meta(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    delivered = {**unsubscribe(None), "event": "delivered", "email": "other@example.com"}

    answer = post(api, paths["sg"], [unsubscribe([7]), delivered])

    assert (answer.status_code, answer.json()) == (200, SUCCESS)
    apply_inbox(redis_client)
    entry = suppressions.get("user2@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "unsubscribed"
    unsubscribed = [e for e in callback_entries(redis_client) if e["email"] == "user2@example.com"]
    assert [(e["event"], e["meta"]) for e in unsubscribed] == [("Channel Unsubscribed", META)]
