"""The Generic HTTP seed page (seed 002) point by point, through the real API and worker."""

from __future__ import annotations

from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, wait_for_campaign
from tests.http_sink import HttpSink
from tests.worker import WorkerProcess

SENDER = {"from_name": "Acme Deals", "from_address": "deals@acme.example"}


def _save(api_server: ApiServer, nickname: str, config: dict[str, Any]) -> dict[str, Any]:
    with api_client(api_server) as api:
        answer = api.put(f"/v1/providers/{nickname}", json={"kind": "http", **SENDER, **config})
    assert answer.status_code in (200, 201), answer.text
    view: dict[str, Any] = answer.json()
    return view


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_a_batch_body_may_carry_the_sender_once_in_its_global_keys(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """DESIGN §4: batch globals may use campaign-level placeholders, and $$FromName and
    $$FromAddress are campaign level (one sender per campaign). A batch API that takes
    the sender once per request (``{"from": {...}, "msgs": [...]}``) was refused on save:
    "mandatory placeholders missing in the message template object"."""
    body = {
        "from": {"name": "$$FromName", "email": "$$FromAddress"},
        "msgs": [{"to": "$$To", "mid": "$$MessageID", "subject": "$$Subject", "html": "$$HTML"}],
    }
    with HttpSink() as sink:
        view = _save(api_server, "sender-once", {"endpoint": f"{sink.url}/batch", "batch": True,
                                                 "body": body})  # fmt: skip
        assert view["warnings"] == []
        with api_client(api_server) as api:
            created = api.post("/v1/campaigns", json={
                "id": "sender-once-1", "provider": "sender-once", "subject": "Hi {{ name }}",
                "html": "<p>{{ name }}</p>",
                "recipients": [{"email": "sara@example.com", "vars": {"name": "Sara"}},
                               {"email": "bob@example.com", "vars": {"name": "Bob"}}],
            })  # fmt: skip
            assert created.status_code == 201, created.text
            done = wait_for_campaign(api, "sender-once-1", lambda s: s["queued"] == 0, 60)
        sent = [request.json() for request in sink.requests]
    assert (done["sent"], done["failed"]) == (2, 0), done
    assert len(sent) == 1
    assert sent[0]["from"] == {"name": "Acme Deals", "email": "deals@acme.example"}
    assert [(m["to"], m["subject"]) for m in sent[0]["msgs"]] == [
        ("sara@example.com", "Hi Sara"),
        ("bob@example.com", "Hi Bob"),
    ]


@covers("PUT /v1/providers/{nickname}")
def test_the_mandatory_placeholders_of_a_batch_body_are_still_required(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Per-message mandatory ones belong in the message template object; the sender may
    be in either place but must be somewhere."""
    msgs = [{"to": "$$To", "subject": "$$Subject", "html": "$$HTML"}]
    with api_client(api_server) as api:
        answer = api.put("/v1/providers/no-sender", json={
            "kind": "http", "endpoint": "http://127.0.0.1:9/b", "batch": True,
            "body": {"from": "$$FromAddress", "msgs": msgs},
        })  # fmt: skip
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].endswith(
        "missing in the message template object (body.msgs[0]): $$FromName"
    )


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_a_campaign_without_any_from_address_is_refused_for_the_http_kind_too(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Seed 002 makes $$FromAddress mandatory in the payload, and DESIGN §4 with it: an
    HTTP provider saved without a default sender, then a campaign without one, sent every
    message with ``"fromAddress": ""`` (the ESP refuses them all, or sends from who knows
    what). Now the provider is saved with a warning and such a campaign is a 422."""
    body = {"to": "$$To", "subject": "$$Subject", "html": "$$HTML", "fromName": "$$FromName",
            "fromAddress": "$$FromAddress", "mid": "$$MessageID"}  # fmt: skip
    with HttpSink() as sink, api_client(api_server) as api:
        saved = api.put("/v1/providers/no-from", json={"kind": "http", "body": body,
                                                       "endpoint": f"{sink.url}/send"})  # fmt: skip
        assert saved.status_code in (200, 201), saved.text
        assert any(w.startswith("from_address is empty") for w in saved.json()["warnings"])
        draft = {"provider": "no-from", "subject": "s", "html": "<p>h</p>", "draft": True,
                 "recipients": [{"email": "sara@example.com"}]}  # fmt: skip
        refused = api.post("/v1/campaigns", json={"id": "no-from-1", **draft})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "from_address"
        given = api.post(
            "/v1/campaigns", json={"id": "no-from-2", "from_address": "d@acme.example", **draft}
        )
        assert given.status_code == 201, given.text
        assert sink.requests == []
