"""A stored secret is kept on a replacement only while the provider still sends to where
the secret was given for: saving a provider must not send its password elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body
from tests.test_api_providers import BASIC_AUTH_HTTP

MASK = "********"


def _put(api_server: ApiServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with api_client(api_server) as api:
        answer = api.put("/v1/providers/moving", json=body)
        return answer.status_code, answer.json()


@pytest.mark.parametrize(
    ("change", "now"),
    [
        ({"host": "198.51.100.7"}, "198.51.100.7:2525 (none)"),
        ({"port": 2526}, "127.0.0.1:2526 (none)"),
        ({"security": "starttls"}, "127.0.0.1:2525 (starttls)"),
    ],
)
def test_a_kept_password_does_not_follow_the_provider_to_another_server(
    api_server: ApiServer, change: dict[str, Any], now: str
) -> None:
    def smtp(**fields: Any) -> dict[str, Any]:
        return {**smtp_body(2525, username="mailer"), **fields}

    assert _put(api_server, smtp(password="s3cret"))[0] in (200, 201)
    for password in ({"password": MASK}, {}):  # the view's mask, or left out
        status, answer = _put(api_server, smtp(**password, **change))
        assert status == 422, answer
        assert answer["field"] == "password"
        assert f"now sends to {now} instead of 127.0.0.1:2525 (none)" in answer["detail"]
    # Given anew, or cleared, the change is saved; the same server keeps it again.
    assert _put(api_server, smtp(password="new", **change))[0] == 200
    assert _put(api_server, smtp(password=MASK, **change))[0] == 200
    assert _put(api_server, smtp(password="", **{**change, "host": "203.0.113.9"}))[0] == 200


def test_an_http_provider_keeps_its_secrets_on_its_origin_only(api_server: ApiServer) -> None:
    first = {**BASIC_AUTH_HTTP, "endpoint": "https://api.esp.example/v1/send",
             "headers": {"X-Api-Key": "k-123456"}}  # fmt: skip
    assert _put(api_server, first)[0] in (200, 201)
    masked = {**first, "password": MASK, "headers": {"X-Api-Key": MASK}}
    # Another path on the same origin keeps them ...
    status, answer = _put(api_server, {**masked, "endpoint": "https://api.esp.example/v2/send"})
    assert status == 200, answer
    # ... another host, scheme or port does not.
    for endpoint in (
        "https://collector.example/v2/send",
        "http://api.esp.example/v2/send",
        "https://api.esp.example:8443/v2/send",
    ):
        status, answer = _put(api_server, {**masked, "endpoint": endpoint})
        assert status == 422, (endpoint, answer)
        assert answer["field"] in {"password", "headers.X-Api-Key"}
        assert "instead of https://api.esp.example" in answer["detail"]
