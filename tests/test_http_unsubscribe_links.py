"""``$$UnsubscribeURL`` and ``$$PreferencesURL``: an HTTP provider's payload can carry each
recipient's own links, so its messages can have ``List-Unsubscribe`` (RFC 8058) as DESIGN
§6 asks of every message when the provider has a preference center."""

from __future__ import annotations

from typing import Any

import redis

from dispatch.settings import get_settings
from dispatch.test_email import build_test_message
from providers.config import parse_provider_config
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, wait_for_campaign
from tests.helpers import campaign_body
from tests.http_sink import HttpSink
from tests.worker import WorkerProcess

ONE_CLICK = "List-Unsubscribe=One-Click"


def _provider(endpoint: str, preference_center: str = "system") -> dict[str, Any]:
    message = {
        "to": "$$To", "subject": "$$Subject", "html": "$$HTML",
        "from": "$$FromName <$$FromAddress>", "preferences": "$$PreferencesURL",
        "headers": {"List-Unsubscribe": "<$$UnsubscribeURL>", "List-Unsubscribe-Post": ONE_CLICK},
    }  # fmt: skip
    return {"kind": "http", "method": "POST", "endpoint": endpoint, "batch": True,
            "body": {"msgs": [message]}, "from_name": "Acme", "from_address": "d@acme.example",
            "preference_center": preference_center}  # fmt: skip


@covers("PUT /v1/providers/{nickname}")
def test_the_links_need_a_preference_center(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with api_client(api_server) as api:
        answer = api.put("/v1/providers/local", json=_provider("http://127.0.0.1:9/s", "none"))
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == (
            "preference_center: 'none' leaves $$PreferencesURL, $$UnsubscribeURL without a "
            "value; set it to 'system' or 'custom' (each message then carries its "
            "recipient's own link)"
        )
        single = {**_provider("http://127.0.0.1:9/s"), "batch": False}
        single["headers"] = {"List-Unsubscribe": "<$$UnsubscribeURL>"}
        single["body"] = single["body"]["msgs"][0]
        assert api.put("/v1/providers/local", json=single).status_code in (200, 201)
        batch_header = {**_provider("http://127.0.0.1:9/s"), "headers": single["headers"]}
        answer = api.put("/v1/providers/local", json=batch_header)
        assert answer.status_code == 422 and "$$UnsubscribeURL" in answer.json()["detail"]


@covers("POST /v1/campaigns", "POST /u/{token}")
def test_each_message_carries_its_recipients_links_and_one_click_works(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    with HttpSink() as sink, api_client(api_server) as api:
        assert api.put("/v1/providers/local", json=_provider(f"{sink.url}/send")).is_success
        assert api.post("/v1/campaigns", json=campaign_body("links-1", 3)).status_code == 201
        done = wait_for_campaign(api, "links-1", lambda s: s["status"] == "completed")
        assert done["sent"] == 3
        sent = {m["to"]: m for request in sink.requests for m in request.json()["msgs"]}
        assert len(sent) == 3
        base = get_settings().public_url.rstrip("/")
        links = set()
        for message in sent.values():
            header = message["headers"]["List-Unsubscribe"]
            assert header.startswith(f"<{base}/u/") and header.endswith(">"), header
            assert message["preferences"].startswith(f"{base}/preferences/")
            assert message["headers"]["List-Unsubscribe-Post"] == ONE_CLICK
            links.add(header)
        assert len(links) == 3  # one per recipient

        # The mailbox provider's one-click POST to one recipient's link unsubscribes that
        # recipient alone.
        to, message = sorted(sent.items())[0]
        path = "/" + message["headers"]["List-Unsubscribe"].strip("<>").split("/", 3)[3]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert api.post(path, content=ONE_CLICK, headers=form).is_success
        assert api.get(f"/v1/suppressions/{to}").status_code == 200
        others = [a for a in sent if a != to]
        assert all(api.get(f"/v1/suppressions/{a}").status_code == 404 for a in others)
        summary = wait_for_campaign(api, "links-1", lambda s: s["unsubscribed"] == 1)
        assert summary["unsubscribed"] == 1


def test_a_provider_test_message_carries_links_too() -> None:
    config = parse_provider_config({**_provider("http://127.0.0.1:9/s"), "nickname": "h"})
    msg = build_test_message(config, "me@acme.example", get_settings())
    assert msg.unsubscribe_url.startswith(f"{get_settings().public_url.rstrip('/')}/u/")
    assert msg.preferences_url.startswith(f"{get_settings().public_url.rstrip('/')}/preferences/")
    assert dict(msg.headers)["List-Unsubscribe"] == f"<{msg.unsubscribe_url}>"


@covers("POST /v1/providers/{nickname}/test", "GET /u/{token}")
def test_a_provider_test_messages_link_leads_to_its_custom_center(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    center = "https://prefs.acme.example/center?lang=en"
    with HttpSink() as sink, api_client(api_server) as api:
        body = {**_provider(f"{sink.url}/send", "custom"), "preference_center_url": center}
        assert api.put("/v1/providers/links", json=body).is_success
        answer = api.post("/v1/providers/links/test", json={"to": "me@acme.example"})
        assert answer.json()["ok"] is True, answer.text
        (message,) = sink.requests[0].json()["msgs"]
        link = message["headers"]["List-Unsubscribe"].strip("<>")
        token = link.rsplit("/", 1)[1]
        assert message["preferences"] == f"{center}&token={token}"
        page = api.get(f"/u/{token}", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == f"{center}&token={token}"
