"""Review U23: credential names that the last word ``pass`` / ``pwd`` rule missed,
through the real API and a real HTTP server. A camelCase JSON key (``apiPass``,
``smtpPwd``: its last word, without a separator) and a ``passphrase`` (KuCoin's
``KC-API-PASSPHRASE``, an exchange-style gateway's) were stored in clear and shown to
every reader of ``GET /v1/providers``; words ending in "pass" are still no secret."""

from __future__ import annotations

from typing import Any

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.http_sink import HttpSink

LOGIN = {"apiUser": "acme", "apiPass": "body-pass-4471", "smtpPwd": "body-pwd-9920"}
HEADERS = {"KC-API-PASSPHRASE": "phrase-3318", "X-ByPass-Cache": "no"}
NOT_SECRETS = {"compass": "north", "firstPassive": "yes"}


def _gateway(url: str) -> dict[str, Any]:
    content = {"to": "$$To", "subject": "$$Subject", "from": "$$FromName"}
    content |= {"addr": "$$FromAddress", "html": "$$HTML"}
    return {
        "kind": "http",
        "endpoint": f"{url}/send",
        "headers": HEADERS,
        "body": {**content, **NOT_SECRETS, "login": LOGIN},
        "from_address": "deals@acme.example",
    }


@covers(
    "PUT /v1/providers/{nickname}",
    "GET /v1/providers/{nickname}",
    "POST /v1/providers/{nickname}/test",
)
def test_camel_case_pass_and_a_passphrase_are_secrets(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink, api_client(api_server) as api:
        saved = api.put("/v1/providers/exchange", json=_gateway(sink.url))
        view = api.get("/v1/providers/exchange").json()
        sent = api.post("/v1/providers/exchange/test", json={"to": "jane@example.com"})
        (request,) = sink.requests
    assert saved.status_code == 201, saved.text
    assert view["headers"] == {"KC-API-PASSPHRASE": "********", "X-ByPass-Cache": "no"}
    masked = {"apiUser": "acme", "apiPass": "********", "smtpPwd": "********"}
    assert view["body"]["login"] == masked
    assert {name: view["body"][name] for name in NOT_SECRETS} == NOT_SECRETS
    stored = str(redis_client.get(store.provider_key("exchange")))
    for secret in ("body-pass-4471", "body-pwd-9920", "phrase-3318"):
        assert secret not in saved.text and secret not in stored
    # Sent as given.
    assert sent.json()["ok"] is True, sent.text
    assert request.header("KC-API-PASSPHRASE") == "phrase-3318"
    assert request.json()["login"] == LOGIN
