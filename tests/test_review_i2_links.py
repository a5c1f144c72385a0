"""A Generic HTTP provider saved before ``$$UnsubscribeURL`` and ``$$PreferencesURL`` were
system placeholders used them as custom ones (values from vars), possibly with
``preference_center: none`` or in a batch request's globals. The rule added with them
refuses that on save, but must not make the saved provider unreadable (providers.config
STORED): its listing, its callbacks and the CLI read it. Its links come from vars as
they did; a new campaign through one with a link where a batch request renders once is
refused, naming the problem."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from dispatch import store
from dispatch.provider_store import CALLBACK_TOKEN_FIELD
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import campaign_body


def _provider(**fields: Any) -> dict[str, Any]:
    message = {"to": "$$To", "subject": "$$Subject", "html": "$$HTML", "from": "$$FromName",
               "addr": "$$FromAddress", "unsubscribe": "$$UnsubscribeURL"}  # fmt: skip
    return {"kind": "http", "method": "POST", "endpoint": "http://127.0.0.1:9/send",
            "body": message, "from_name": "Acme", "from_address": "d@acme.example",
            "preference_center": "system", **fields}  # fmt: skip


def _store_as_before(r: redis.Redis, nickname: str, **changes: Any) -> None:
    """Rewrite the stored provider as a configuration saved before the rule."""
    raw = orjson.loads(r.get(store.provider_key(nickname)) or b"{}")
    r.set(store.provider_key(nickname), orjson.dumps({**raw, **changes}))


@covers("GET /v1/providers", "GET /v1/providers/{nickname}", "POST /v1/campaigns",
        "POST /v1/callbacks/{nickname}/{token}")  # fmt: skip
def test_a_provider_saved_before_the_link_placeholders_stays_readable(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with api_client(api_server) as api:
        assert api.put("/v1/providers/local", json=_provider()).status_code == 201
        _store_as_before(redis_client, "local", preference_center="none")
        batch = {"batch": True, "body": {"u": "$$UnsubscribeURL", "msgs": [_provider()["body"]]}}
        assert api.put("/v1/providers/batched", json=_provider(**batch)).status_code == 422
        assert api.put("/v1/providers/batched", json=_provider(batch=True, body={
            "msgs": [_provider()["body"]]})).status_code == 201  # fmt: skip
        _store_as_before(redis_client, "batched", body=batch["body"])

        listed = api.get("/v1/providers")
        assert listed.status_code == 200, listed.text
        assert {p["nickname"] for p in listed.json()["items"]} == {"local", "batched"}
        view = api.get("/v1/providers/local")
        assert view.status_code == 200 and view.json()["preference_center"] == "none"

        token = orjson.loads(redis_client.get(store.provider_key("local")) or b"{}")[
            CALLBACK_TOKEN_FIELD
        ]
        event = {"version": "v2", "type": "delivered", "email": "a@example.com",
                 "meta": "a@example.com|1|gone|20261123|0|default|0|"}  # fmt: skip
        answer = api.post(f"/v1/callbacks/local/{token}", json=event)
        assert answer.status_code == 200, answer.text

        # Its links come from vars as they did when saved (tests/test_upgrade.py sends
        # them); where a batch request renders once, no message's link can go: refused.
        body = campaign_body("old-local", 2, provider="local", draft=True)
        assert api.post("/v1/campaigns", json=body).status_code == 201
        refused = api.post(
            "/v1/campaigns", json=campaign_body("old-batched", 2, provider="batched")
        )
        assert refused.status_code == 422, refused.text
        assert "body: per-message" in refused.json()["detail"]
        # Saved again as it is, it is refused: the rule holds for what is given.
        again = {**view.json(), "kind": "http"}
        assert api.put("/v1/providers/local", json=again).status_code == 422


def test_the_rules_on_save_are_unchanged() -> None:
    from providers.config import parse_provider_config

    for fields in ({"preference_center": "none"}, {"headers": {"U": "$$UnsubscribeURL"},
                   "batch": True, "body": {"msgs": [_provider()["body"]]}}):  # fmt: skip
        try:
            parse_provider_config({**_provider(**fields), "nickname": "x"})
        except ValueError as exc:
            assert "$$UnsubscribeURL" in str(exc)
        else:
            raise AssertionError(f"accepted: {fields}")
    stored = parse_provider_config(
        {**_provider(preference_center="none"), "nickname": "x"}, stored=True
    )
    assert stored.preference_center == "none"
