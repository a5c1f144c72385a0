"""``send_at`` and ``expires_at`` as a caller gives them (review V5): Unix seconds however
far ahead, and a time in milliseconds refused rather than read as another instant."""

from __future__ import annotations

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import campaign_body, smtp_provider

YEAR_3000 = 32_503_680_000  # 3000-01-01T00:00:00Z in Unix seconds


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}")
def test_a_send_at_far_ahead_in_unix_seconds_waits_for_its_time(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    # Pydantic read a number past 2e10 as milliseconds: the year 3000 was 1971, already
    # past, and the campaign went out at once.
    smtp_provider(redis_client, 2525)
    with api_client(api_server) as api:
        for campaign_id, send_at in (("v5-far", YEAR_3000), ("v5-far-text", str(YEAR_3000))):
            answer = api.post("/v1/campaigns", json=campaign_body(campaign_id, 3, send_at=send_at))
            assert answer.status_code in (200, 201), answer.text
            summary = api.get(f"/v1/campaigns/{campaign_id}").json()
            assert (summary["status"], summary["queued"], summary["sent"]) == ("scheduled", 3, 0)
            assert redis_client.zscore(store.SCHEDULED_ZSET, campaign_id) == YEAR_3000
            assert not redis_client.hexists(store.campaign_key(campaign_id), "started_at")


@covers("POST /v1/campaigns")
def test_a_time_in_milliseconds_is_refused_naming_its_field(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    # 4102444800000 ms is 2100-01-01; read as seconds it is past the year 9999. Read
    # silently as milliseconds, the same number meant two instants depending on its size.
    smtp_provider(redis_client, 2525)
    with api_client(api_server) as api:
        for field in ("send_at", "expires_at"):
            body = campaign_body(f"v5-ms-{field}", 3, **{field: 4_102_444_800_000})
            answer = api.post("/v1/campaigns", json=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == field
            assert "milliseconds" in answer.json()["detail"]
            assert not redis_client.exists(store.campaign_key(f"v5-ms-{field}"))
