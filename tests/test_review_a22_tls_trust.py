"""A stored secret is kept on a replacement only while the provider takes the same
certificates for its server: turning ``tls_verify`` off, or trusting another ``tls_ca``,
sends the password to whoever answers in the server's place (review A22)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatch.provider_store import ProviderFieldError, load_provider, save_provider
from dispatch.test_email import send_test_email
from tests.smtp_server import SmtpTestServer, self_signed_cert

MASK = "********"
CREDENTIALS = ("mailer", "s3cret-pass")


def _smtp(port: int, **fields: Any) -> dict[str, Any]:
    return {
        "nickname": "trusting",
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "starttls",
        "username": CREDENTIALS[0],
        "from_address": "deals@acme.example",
        **fields,
    }


@pytest.mark.parametrize("weaker", ["tls_verify", "tls_ca"])
def test_a_kept_password_does_not_go_to_a_server_whose_certificate_was_not_checked(
    redis_client: redis.Redis, tmp_path: Path, weaker: str
) -> None:
    """The server here has a certificate no default CA signed: someone answering in the
    provider's server's place. Saved with the default checks, the password never reaches
    it; a replacement that stops checking, or trusts the newcomer's CA, and gives the
    mask (or leaves the password out) must not send it the stored password."""
    cert, key = self_signed_cert(tmp_path)
    with SmtpTestServer(security="starttls", credentials=CREDENTIALS, cert=(cert, key)) as server:
        save_provider(_smtp(server.port, password=CREDENTIALS[1]), redis_client)
        first = asyncio.run(send_test_email(load_provider("trusting", redis_client), "a@b.example"))
        assert first.ok is False and "TLS failed" in first.detail  # refused: not checked

        change = {"tls_verify": False} if weaker == "tls_verify" else {"tls_ca": cert.read_text()}
        for password in ({"password": MASK}, {}):
            with pytest.raises(ProviderFieldError) as refused:
                save_provider(_smtp(server.port, **password, **change), redis_client)
            assert refused.value.field == "password"
            assert "instead of 127.0.0.1:" in str(refused.value)
            assert "(starttls)" in str(refused.value)

        stored = load_provider("trusting", redis_client)
        assert stored.tls_verify is True and stored.tls_ca == ""
        again = asyncio.run(send_test_email(stored, "a@b.example"))
        assert again.ok is False and server.messages == []  # the password never went

        # Given anew, the change is saved (whoever gives it knows where it goes); the same
        # trust then keeps it.
        save_provider(_smtp(server.port, password=CREDENTIALS[1], **change), redis_client)
        save_provider(_smtp(server.port, password=MASK, **change), redis_client)
        sent = asyncio.run(send_test_email(load_provider("trusting", redis_client), "a@b.example"))
    assert sent.ok is True, sent
    assert [m.rcpt_tos for m in server.messages] == [["a@b.example"]]


def test_an_http_provider_keeps_its_secrets_only_with_the_same_certificate_checks(
    redis_client: redis.Redis,
) -> None:
    body = {
        "nickname": "trusting-http",
        "kind": "http",
        "endpoint": "https://api.esp.example/v1/send",
        "headers": {"X-Api-Key": "k-123456"},
        "body": {"to": "$$To", "subject": "$$Subject", "html": "$$HTML",
                 "from": "$$FromName <$$FromAddress>"},
        "from_address": "deals@acme.example",
    }  # fmt: skip
    save_provider(body, redis_client)
    masked = {**body, "headers": {"X-Api-Key": MASK}}
    with pytest.raises(ProviderFieldError) as refused:
        save_provider({**masked, "tls_verify": False}, redis_client)
    assert refused.value.field == "headers.X-Api-Key"
    assert "any certificate: tls_verify false" in str(refused.value)
    save_provider(masked, redis_client)  # the same checks keep it
    # Over plain http no certificate is checked: tls_verify changes nothing there.
    plain = {**body, "endpoint": "http://api.esp.example/v1/send"}
    save_provider(plain, redis_client)
    save_provider({**plain, "headers": {"X-Api-Key": MASK}, "tls_verify": False}, redis_client)
