"""A campaign id cannot name another campaign's key (review B22).

A campaign's Redis keys are ``dispatch:campaign:<id>`` and ``dispatch:campaign:<id>:<part>``,
and an id may hold ':'. A campaign ``x:counters`` was accepted and its fields (status,
content, provider...) written into campaign ``x``'s counters hash; one ``x:lease:0`` took
the lease of ``x``'s first batch. An id holding one of those parts after a ':' is refused.
"""

from __future__ import annotations

import inspect

import pytest
import redis

from dispatch import store
from dispatch.models import CAMPAIGN_KEY_PARTS
from tests.api_server import ApiServer
from tests.api_support import api_client, covers

PROVIDER = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
            "from_address": "deals@acme.example"}  # fmt: skip


def test_every_part_a_campaign_key_adds_to_its_id_is_reserved() -> None:
    parts = set()
    for name, function in inspect.getmembers(store, inspect.isfunction):
        params = list(inspect.signature(function).parameters)
        if function.__module__ != store.__name__ or params[:1] != ["campaign_id"]:
            continue
        key = function("X", *(["1"] * (len(params) - 1)))
        assert key.startswith("dispatch:campaign:X"), name
        if key != "dispatch:campaign:X":
            parts.add(key.removeprefix("dispatch:campaign:X:").split(":")[0])
    assert parts == CAMPAIGN_KEY_PARTS


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}")
@pytest.mark.parametrize("taken", ["x:counters", "x:lease:0", "a:b:ledger", "x:callbacks:clicked"])
def test_an_id_naming_a_key_of_another_campaign_is_refused(
    api_server: ApiServer, redis_client: redis.Redis, taken: str
) -> None:
    campaign = {"provider": "b22id", "subject": "Hi", "html": "<p>Hi</p>", "draft": True,
                "recipients": [{"email": "a@example.com"}]}  # fmt: skip
    with api_client(api_server) as api:
        assert api.put("/v1/providers/b22id", json=PROVIDER).status_code == 201
        assert api.post("/v1/campaigns", json={**campaign, "id": "x"}).status_code == 201
        counters = redis_client.hgetall(store.counters_key("x"))
        answer = api.post("/v1/campaigns", json={**campaign, "id": taken})
        assert answer.status_code == 422
        assert answer.json()["field"] == "id"
        assert "names a key of another campaign's" in answer.json()["detail"]
        assert redis_client.hgetall(store.counters_key("x")) == counters  # untouched
        assert api.get("/v1/campaigns/x").json()["total"] == 1
    for fine in ("x:counter", "x:2024-ledger", "ledger:x", "lease"):
        with api_client(api_server) as api:
            answer = api.post("/v1/campaigns", json={**campaign, "id": fine})
            assert answer.status_code == 201, (fine, answer.text)
