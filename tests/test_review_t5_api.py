"""The HTTP API as another service's client sees it (review T5): numbers that are not
JSON, the bearer token in the OpenAPI document, and a repeated create of a draft whose
first request stopped half-way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from dispatch import store
from dispatch.recipient_append import RecipientAppender
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import recipients, smtp_provider
from tests.test_interrupted_creation import failing_after

SMTP = {
    "kind": "smtp",
    "host": "127.0.0.1",
    "port": 2525,
    "security": "none",
    "from_address": "deals@acme.example",
}
JSON = {"Content-Type": "application/json"}


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers")
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'"rate_per_second": Infinity', "rate_per_second"),
        (b'"rate_per_second": NaN', "rate_per_second"),
        (b'"timeout": 1e400', "timeout"),  # JSON, but no 64-bit float holds it
    ],
)
def test_a_provider_number_that_is_not_finite_is_refused_naming_it(
    api_server: ApiServer, redis_client: redis.Redis, body: bytes, field: str
) -> None:
    # Saved, it was written as null: the provider, and the list of every provider,
    # could no longer be read (422 naming smtp.rate_per_second on a GET).
    config = b'{"kind": "smtp", "host": "127.0.0.1", "from_address": "a@acme.example", '
    with api_client(api_server) as api:
        answer = api.put("/v1/providers/odd", content=config + body + b"}", headers=JSON)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
        assert "not a finite number" in answer.json()["detail"]
        assert not redis_client.exists(store.provider_key("odd"))
        assert api.get("/v1/providers").status_code == 200


@covers("POST /v1/campaigns", "PUT /v1/suppressions/{email}")
def test_nan_in_a_campaign_or_a_suppression_is_refused_naming_where(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    smtp_provider(redis_client, 2525)
    campaign = (
        b'{"id": "nan1", "provider": "local", "subject": "s", "html": "h", "recipients": '
        b'[{"email": "a@x.example"}, {"email": "b@x.example", "vars": {"a": [1, NaN]}}]}'
    )
    with api_client(api_server) as api:
        # Accepted, the NaN was stored as null: the template showed "None".
        answer = api.post("/v1/campaigns", content=campaign, headers=JSON)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "recipients.1.vars.a.1"
        assert not redis_client.exists(store.campaign_key("nan1"))

        answer = api.put(
            "/v1/suppressions/a@x.example", content=b'{"reason": -Infinity}', headers=JSON
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "reason"

        # Finite numbers, exponents included, are numbers as before.
        fine = {**SMTP, "rate_per_second": 2.5e1, "timeout": 1e1}
        assert api.put("/v1/providers/fine", json=fine).status_code == 201


@covers("GET /v1/providers")
def test_the_openapi_document_says_which_routes_need_the_bearer_token(
    api_server: ApiServer,
) -> None:
    # Without a security scheme a client generated from the document sent no token,
    # and every call it made was a 401.
    with api_client(api_server, token=None) as api:
        document = api.get("/openapi.json").json()
        scheme = document["components"]["securitySchemes"]["HTTPBearer"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        for path, item in document["paths"].items():
            for method, operation in item.items():
                exempt = not path.startswith("/v1/") or path.startswith("/v1/callbacks/")
                expected = None if exempt else [{"HTTPBearer": []}]
                assert operation.get("security") == expected, (method, path)
        assert api.get("/v1/providers").status_code == 401  # and it is what happens


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}")
@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"draft": True}, "draft"),
        ({"send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "scheduled"),
    ],
)
def test_a_repeat_of_a_draft_post_that_stopped_half_way_stores_the_rest(
    api_server: ApiServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, Any],
    status: str,
) -> None:
    smtp_provider(redis_client, 2525)
    body = {
        "id": "half1",
        "provider": "local",
        "subject": "s",
        "html": "h",
        "recipients": recipients(3500),
        **extra,
    }
    with api_client(api_server) as api:
        # Redis fails after the first 1000 recipients are stored: the client is told so.
        monkeypatch.setattr(RecipientAppender, "add", failing_after(1, redis.ConnectionError()))
        assert api.post("/v1/campaigns", json=body).status_code == 503
        monkeypatch.undo()

        # Its retry was answered "already created" with 1000 of 3500 recipients, and a
        # campaign for later stayed a draft: it would never have been sent.
        answer = api.post("/v1/campaigns", json=body)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["total"]) == (status, 3500)
        again = api.post("/v1/campaigns", json=body).json()  # and once more: no change
        assert (again["status"], again["total"], again["queued"]) == (status, 3500, 3500)
        assert api.get("/v1/campaigns/half1").json()["total"] == 3500
