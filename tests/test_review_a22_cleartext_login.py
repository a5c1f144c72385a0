"""An SMTP provider saved with a login it would send in the clear, or never send, says so
(review A22): the README's local walk and provider-smtp.yaml use ``security: none``, and a
file copied from them and pointed at a real server sent its password over the internet
as base64 without a word; a password without a username was silently never used."""

from __future__ import annotations

from typing import Any

from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body


def _warnings(api_server: ApiServer, body: dict[str, Any]) -> list[str]:
    with api_client(api_server) as api:
        saved = api.put("/v1/providers/clear", json=body)
        assert saved.status_code in (200, 201), saved.text
        shown: list[str] = api.get("/v1/providers/clear").json()["warnings"]
    assert shown == saved.json()["warnings"]
    return shown


def test_a_login_over_a_plain_connection_to_another_machine_is_warned_about(
    api_server: ApiServer,
) -> None:
    login = {"username": "mailer", "password": "s3cret-pass"}
    remote = smtp_body(587, host="mail.acme.example", **login)
    (warning,) = _warnings(api_server, remote)
    assert "security 'none' with a login" in warning
    assert "mail.acme.example in the clear" in warning and "s3cret" not in warning
    # Over TLS, with no login, or to this machine: nothing to say.
    assert _warnings(api_server, {**remote, "security": "starttls"}) == []
    assert _warnings(api_server, smtp_body(587, host="mail.acme.example", password="")) == []
    for host in ("127.0.0.1", "localhost", "::1"):
        assert _warnings(api_server, smtp_body(2525, host=host, **login)) == []


def test_a_password_without_a_username_is_warned_about(api_server: ApiServer) -> None:
    body = smtp_body(587, host="mail.acme.example", security="starttls", password="s3cret")
    (warning,) = _warnings(api_server, body)
    assert warning.startswith("password is given but username is empty: no login is made")
    assert _warnings(api_server, {**body, "username": "mailer"}) == []
