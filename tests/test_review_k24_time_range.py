"""Review K24: a ``send_at`` or ``expires_at`` that UTC cannot name.

``9999-12-31T23:00:00-05:00`` is a valid ISO 8601 time, but in UTC it is in the year
10000 (and ``0001-01-01T00:30:00+05:00`` before the year 1), which no ``datetime`` holds.
The request passed validation, and the fingerprint's comparison of the times in UTC
raised ``OverflowError``: the API dropped the connection with no answer, the Celery task
failed with a traceback, ``dispatch send`` crashed. Such a time is now refused, 422
naming its field, as a Unix number past the year 9999 already was.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import campaigns, store
from dispatch.campaign_errors import CampaignError
from dispatch.provider_store import save_provider
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body

TOO_LATE = "9999-12-31T23:00:00-05:00"  # 10000-01-01T04:00:00Z
TOO_EARLY = "0001-01-01T00:30:00+05:00"  # 0000-12-31T19:30:00Z


def _body(campaign_id: str, **times: str) -> dict[str, object]:
    return {
        "id": campaign_id,
        "provider": "far",
        "subject": "s",
        "html": "h",
        "recipients": [{"email": "a@example.com"}],
        **times,
    }


@covers("POST /v1/campaigns")
def test_a_time_beyond_utcs_years_is_a_422_naming_its_field(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with api_client(api_server) as api:
        assert api.put("/v1/providers/far", json=smtp_body(2525)).status_code == 201
        late = api.post("/v1/campaigns", json=_body("far-1", send_at=TOO_LATE))
        early = api.post("/v1/campaigns", json=_body("far-2", expires_at=TOO_EARLY))
        # The last instant UTC names is still taken (a year-9999 send_at is a choice).
        last = api.post("/v1/campaigns", json=_body("far-3", send_at="9999-12-31T23:59:59Z"))
    assert (late.status_code, late.json()["field"]) == (422, "send_at")
    assert "not between the years 1 and 9999 in UTC" in late.json()["detail"]
    assert (early.status_code, early.json()["field"]) == (422, "expires_at")
    assert not redis_client.exists(store.campaign_key("far-1"), store.campaign_key("far-2"))
    assert (last.status_code, last.json()["status"]) == (201, "scheduled")
    assert last.json()["send_at"] == 253402300799.0


def test_the_celery_task_refuses_it_naming_its_field(redis_client: redis.Redis) -> None:
    save_provider({"nickname": "far", **smtp_body(2525)}, redis_client)
    with pytest.raises(CampaignError) as refused:
        campaigns.create_from_task(_body("far-4", send_at=TOO_LATE), "task-1")
    assert refused.value.field == "send_at"
