"""What a provider's transport exposes (credentials in the clear, certificates not
checked) is said when it is saved (review A25)."""

from __future__ import annotations

from typing import Any

from tests.api_server import ApiServer
from tests.api_support import api_client

BODY = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress", "h": "$$HTML",
        "mid": "$$MessageID"}  # fmt: skip
SENDER = {"from_address": "deals@acme.example"}


def _warnings(api_server: ApiServer, body: dict[str, Any]) -> list[str]:
    with api_client(api_server) as api:
        api.delete("/v1/providers/exposed")  # (no stored password kept from the last)
        saved = api.put("/v1/providers/exposed", json={**SENDER, **body})
        assert saved.status_code in (200, 201), saved.text
        shown = api.get("/v1/providers/exposed").json()["warnings"]
    assert shown == saved.json()["warnings"]
    return [str(w) for w in shown]


def test_credentials_sent_in_the_clear_are_warned_of(api_server: ApiServer) -> None:
    """An ``http://`` endpoint on another machine with an API key in a header (or a basic
    login) sent the key in the clear with no word on save, where an SMTP login over
    security 'none' is warned of; to this machine (a test sink) or without a credential
    there is nothing to say."""
    http = {"kind": "http", "endpoint": "http://esp.example/send", "body": BODY}
    (keyed,) = _warnings(api_server, {**http, "headers": {"Authorization": "Bearer sk-1"}})
    assert keyed.startswith("endpoint is http://: headers.Authorization go to esp.example")
    assert "in the clear" in keyed and "use https://" in keyed
    basic = {"auth": "basic", "username": "u", "password": "p"}
    (login,) = _warnings(api_server, {**http, **basic, "query": {"api_key": "k"}})
    assert "auth 'basic' (username and password), query.api_key go to esp.example" in login
    assert _warnings(api_server, http) == []
    local = {**http, **basic, "endpoint": "http://127.0.0.1:9/send"}
    assert _warnings(api_server, local) == []
    assert _warnings(api_server, {**http, **basic, "endpoint": "https://esp.example/"}) == []


def test_certificates_left_unchecked_are_warned_of(api_server: ApiServer) -> None:
    """``tls_verify`` false ("tests only") was saved without a word for a server on the
    internet: any certificate taken, credentials and messages to whoever answers."""
    https = {"kind": "http", "endpoint": "https://esp.example/send", "body": BODY}
    (unchecked,) = _warnings(api_server, {**https, "tls_verify": False})
    assert unchecked.startswith("tls_verify false: the certificate of esp.example is not")
    assert "tls_ca" in unchecked
    smtp = {"kind": "smtp", "host": "smtp.example", "security": "starttls", "tls_verify": False}
    (also,) = _warnings(api_server, smtp)
    assert also.startswith("tls_verify false: the certificate of smtp.example is not")
    # A test server on this machine, or no TLS at all: nothing to say.
    assert _warnings(api_server, {**https, "endpoint": "https://[::1]/", "tls_verify": False}) == []
    assert _warnings(api_server, {**smtp, "host": "localhost"}) == []
    assert _warnings(api_server, {**https, "endpoint": "http://esp.example/"}) == []
