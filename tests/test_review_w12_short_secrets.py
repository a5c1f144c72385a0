"""A short credential a refusing server echoes is masked too (review W12): parts of a
credential shorter than six characters were not searched for, so a 4-character password
or API key quoted by a provider's error stood in the test email's answer, every message's
detail and the logs. Short ones are masked where they stand alone, so that a reply's own
words around them stay readable."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from providers.errors import masked, secret_spellings
from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body
from tests.helpers import campaign_body, http_provider, run_inline
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.smtp_server import SmtpTestServer

KEY = "k7q2"  # an API key of four characters
PASSWORD = "pw12"


def _echo_the_credentials(request: RecordedRequest) -> Reply:
    """An error page quoting what the client sent: its API key, and the basic
    credentials decoded."""
    basic = str(request.header("Authorization")).removeprefix("Basic ")
    user, _, password = base64.b64decode(basic).decode().partition(":")
    quoted = f"key {request.header('X-Api-Key')} unknown; user {user} password {password}"
    return Reply(400, json.dumps({"error": quoted}).encode())


def test_a_short_key_and_password_an_http_error_quotes_are_masked_everywhere(
    api_server: ApiServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with HttpSink(answer=_echo_the_credentials) as sink, api_client(api_server) as api:
        fields = {"auth": "basic", "username": "mailer", "password": PASSWORD}
        http_provider(redis_client, sink.url, headers={"X-Api-Key": KEY}, **fields)
        answer = api.post("/v1/providers/esp/test", json={"to": "someone@example.com"})
        with caplog.at_level(logging.INFO):
            campaign_id, _ = run_inline(redis_client, campaign_body("w12-short", 2, provider="esp"))
        messages = api.get(f"/v1/campaigns/{campaign_id}/messages", params={"status": "failed"})
    assert sink.requests and sink.requests[0].header("X-Api-Key") == KEY
    detail = answer.json()["detail"]
    # The reply's own words stay; the credentials do not.
    assert detail.startswith("HTTP 400: ") and "user mailer password ********" in detail
    assert "key ******** unknown" in detail
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dispatch"))
    assert "********" in logs
    for text in (answer.text, messages.text, logs):
        assert KEY not in text and PASSWORD not in text, text


class EchoingAuthServer(SmtpTestServer):
    """Refuses every login with a 535 quoting the password it was given."""

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        message = f"535 5.7.8 Authentication failed: password {data.password.decode()} is wrong"
        return AuthResult(success=False, handled=False, message=message)


@pytest.fixture
def echoing() -> Iterator[EchoingAuthServer]:
    with EchoingAuthServer(credentials=("mailer", "the right one")) as server:
        yield server


def test_a_short_smtp_password_a_535_quotes_is_masked(
    api_server: ApiServer, redis_client: redis.Redis, echoing: EchoingAuthServer
) -> None:
    with api_client(api_server) as api:
        body = smtp_body(echoing.port, username="mailer", password=PASSWORD)
        assert api.put("/v1/providers/echo", json=body).status_code == 201
        answer = api.post("/v1/providers/echo/test", json={"to": "someone@example.com"})
    result = answer.json()
    assert result["ok"] is False and result["error"] == "SMTP connection error"
    assert "535 5.7.8 Authentication failed: password ******** is wrong" in result["detail"]
    assert PASSWORD not in answer.text


def test_a_short_credential_is_masked_where_it_stands_alone_only() -> None:
    secrets = secret_spellings(["Basic bWFpbGVyOnB3MTI=", "pw12", "Token ab3"])
    text = "Basic realm=esp: pw12 refused (pw123, xpw12); token ab3 (ab3c)"
    assert masked(text, secrets) == (
        "Basic realm=esp: ******** refused (pw123, xpw12); token ******** (ab3c)"
    )
