"""A campaign's summary says when it starts and when it expires (send_at, expires_at as
given at creation, in Unix seconds; null when not given): a scheduled campaign showed
nothing of when it would start, and --follow showed 0/s until then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body


@covers("GET /v1/campaigns/{campaign_id}", "GET /v1/campaigns")
def test_a_summary_says_when_the_campaign_starts_and_expires(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    starts = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    expires = starts + timedelta(days=1)
    recipients = [{"email": "a@example.com"}]
    body = {"provider": "later", "subject": "s", "html": "h", "recipients": recipients}
    with api_client(api_server) as api:
        assert api.put("/v1/providers/later", json=smtp_body(2525)).status_code == 201
        timed = {**body, "id": "timed-1", "send_at": starts.isoformat()}
        timed["expires_at"] = expires.astimezone(
            timezone(timedelta(hours=-5))
        ).isoformat()  # any offset
        assert api.post("/v1/campaigns", json=timed).status_code == 201
        assert api.post("/v1/campaigns", json={**body, "id": "plain-1"}).status_code == 201
        one = api.get("/v1/campaigns/timed-1").json()
        plain = api.get("/v1/campaigns/plain-1").json()
        listed = {c["id"]: c for c in api.get("/v1/campaigns").json()["items"]}
    assert (one["status"], one["send_at"], one["expires_at"]) == (
        "scheduled", starts.timestamp(), expires.timestamp()
    )  # fmt: skip
    assert (plain["send_at"], plain["expires_at"]) == (None, None)
    assert (listed["timed-1"]["send_at"], listed["plain-1"]["send_at"]) == (
        starts.timestamp(),
        None,
    )
