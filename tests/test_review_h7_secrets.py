"""Provider credentials that a refusing server echoes stay out of every answer, record and
log line (review H7): a 535 quoting the AUTH line, an error page quoting the request's URL."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body
from tests.helpers import campaign_body, http_provider, run_inline, smtp_provider
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.smtp_server import SmtpTestServer

PASSWORD = "S3cret-Passw0rd+h7/x"
USER = "mailer"


class EchoingAuthServer(SmtpTestServer):
    """Refuses every login with a 535 that quotes what the client sent, as some servers
    do: AUTH PLAIN's base64 string (and its decoding), AUTH LOGIN's base64 password."""

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login, data.password
        if mechanism == "PLAIN":
            sent = base64.b64encode(b"\0" + login + b"\0" + password).decode()
        else:
            sent = base64.b64encode(password).decode()
        quoted = f"{sent} ({login.decode()} / {password.decode()})"
        message = f"535 5.7.8 Authentication failed: AUTH {mechanism} {quoted}"
        return AuthResult(success=False, handled=False, message=message)


def _forms(password: str, user: str = USER) -> list[str]:
    """The password as a reply could quote it: plain, and in AUTH PLAIN's and LOGIN's base64."""
    return [
        password,
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
        base64.b64encode(password.encode()).decode(),
    ]


@pytest.fixture(params=["PLAIN", "LOGIN"])
def echoing(request: pytest.FixtureRequest) -> Iterator[EchoingAuthServer]:
    """The server offering one mechanism only (aiosmtplib tries the next after a 535)."""
    server = EchoingAuthServer(credentials=(USER, "the right one"))
    other = "LOGIN" if request.param == "PLAIN" else "PLAIN"
    original = SMTP.__init__

    def init(self: SMTP, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "auth_exclude_mechanism": [other]})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SMTP, "__init__", init)
        with server:
            yield server


def _stored_text(r: redis.Redis) -> str:
    """Every dispatch key's value as text (hashes, streams, lists...)."""
    parts = []
    for key in r.scan_iter(match="dispatch:*"):
        kind = r.type(key)
        if kind == "string":
            parts.append(str(r.get(key)))
        elif kind == "hash":
            parts.append(json.dumps(r.hgetall(key)))
        elif kind == "stream":
            parts.append(json.dumps(r.xrange(key)))
        elif kind == "list":
            parts.append(json.dumps(r.lrange(key, 0, -1)))
        elif kind == "zset":
            parts.append(json.dumps(r.zrange(key, 0, -1)))
    return "\n".join(parts)


def _our_logs(caplog: pytest.LogCaptureFixture) -> str:
    """The log lines of this process but the test SMTP server's own (aiosmtpd's mail.log)."""
    return "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name != "mail.log"
    )


def _leaked(text: str, forms: list[str]) -> list[str]:
    return [form for form in forms if form in text]


def test_a_535_quoting_the_login_does_not_show_the_password_in_the_test_email_answer(
    api_server: ApiServer, redis_client: redis.Redis, echoing: EchoingAuthServer
) -> None:
    with api_client(api_server) as api:
        body = smtp_body(echoing.port, username=USER, password=PASSWORD)
        assert api.put("/v1/providers/echo", json=body).status_code == 201
        answer = api.post("/v1/providers/echo/test", json={"to": "someone@example.com"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["ok"] is False and result["error"] == "SMTP connection error"
    assert _leaked(answer.text, _forms(PASSWORD)) == []
    # Still says what failed, and who refused it.
    detail = result["detail"]
    assert "authentication refused by 127.0.0.1" in detail and "535 5.7.8" in detail
    assert "********" in detail


def test_a_535_quoting_the_login_leaves_no_password_in_records_events_or_logs(
    redis_client: redis.Redis, echoing: EchoingAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_provider(redis_client, echoing.port, username=USER, password=PASSWORD)
    with caplog.at_level(logging.DEBUG):
        campaign_id, results = run_inline(redis_client, campaign_body("h7-auth", 3))
    reason = results[0].paused_reason
    assert "authentication refused" in reason and "535" in reason
    assert _leaked(reason, _forms(PASSWORD)) == []
    assert redis_client.hget(f"dispatch:campaign:{campaign_id}", "status") == "paused"
    assert _leaked(_stored_text(redis_client), _forms(PASSWORD)) == []
    assert _leaked(_our_logs(caplog), _forms(PASSWORD)) == []


KEY = "sk+live/h7=key&more"


def _echo_the_target(request: RecordedRequest) -> Reply:
    """An error page quoting the request line, as many servers' 4xx pages do."""
    body = json.dumps({"error": "unknown sender", "request": request.target}).encode()
    return Reply(400, body)


def test_an_error_quoting_the_url_does_not_show_a_query_credential(
    api_server: ApiServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The key travels percent-encoded in the query (``sk%2Blive%2F...``): the answer
    quotes it so, and that spelling is masked as well as the literal one."""
    with HttpSink(answer=_echo_the_target) as sink:
        http_provider(redis_client, sink.url, query={"api_key": KEY})
        with api_client(api_server) as api:
            answer = api.post("/v1/providers/esp/test", json={"to": "someone@example.com"})
            with caplog.at_level(logging.DEBUG):
                run_inline(redis_client, campaign_body("h7-url", 2, provider="esp"))
        assert sink.requests and ("api_key", KEY) in sink.requests[0].query
    forms = [KEY, "sk%2Blive", "h7%3Dkey"]
    result = answer.json()
    assert result["ok"] is False and result["detail"].startswith("HTTP 400: ")
    assert "unknown sender" in result["detail"] and "api_key=********" in result["detail"]
    assert _leaked(answer.text, forms) == []
    assert _leaked(_stored_text(redis_client), forms) == []
    assert _leaked(_our_logs(caplog), forms) == []


def test_an_error_quoting_a_key_as_php_escapes_it_does_not_show_it(
    redis_client: redis.Redis,
) -> None:
    """PHP's json_encode writes "/" as "\\/": an API answering "invalid key sk\\/..." quotes
    the X-Api-Key so, and that spelling is masked too."""

    def echo_the_key(request: RecordedRequest) -> Reply:
        key = str(request.header("X-Api-Key")).replace("/", "\\/")
        return Reply(403, ('{"error":"key ' + key + ' is not allowed to send"}').encode())

    with HttpSink(answer=echo_the_key) as sink:
        http_provider(redis_client, sink.url, headers={"X-Api-Key": KEY})
        _, results = run_inline(redis_client, campaign_body("h7-php", 1, provider="esp"))
    reason = results[0].paused_reason
    assert "HTTP 403" in reason and "is not allowed to send" in reason
    assert "sk+live\\/h7" not in reason and "key ******** is not" in reason
