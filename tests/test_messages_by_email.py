"""`GET /v1/campaigns/{id}/messages?email=` with a value that is no address answers 422
naming `email` (it answered 200 with no message, as for an address the campaign does not
have: a typo looked like "never sent"; review A6's report)."""

from __future__ import annotations

import pytest

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body


@covers("GET /v1/campaigns/{campaign_id}/messages")
@pytest.mark.parametrize("given", ["notanaddr", "a@", "two@@example.com", "a b@example.com"])
def test_a_value_that_is_no_address_is_refused_naming_email(
    api_server: ApiServer, given: str
) -> None:
    people = [{"email": "ann@example.com"}, {"email": "bob@example.com"}]
    body = {"id": "by-email-1", "provider": "byemail", "subject": "s", "html": "h"}
    with api_client(api_server) as api:
        api.put("/v1/providers/byemail", json=smtp_body(2525))
        api.post("/v1/campaigns", json={**body, "draft": True, "recipients": people})
        path = "/v1/campaigns/by-email-1/messages"
        refused = api.get(path, params={"email": given})
        absent = api.get(path, params={"email": "carl@example.com"})
        found = api.get(path, params={"email": "BOB@Example.com"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "email"
    assert (absent.status_code, absent.json()["items"]) == (200, [])
    assert [m["email"] for m in found.json()["items"]] == ["bob@example.com"]
