"""A Generic HTTP provider's ``Cookie`` header and its ``pass`` / ``pwd`` values are
credentials: stored encrypted, masked when read (DESIGN §2), sent as given. They were
stored in clear and shown to every reader of ``GET /v1/providers``."""

from __future__ import annotations

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.http_sink import HttpSink

SECRETS = ("sess-4f1d9c2a77", "gw-pass-9183", "gw-pwd-5521", "body-pass-7734")


@covers(
    "PUT /v1/providers/{nickname}",
    "GET /v1/providers/{nickname}",
    "POST /v1/providers/{nickname}/test",
)
def test_a_cookie_and_pass_or_pwd_values_are_secrets(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink:
        provider = {
            "kind": "http",
            "method": "POST",
            "endpoint": f"{sink.url}/send",
            "headers": {"Cookie": "session=sess-4f1d9c2a77", "X-Bypass": "yes"},
            "query": {"user": "acme", "pass": "gw-pass-9183", "api_pwd": "gw-pwd-5521"},
            "body": {"to": "$$To", "subject": "$$Subject", "from": "$$FromName",
                     "addr": "$$FromAddress", "html": "$$HTML",
                     "login": {"smtp_pass": "body-pass-7734"}},
            "from_address": "deals@acme.example",
        }  # fmt: skip
        with api_client(api_server) as api:
            saved = api.put("/v1/providers/gateway", json=provider)
            assert saved.status_code == 201, saved.text
            view = api.get("/v1/providers/gateway").json()
            sent = api.post("/v1/providers/gateway/test", json={"to": "jane@example.com"})
        stored = str(redis_client.get(store.provider_key("gateway")))
        assert view["headers"] == {"Cookie": "********", "X-Bypass": "yes"}
        assert view["query"] == {"user": "acme", "pass": "********", "api_pwd": "********"}
        assert view["body"]["login"] == {"smtp_pass": "********"}
        for secret in SECRETS:
            assert secret not in saved.text and secret not in stored
        # The provider still gets each value as given.
        assert sent.json()["ok"] is True, sent.text
        (request,) = sink.requests
        assert request.header("Cookie") == "session=sess-4f1d9c2a77"
        query = dict(request.query)
        assert query["pass"] == "gw-pass-9183" and query["api_pwd"] == "gw-pwd-5521"
        assert request.json()["login"] == {"smtp_pass": "body-pass-7734"}
