"""Odd input a Generic HTTP integrator sends through the real API: refused with 422, never 500.

JSON may escape a lone UTF-16 surrogate (``"\\ud800"``, what ``json.dumps`` writes for it);
it decodes to a ``str`` that no UTF-8 encoder, JSON serializer or Redis write accepts, so
such a value can never reach a provider. It must be refused naming its field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.callback_support import HTTP_BODY

LONE = "\ud800"
MESSAGE = HTTP_BODY
PROVIDER = {
    "kind": "http",
    "endpoint": "http://127.0.0.1:9/send",
    "body": MESSAGE,
    "from_address": "deals@acme.example",
}


def _put(api_server: ApiServer, config: dict[str, Any]) -> Any:
    with api_client(api_server) as api:
        # json.dumps writes the lone surrogate as the escape "\ud800", as a client would.
        return api.put(
            "/v1/providers/odd",
            content=json.dumps(config),
            headers={"Content-Type": "application/json"},
        )


@covers("PUT /v1/providers/{nickname}")
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"body": {**MESSAGE, "tag": f"a{LONE}b"}}, "body"),
        ({"body": {**MESSAGE, f"k{LONE}": "x"}}, "body"),
        ({"headers": {"X-Tag": f"a{LONE}"}}, "headers"),
        ({"from_name": f"Acme {LONE}"}, "from_name"),
    ],
)
def test_a_lone_surrogate_in_a_provider_is_refused_naming_the_field(
    api_server: ApiServer, redis_client: redis.Redis, change: dict[str, Any], field: str
) -> None:
    answer = _put(api_server, {**PROVIDER, **change})
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == field
    assert "surrogate" in error["detail"]
    assert not redis_client.exists(store.provider_key("odd"))


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"recipients": [{"email": "a@example.com", "vars": {"name": f"x{LONE}"}}]},
         "recipients.0.vars.name"),
        ({"recipients": [{"email": "a@example.com", "user_id": LONE, "vars": {"name": "n"}}]},
         "recipients.0.user_id"),
        ({"vars": {"promo": [f"x{LONE}"]}}, "vars.promo.0"),
        ({"html": f"<p>{LONE}</p>"}, "html"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_a_campaign_is_refused_naming_the_field(
    api_server: ApiServer, redis_client: redis.Redis, change: dict[str, Any], field: str
) -> None:
    assert _put(api_server, {**PROVIDER, "body": {**MESSAGE, "n": "$$name"}}).status_code == 201
    campaign = {
        "id": "odd-1",
        "provider": "odd",
        "subject": "Hi",
        "html": "<p>Hi</p>",
        "recipients": [{"email": "a@example.com", "vars": {"name": "n"}}],
        **change,
    }
    with api_client(api_server) as api:
        answer = api.post(
            "/v1/campaigns",
            content=json.dumps(campaign),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()
        assert error["field"] == field
        assert "surrogate" in error["detail"]
        assert api.get("/v1/campaigns/odd-1").status_code == 404
