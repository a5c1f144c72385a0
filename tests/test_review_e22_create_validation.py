"""A campaign body with many invalid recipients (review E22).

``POST /v1/campaigns`` had FastAPI check the body on the API's event loop: 300,000
recipients with a misnamed key (10 MB) held every other request, ``/healthz`` and the
providers' callbacks included, for 13-15 s (a 64 MB body, several times that: long enough
for a liveness probe to kill the API), and answered a 42 MB 422 listing all 600,000
problems. Now the body is checked in a worker thread and a 422 lists the first 1000
problems, its ``detail`` counting the rest.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from dispatch.api import campaigns as campaigns_api
from dispatch.api.errors import MAX_LISTED_PROBLEMS
from dispatch.models import campaign_request
from tests.api_server import ApiServer
from tests.api_support import api_client, covers

PROVIDER = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
            "from_address": "deals@acme.example"}  # fmt: skip


def _campaign(recipients: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"provider": "e22", "subject": "Hi", "html": "<p>Hi</p>", "draft": True,
            "recipients": recipients, **fields}  # fmt: skip


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns", "GET /v1/campaigns")
def test_a_422_lists_the_first_problems_and_counts_the_rest(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    good = [{"email": f"g{i}@example.com"} for i in range(1200)]
    bad = [{"mail": f"r{i}@example.com"} for i in range(1500)]  # two problems each
    with api_client(api_server) as api:
        assert api.put("/v1/providers/e22", json=PROVIDER).status_code == 201
        answer = api.post("/v1/campaigns", json=_campaign(good + bad, category="a|b"))
    assert answer.status_code == 422
    body = answer.json()
    assert len(body["errors"]) == MAX_LISTED_PROBLEMS
    assert body["errors"][0]["field"] == "category"  # the other fields' first
    assert body["errors"][1:3] == [
        {"field": "recipients.1200.email", "message": "Field required"},
        {"field": "recipients.1200.mail", "message": "Extra inputs are not permitted"},
    ]
    assert body["errors"][-1]["field"] == "recipients.1699.email"  # the 1000th problem
    assert body["field"] == "category"
    assert body["detail"].startswith("category: ") and body["detail"].endswith("(and 3000 more)")
    with api_client(api_server) as api:  # none of it was stored
        assert api.get("/v1/campaigns", params={"limit": 1}).json()["items"] == []


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_the_body_is_checked_while_the_api_answers_other_requests(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a campaign's body (its time grows with the list) runs off the event
    loop: while one is held inside it, ``/healthz`` is answered."""
    entered, release = threading.Event(), threading.Event()

    def held(body: Any) -> Any:
        entered.set()
        release.wait(10)
        return campaign_request(body)

    monkeypatch.setattr(campaigns_api, "campaign_request", held, raising=False)
    with api_client(api_server) as api, ThreadPoolExecutor(1) as pool:
        assert api.put("/v1/providers/e22", json=PROVIDER).status_code == 201
        body = _campaign([{"email": "a@example.com"}], id="e22-held")
        creating = pool.submit(api.post, "/v1/campaigns", json=body)
        try:
            assert entered.wait(5), "the body was not checked by campaign_request"
            with httpx.Client(base_url=api_server.url, timeout=5) as other:
                health = other.get("/healthz")
        finally:
            release.set()
        assert health.status_code == 200
        created = creating.result()
    assert created.status_code == 201 and created.json()["total"] == 1
