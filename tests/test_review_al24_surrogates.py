"""Review AL24: keys holding a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape), found
by fuzzing the API over HTTP. An error naming such a key (``{"\\ud800": 1e400}``) was a
500 with a plain-text body: the error answer could not be written as UTF-8. A campaign
var named so was stored as another name (three U+FFFD, 201) at the top of ``vars``, and
was a 500 one object deeper."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import smtp_provider

CAMPAIGN = '{"id": "%s", "provider": "local", "subject": "s", "html": "h", "draft": true, %s}'
JSON = {"Content-Type": "application/json"}


@covers("POST /v1/campaigns", "PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_an_error_naming_a_key_with_a_lone_surrogate_is_a_json_422(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    smtp_provider(redis_client, 2525)
    sent = [
        ("/v1/campaigns", CAMPAIGN % ("al24-inf", '"vars": {"\\ud800": 1e400}'), "vars.\\ud800"),
        ("/v1/providers/local/test", '{"to": "a@example.com", "vars": {"\\ud800": NaN}}',
         "vars.\\ud800"),
    ]  # fmt: skip
    with api_client(api_server) as api:
        for path, body, field in sent:
            answer = api.post(path, content=body.encode(), headers=JSON)
            assert answer.status_code == 422, (path, answer.text)
            assert answer.json()["field"] == field
            assert "not a finite number" in answer.json()["detail"]
        answer = api.put(
            "/v1/providers/al24", content=b'{"kind": "smtp", "\\ud800": 1e400}', headers=JSON
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "\\ud800"


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}")
def test_a_campaign_var_named_with_a_lone_surrogate_is_refused_naming_where(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    smtp_provider(redis_client, 2525)
    cases = [
        ("al24-top", '"vars": {"\\ud800": 1}', "vars"),  # was stored as "\ufffd" x3, 201
        ("al24-deep", '"vars": {"k": {"a\\udc80": 2}}', "vars.k"),  # was a 500
    ]
    with api_client(api_server) as api:
        for campaign_id, vars_, field in cases:
            body = (CAMPAIGN % (campaign_id, vars_)).encode()
            answer = api.post("/v1/campaigns", content=body, headers=JSON)
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == field
            assert "lone UTF-16 surrogate" in answer.json()["detail"]
            assert api.get(f"/v1/campaigns/{campaign_id}").status_code == 404
