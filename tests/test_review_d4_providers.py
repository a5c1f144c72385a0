"""Provider configurations as users store and test them, over the real API (review D4):
an update keeps the secrets it leaves out, and a host or a security that cannot work
is refused naming its field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dispatch import store
from dispatch.settings import get_settings
from providers.config import SmtpConfig, parse_provider_config
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer
from tests.test_api_providers import BASIC_AUTH_HTTP


@pytest.fixture
def login_smtp() -> Iterator[SmtpTestServer]:
    """A real SMTP server that takes the login mailer / s3cret."""
    with SmtpTestServer(credentials=("mailer", "s3cret")) as server:
        yield server


def _test_email(api_server: ApiServer, nickname: str) -> dict[str, object]:
    with api_client(api_server) as api:
        answer = api.post(f"/v1/providers/{nickname}/test", json={"to": "someone@example.com"})
        assert answer.status_code == 200, answer.text
        result: dict[str, object] = answer.json()
        return result


@covers(
    "PUT /v1/providers/{nickname}",
    "GET /v1/providers/{nickname}",
    "POST /v1/providers/{nickname}/test",
)
def test_an_update_that_leaves_out_the_password_keeps_it(
    api_server: ApiServer, redis_client: redis.Redis, login_smtp: SmtpTestServer
) -> None:
    """A PUT with the fields to change and no ``password`` keeps the stored one (it was
    wiped, and the next login was refused); ``"password": ""`` clears it; another kind
    under the nickname is a new configuration and keeps nothing."""
    with api_client(api_server) as api, HttpSink() as sink:
        body = smtp_body(login_smtp.port, username="mailer", password="s3cret")
        assert api.put("/v1/providers/local", json=body).status_code == 201
        update = smtp_body(login_smtp.port, username="mailer", from_name="Acme News")
        answer = api.put("/v1/providers/local", json=update)
        assert answer.status_code == 200, answer.text
        assert answer.json()["password"] == "********"
        stored = str(redis_client.get(store.provider_key("local")))
        assert '"password":{"enc":' in stored and "s3cret" not in stored
        result = _test_email(api_server, "local")
        assert (result["ok"], result["error"]) == (True, None), result["detail"]
        assert login_smtp.messages[-1].message["From"] == "Acme News <deals@acme.example>"

        cleared = api.put("/v1/providers/local", json={**update, "password": ""})
        assert cleared.json()["password"] == ""
        assert api.get("/v1/providers/local").json()["password"] == ""

        # Generic HTTP: the basic-auth password as well.
        http = {**BASIC_AUTH_HTTP, "endpoint": f"{sink.url}/send"}
        assert api.put("/v1/providers/hook", json=http).status_code == 201
        without = {k: v for k, v in http.items() if k != "password"}
        assert api.put("/v1/providers/hook", json=without).json()["password"] == "********"
        result = _test_email(api_server, "hook")
        assert (result["ok"], result["error"]) == (True, None), result["detail"]
        assert sink.requests[-1].header("Authorization") == "Basic aG9vazpoMDBr"  # hook:h00k

        # Another kind under the nickname: the HTTP password is not carried over.
        other = api.put("/v1/providers/hook", json=smtp_body(login_smtp.port, username="mailer"))
        assert other.status_code == 200 and other.json()["password"] == ""


def test_an_update_that_leaves_out_a_password_the_key_cannot_read_says_so(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISPATCH_SECRET_KEY changed: an update without the password cannot keep it, and
    says so naming the field (not a 500, not a silent wipe); giving it anew works."""
    from dispatch import provider_store

    body = {**smtp_body(2525, username="mailer", password="s3cret"), "nickname": "locked"}
    provider_store.save_provider(body, redis_client)
    monkeypatch.setenv("DISPATCH_SECRET_KEY", "another-key")
    get_settings.cache_clear()
    update = {k: v for k, v in body.items() if k != "password"}
    with pytest.raises(provider_store.ProviderFieldError) as refused:
        provider_store.save_provider(update, redis_client)
    assert refused.value.field == "password" and "DISPATCH_SECRET_KEY" in str(refused.value)
    provider_store.save_provider({**update, "password": "n3w"}, redis_client)
    loaded = provider_store.load_provider("locked", redis_client)
    assert isinstance(loaded, SmtpConfig) and loaded.password.get_secret_value() == "n3w"


@covers("PUT /v1/providers/{nickname}")
def test_a_security_its_port_does_not_speak_is_refused_naming_security(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """SMTPS on 587 or 25, STARTTLS or plain on 465 fail at every connect (RFC 8314): 422
    naming ``security``. A port given without a security takes the port's."""
    sender = {"from_address": "deals@acme.example"}
    refused = [
        ({"kind": "smtp", "host": "mail.example.com", "port": 587, "security": "tls"}, "587"),
        ({"kind": "smtp", "host": "mail.example.com", "port": 25, "security": "tls"}, "25"),
        ({"kind": "smtp", "host": "mail.example.com", "port": 465, "security": "starttls"}, "465"),
        ({"kind": "sendgrid", "port": 465, "security": "none"}, "465"),
    ]
    expected = [
        ({"kind": "smtp", "host": "mail.example.com", "port": 465}, 465, "tls"),
        ({"kind": "smtp", "host": "mail.example.com", "security": "tls"}, 465, "tls"),
        ({"kind": "smtp", "host": "mail.example.com"}, 587, "starttls"),
        ({"kind": "gmail", "port": 587}, 587, "starttls"),
        ({"kind": "gmail"}, 465, "tls"),
        ({"kind": "sendgrid", "port": 465}, 465, "tls"),
        ({"kind": "ses", "security": "tls"}, 465, "tls"),
        ({"kind": "smtp", "host": "127.0.0.1", "port": 2465, "security": "tls"}, 2465, "tls"),
    ]
    with api_client(api_server) as api:
        for body, port in refused:
            answer = api.put("/v1/providers/svc", json={**body, **sender})
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["field"] == "security", answer.json()
            assert f"port {port}" in answer.json()["detail"]
        assert api.get("/v1/providers/svc").status_code == 404
        for body, port, security in expected:
            answer = api.put("/v1/providers/svc", json={**body, **sender})
            assert answer.status_code in (200, 201), (body, answer.text)
            assert answer.json()["connects_to"]["port"] == port, body
            assert answer.json()["connects_to"]["security"] == security, body
    # One saved before the rule stays readable (its campaigns and callbacks read it).
    stored = {"kind": "smtp", "nickname": "old", "host": "h", "port": 587, "security": "tls"}
    assert parse_provider_config(stored, stored=True).nickname == "old"


@covers("PUT /v1/providers/{nickname}")
def test_a_host_that_is_no_host_name_is_refused_naming_host(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A URL, a host with its port, spaces or a path in ``host`` never connect (the
    name did not resolve, at send time): 422 naming ``host`` and what it holds. SES's
    API endpoint is no SMTP server."""
    sender = {"from_address": "deals@acme.example"}
    refused = [
        ({"kind": "smtp", "host": "smtp://mail.example.com"}, "scheme"),
        ({"kind": "smtp", "host": "https://smtp.example.com/"}, "scheme"),
        ({"kind": "smtp", "host": "mail.example.com:587"}, "port"),
        ({"kind": "smtp", "host": "mail example.com"}, "not a host name"),
        ({"kind": "smtp", "host": "mail.example.com/smtp"}, "not a host name"),
        ({"kind": "sendgrid", "host": "smtp.sendgrid.net "}, "not a host name"),
        ({"kind": "ses", "host": "email.us-east-1.amazonaws.com"}, "not an SES SMTP endpoint"),
    ]
    accepted = [
        {"kind": "smtp", "host": "mail.example.com"},
        {"kind": "smtp", "host": "127.0.0.1"},
        {"kind": "smtp", "host": "::1"},
        {"kind": "smtp", "host": "mail.bücher.example"},
        {"kind": "smtp", "host": "smtp_relay.internal"},
        {"kind": "ses", "host": "email-smtp.eu-west-1.amazonaws.com"},
        {"kind": "ses", "host": "email-smtp-fips.us-east-1.amazonaws.com"},
        {"kind": "ses", "host": "127.0.0.1", "port": 2525},  # a local stand-in (DESIGN §2)
    ]
    with api_client(api_server) as api:
        for body, problem in refused:
            answer = api.put("/v1/providers/svc", json={**body, **sender})
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["field"] == "host", answer.json()
            assert problem in answer.json()["detail"], answer.json()
        for body in accepted:
            answer = api.put("/v1/providers/svc", json={**body, **sender})
            assert answer.status_code in (200, 201), (body, answer.text)
            assert answer.json()["connects_to"]["host"] == body["host"]


@covers("PUT /v1/providers/{nickname}")
def test_a_login_with_a_line_break_is_refused_without_showing_it(
    api_server: ApiServer,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A password or user name pasted with its newline was saved, and every login was
    then refused as "credentials invalid": 422 naming the field, the secret not shown;
    the CLI says the same."""
    from dispatch.cli import main

    http = {**BASIC_AUTH_HTTP, "endpoint": "http://127.0.0.1:9/send"}
    cases = [
        (smtp_body(2525, username="mailer", password="s3cret\n"), "password"),
        (smtp_body(2525, username="mailer\r\n", password="s3cret"), "username"),
        ({"kind": "sendgrid", "password": "SG.s3cret\u2028"}, "password"),
        ({**http, "password": "s3cret\t"}, "password"),
    ]
    with api_client(api_server) as api:
        for body, field in cases:
            answer = api.put("/v1/providers/svc", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["field"] == field and "line break" in answer.json()["detail"]
            assert "s3cret" not in answer.text
        assert api.get("/v1/providers/svc").status_code == 404
    config = tmp_path / "provider.json"
    config.write_text(json.dumps({**cases[0][0], "nickname": "svc"}))
    assert main(["providers", "add", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "password" in err and "line break" in err and "s3cret" not in out + err
