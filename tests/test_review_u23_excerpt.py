"""Review U23: the excerpt of a Generic HTTP refusal, through the real API's test email
and a real HTTP server, when the provider holds a long credential (an OAuth access
token of 1.5 KB, as Microsoft's are; a session cookie).

Past the excerpt's read, its last word was cut back as far as the longest credential
reaches, whether the cut fell inside a credential or not: an answer written without
spaces (minified JSON, a batch's per-message errors) lost all its text, and the
message's detail said only "HTTP 400". Only a credential's start left at the cut goes.
"""

from __future__ import annotations

import json

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.http_sink import HttpSink, Reply

TOKEN = "eyJhbGciOiJSUzI1NiJ9." + "QmVhcmVyVG9rZW4" * 100  # 1.5 KB


def _provider(url: str) -> dict[str, object]:
    return {
        "kind": "http",
        "method": "POST",
        "endpoint": f"{url}/send",
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "body": {"to": "$$To", "subject": "$$Subject", "from": "$$FromName",
                 "addr": "$$FromAddress", "html": "$$HTML"},
        "from_address": "deals@acme.example",
    }  # fmt: skip


@covers("PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_a_minified_refusal_is_quoted_beside_a_long_credential(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    errors = [{"code": "invalid_recipient", "field": f"msgs.{i}.to"} for i in range(60)]
    answer = json.dumps({"errors": errors}, separators=(",", ":")).encode()  # 3 KB
    # The read's cut inside the token an indented answer echoes: its start is not quoted.
    echo = b"{\n" + b" " * 1150 + f'"token":"{TOKEN}"}}'.encode()
    with HttpSink() as sink:
        sink.script(Reply(400, answer), Reply(400, echo))
        with api_client(api_server) as api:
            assert api.put("/v1/providers/oauth", json=_provider(sink.url)).status_code == 201
            first = api.post("/v1/providers/oauth/test", json={"to": "ann@example.com"}).json()
            second = api.post("/v1/providers/oauth/test", json={"to": "ann@example.com"}).json()
    assert first["error"] == "Dispatch failed", first
    assert first["detail"].startswith('HTTP 400: {"errors":[{"code":"invalid_recipient"'), first
    assert second["detail"] == 'HTTP 400: { "token":"', second
