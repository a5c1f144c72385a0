"""/v1/providers over HTTP on the real app: save, read, list, delete, and the test email."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body
from tests.http_sink import HttpSink, Reply
from tests.smtp_server import SmtpTestServer

HTTP_BODY = {
    "to": "$$To",
    "subject": "$$Subject",
    "from": "$$FromName",
    "addr": "$$FromAddress",
    "html": "$$HTML",
}

# A Generic HTTP provider with basic auth (hook / h00k); its endpoint is the test's.
BASIC_AUTH_HTTP = {
    "kind": "http",
    "auth": "basic",
    "username": "hook",
    "password": "h00k",
    "body": HTTP_BODY,
    "from_address": "deals@acme.example",
}


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(credentials=("mailer", "s3cret")) as server:
        yield server


@covers(
    "PUT /v1/providers/{nickname}",
    "GET /v1/providers/{nickname}",
    "GET /v1/providers",
    "DELETE /v1/providers/{nickname}",
)
def test_provider_crud_masks_secrets_and_keeps_the_callback_url(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        body = smtp_body(smtp.port, username="mailer", password="s3cret")
        created = api.put("/v1/providers/local", json=body)
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["password"] == "********" and "s3cret" not in created.text
        assert (
            view["callback_url"].startswith("http")
            and "/v1/callbacks/local/" in view["callback_url"]
        )
        replaced = api.put("/v1/providers/local", json={**body, "from_name": "Acme"})
        assert replaced.status_code == 200
        assert replaced.json()["callback_url"] == view["callback_url"]  # the ESP's URL holds

        got = api.get("/v1/providers/local").json()
        assert got["from_name"] == "Acme" and got["password"] == "********"
        listed = api.get("/v1/providers").json()["items"]
        assert [p["nickname"] for p in listed] == ["local"]
        assert "s3cret" not in str(redis_client.get("dispatch:provider:local"))  # encrypted

        assert api.delete("/v1/providers/local").status_code == 204
        missing = api.get("/v1/providers/local")
        assert missing.status_code == 404 and missing.json()["field"] == "nickname"
        assert api.delete("/v1/providers/local").status_code == 404


@covers("PUT /v1/providers/{nickname}")
def test_invalid_provider_configs_get_422_naming_the_field(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    cases = [
        ({**smtp_body(25), "port": "not-a-port"}, "port"),
        ({"host": "x"}, "kind"),
        ({"kind": "carrier-pigeon"}, "kind"),
        ({"kind": "smtp"}, "host"),
        ({**smtp_body(25), "preference_center": "custom"}, "preference_center_url"),
        ({**smtp_body(25), "nickname": "other"}, "nickname"),
        ({**smtp_body(25), "colour": "red"}, "colour"),
        ({**smtp_body(25), "tls_ca": "not a certificate"}, "tls_ca"),
        (
            {"kind": "http", "endpoint": "http://127.0.0.1:9/send", "body": {"to": "$$To"}},
            "body",
        ),
    ]
    with api_client(api_server) as api:
        for body, field in cases:
            answer = api.put("/v1/providers/local", json=body)
            assert answer.status_code == 422, (body, answer.text)
            error = answer.json()
            assert error["field"] == field, (body, error)
            assert field in error["detail"]
        bad_name = api.put("/v1/providers/Not_Valid", json=smtp_body(25))
        assert bad_name.status_code == 422 and bad_name.json()["field"] == "nickname"
        assert api.get("/v1/providers").json()["items"] == []


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_http_provider_warns_without_message_id(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    body = {"kind": "http", "endpoint": "http://127.0.0.1:9/send", "body": HTTP_BODY}
    with api_client(api_server) as api:
        assert api.put("/v1/providers/hook", json=body).status_code == 201
        warnings = api.get("/v1/providers/hook").json()["warnings"]
        assert any("MessageID" in w for w in warnings)


def _test(api_server: ApiServer, nickname: str, to: str = "someone@example.com") -> dict:  # type: ignore[type-arg]
    with api_client(api_server) as api:
        answer = api.post(f"/v1/providers/{nickname}/test", json={"to": to})
        assert answer.status_code == 200, answer.text
        result: dict = answer.json()  # type: ignore[type-arg]
        assert set(result) == {"ok", "error", "detail"}
        return result


def _save(api_server: ApiServer, nickname: str, body: dict[str, object]) -> None:
    with api_client(api_server) as api:
        assert api.put(f"/v1/providers/{nickname}", json=body).status_code in (200, 201)


@covers("POST /v1/providers/{nickname}/test")
def test_test_email_good_configuration_delivers_one_message(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    _save(api_server, "good", smtp_body(smtp.port, username="mailer", password="s3cret"))
    result = _test(api_server, "good", "Someone@Example.COM")
    assert (result["ok"], result["error"]) == (True, None), result["detail"]
    assert len(smtp.messages) == 1
    message = smtp.messages[0]
    assert message.rcpt_tos == ["Someone@example.com"]
    assert message.message["X-CleverTap_META"].startswith("Someone@example.com|")
    assert "good" in str(message.message["Subject"])


@covers("POST /v1/providers/{nickname}/test")
def test_test_email_error_classes(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Each way a provider can fail gives the error class of DESIGN §2."""
    _save(api_server, "badpass", smtp_body(smtp.port, username="mailer", password="wrong"))
    result = _test(api_server, "badpass")
    assert (result["ok"], result["error"]) == (False, "SMTP connection error")
    assert "auth" in result["detail"].lower()

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    _save(api_server, "noserver", smtp_body(dead_port))
    result = _test(api_server, "noserver")
    assert (result["ok"], result["error"]) == (False, "SMTP connection error")

    _save(api_server, "tlsmismatch", smtp_body(smtp.port, security="tls", timeout=5))
    assert _test(api_server, "tlsmismatch")["error"] == "SMTP connection error"

    with socket.socket() as silent:  # accepts connections, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        _save(api_server, "silent", smtp_body(silent.getsockname()[1], timeout=0.5))
        result = _test(api_server, "silent")
    assert (result["ok"], result["error"]) == (False, "SMTP timeout")

    auth = {"username": "mailer", "password": "s3cret"}
    _save(api_server, "picky", smtp_body(smtp.port, **auth))
    smtp.handler.rcpt_reply = lambda address: "550 5.1.1 no such user"
    result = _test(api_server, "picky")
    assert (result["ok"], result["error"]) == (False, "SMTP invalid email ID")
    assert "550" in result["detail"]

    smtp.handler.rcpt_reply = lambda address: None
    smtp.handler.data_reply = lambda envelope: "554 5.7.1 message refused"
    result = _test(api_server, "picky")
    assert (result["ok"], result["error"]) == (False, "SMTP dispatching failed")
    assert smtp.messages == []


@covers("POST /v1/providers/{nickname}/test")
def test_test_email_through_the_http_kind(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        body = {
            "kind": "http",
            "endpoint": f"{sink.url}/send",
            "body": {**HTTP_BODY, "mid": "$$MessageID"},
            "from_name": "Acme",
            "from_address": "deals@acme.example",
        }
        _save(api_server, "hook", body)
        assert _test(api_server, "hook")["ok"] is True
        sent = sink.requests[0].json()
        assert sent["to"] == "someone@example.com" and sent["mid"].startswith("someone@")

        sink.script(Reply(400, b'{"error": "bad sender"}'))
        result = _test(api_server, "hook")
        assert (result["ok"], result["error"]) == (False, "Dispatch failed")
        assert "400" in result["detail"] and "bad sender" in result["detail"]


@covers("POST /v1/providers/{nickname}/test")
def test_test_email_refuses_a_bad_address_and_an_unknown_provider(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    _save(api_server, "good", smtp_body(smtp.port, username="mailer", password="s3cret"))
    with api_client(api_server) as api:
        bad = api.post("/v1/providers/good/test", json={"to": "not an address"})
        assert bad.status_code == 422 and bad.json()["field"] == "to"
        missing = api.post("/v1/providers/good/test", json={})
        assert missing.status_code == 422 and missing.json()["field"] == "to"
        unknown = api.post("/v1/providers/nobody/test", json={"to": "a@example.com"})
        assert unknown.status_code == 404
    assert smtp.messages == []


@covers("GET /v1/providers", "PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_requests_without_a_valid_token_get_401(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    for token in (None, "wrong-token"):
        with api_client(api_server, token=token) as api:
            for method, path in (
                ("GET", "/v1/providers"),
                ("PUT", "/v1/providers/x"),
                ("POST", "/v1/providers/x/test"),
            ):
                answer = api.request(method, path, json={})
                assert answer.status_code == 401, (method, path, token)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert answer.json()["detail"]


@covers(
    "GET /v1/providers/{nickname}",
    "PUT /v1/providers/{nickname}",
    "POST /v1/providers/{nickname}/test",
)
def test_a_provider_read_and_saved_back_keeps_its_secrets(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """GET answers the mask for a secret, plus ``callback_url`` and ``warnings``; that
    answer PUT back as it is keeps the stored secret, of every kind that has one."""
    with api_client(api_server) as api, HttpSink() as sink:
        smtp_config = smtp_body(smtp.port, username="mailer", password="s3cret")
        http_config = {**BASIC_AUTH_HTTP, "endpoint": f"{sink.url}/send"}
        for nickname, config in (("local", smtp_config), ("hook", http_config)):
            assert api.put(f"/v1/providers/{nickname}", json=config).status_code == 201
            view = api.get(f"/v1/providers/{nickname}").json()
            assert view["password"] == "********" and "callback_url" in view
            again = api.put(f"/v1/providers/{nickname}", json=view)
            assert again.status_code == 200, again.text
            assert again.json() == view
            result = _test(api_server, nickname)
            assert (result["ok"], result["error"]) == (True, None), result["detail"]
        assert smtp.messages  # authenticated as mailer / s3cret
        assert sink.requests[0].header("Authorization") == "Basic aG9vazpoMDBr"  # hook:h00k

        # The mask with no secret stored to keep: a new provider, or one without.
        masked = smtp_body(smtp.port, username="mailer", password="********")
        assert (
            api.put("/v1/providers/local", json=smtp_body(smtp.port, password="")).status_code
            == 200
        )
        for nickname in ("fresh", "local"):
            answer = api.put(f"/v1/providers/{nickname}", json=masked)
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == "password"
        assert api.get("/v1/providers/fresh").status_code == 404


def test_a_provider_whose_secret_the_key_cannot_read_is_still_shown(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISPATCH_SECRET_KEY changed: reading the provider (and the list) shows it with a
    warning that says what to do, instead of a 500; sending with it still needs the key."""
    from dispatch import crypto, provider_store
    from dispatch.settings import get_settings

    provider_store.save_provider(
        {**smtp_body(2525, username="mailer", password="s3cret"), "nickname": "locked"},
        redis_client,
    )
    try:
        monkeypatch.setenv("DISPATCH_SECRET_KEY", "another-key")
        get_settings.cache_clear()
        view = provider_store.provider_view("locked", redis_client)
        assert view["password"] == "********" and view["username"] == "mailer"
        assert [w.split(":")[0] for w in view["warnings"]] == ["password"]
        assert "DISPATCH_SECRET_KEY" in view["warnings"][0]
        with pytest.raises(crypto.SecretKeyError):
            provider_store.load_provider("locked", redis_client)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert provider_store.provider_view("locked", redis_client)["warnings"] == []


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_a_service_kind_without_its_credentials_is_saved_with_a_warning(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """SES, SendGrid and Gmail always ask for a login: saved without one, the provider says
    what is missing and what to give (callbacks may be set up before the credentials)."""
    sender = {"from_address": "deals@acme.example"}
    cases = [
        ({"kind": "ses", "sns_topic_arns": []}, "username and password", "SMTP credentials"),
        ({"kind": "sendgrid"}, "password", "API key"),
        ({"kind": "gmail", "username": "deals@acme.example"}, "password", "app password"),
    ]
    with api_client(api_server) as api:
        for body, missing, hint in cases:
            saved = api.put("/v1/providers/svc", json={**body, **sender})
            assert saved.status_code in (200, 201), saved.text
            shown = api.get("/v1/providers/svc").json()["warnings"]
            assert shown == saved.json()["warnings"]
            (warning,) = [w for w in shown if "refuses the session" in w]
            assert warning.startswith(f"{missing} empty") and hint in warning
            complete = {"username": "deals@acme.example", "password": "s3cret", **body, **sender}
            saved = api.put("/v1/providers/svc", json=complete)
            assert not [w for w in saved.json()["warnings"] if "refuses the session" in w]
        plain = api.put("/v1/providers/svc", json=smtp_body(25))  # any server: login optional
        assert plain.json()["warnings"] == []
        # A service takes a login only over TLS; a test server in its place may not.
        login = {"username": "apikey", "password": "s3cret", "security": "none", **sender}
        (clear,) = api.put("/v1/providers/svc", json={"kind": "sendgrid", **login}).json()[
            "warnings"
        ]
        assert "security 'none' against smtp.sendgrid.net" in clear
        assert api.get("/v1/providers/svc").json()["connects_to"] == {
            "host": "smtp.sendgrid.net",
            "port": 587,
            "security": "none",
        }  # the preset's host and port, shown; saved back, it changes nothing
        local = {"kind": "sendgrid", "host": "127.0.0.1", "port": 2525, **login}
        assert api.put("/v1/providers/svc", json=local).json()["warnings"] == []
        view = api.get("/v1/providers/svc").json()
        assert view["connects_to"] == {"host": "127.0.0.1", "port": 2525, "security": "none"}
        assert api.put("/v1/providers/svc", json=view).status_code == 200
        assert "connects_to" not in str(redis_client.get(store.provider_key("svc")))


@covers("PUT /v1/providers/{nickname}")
@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("http://127.0.0.1:9/send", True),
        ("http://10.0.0.5/send", True),
        ("http://[::ffff:169.254.169.254]/latest", True),
        ("http://localhost:9/send", True),
        ("https://esp.invalid/send", False),  # not resolvable from here: checked at send
    ],
)
def test_a_private_endpoint_is_refused_when_saved(
    api_server: ApiServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    refused: bool,
) -> None:
    """DESIGN §4, at save for early feedback (it was only found at send time, when the
    campaign paused): unless DISPATCH_ALLOW_PRIVATE_ENDPOINTS is on."""
    from dispatch.settings import get_settings

    body = {"kind": "http", "method": "POST", "endpoint": endpoint, "body": HTTP_BODY,
            "from_name": "Acme", "from_address": "deals@acme.example"}  # fmt: skip
    monkeypatch.setenv("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "false")
    get_settings.cache_clear()
    try:
        with api_client(api_server) as api:
            answer = api.put("/v1/providers/esp", json=body)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    if refused:
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "endpoint"
        assert "DISPATCH_ALLOW_PRIVATE_ENDPOINTS" in answer.json()["detail"]
    else:
        assert answer.status_code == 201, answer.text
    with api_client(api_server) as api:  # allowed (as in the tests and the demo)
        assert api.put("/v1/providers/esp2", json=body).status_code == 201


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_an_api_key_in_an_http_providers_headers_is_a_secret(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """DESIGN §2: API keys are stored encrypted and never returned. DESIGN §4's own
    example carries one in ``Authorization: Bearer ...``."""
    with HttpSink() as sink:
        body = {
            "kind": "http",
            "endpoint": f"{sink.url}/send",
            "headers": {
                "Authorization": "Bearer sk-live-123",
                "X-Api-Key": "k-456",
                "X-Campaign": "$$CampaignID",  # filled per message: not a secret
                "Accept": "application/json",
            },
            "body": HTTP_BODY,
            "from_name": "Acme",
            "from_address": "deals@acme.example",
        }
        with api_client(api_server) as api:
            saved = api.put("/v1/providers/hook", json=body)
            assert saved.status_code == 201 and "sk-live-123" not in saved.text
            view = api.get("/v1/providers/hook").json()
            assert view["headers"] == {
                "Authorization": "********",
                "X-Api-Key": "********",
                "X-Campaign": "$$CampaignID",
                "Accept": "application/json",
            }
            stored = redis_client.get(store.provider_key("hook"))
            assert stored is not None and stored.count('{"enc":') == 2
            assert "sk-live-123" not in stored and "k-456" not in stored
            # The view saved back as it is keeps the keys; one key given anew replaces it.
            view["headers"]["X-Api-Key"] = "k-789"
            assert api.put("/v1/providers/hook", json=view).status_code == 200
            refused = api.put(
                "/v1/providers/hook",
                json={**body, "headers": {**body["headers"], "X-Token": "********"}},
            )
            assert refused.status_code == 422 and refused.json()["field"] == "headers.X-Token"
        assert _test(api_server, "hook")["ok"] is True
        sent = sink.requests[-1]
    assert sent.header("Authorization") == "Bearer sk-live-123"
    assert sent.header("X-Api-Key") == "k-789"


@covers("PUT /v1/providers/{nickname}")
def test_an_api_key_in_an_http_providers_endpoint_is_refused_for_query(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The endpoint is stored and shown as it is: a key in its query string would be
    returned in clear by every GET; in ``query`` it is a secret."""
    body = {
        "kind": "http",
        "endpoint": "https://api.esp.example/send?region=eu&api_key=sk-live-123",
        "body": HTTP_BODY,
        "from_name": "Acme",
        "from_address": "deals@acme.example",
    }
    with api_client(api_server) as api:
        refused = api.put("/v1/providers/keyed", json=body)
        assert refused.status_code == 422 and refused.json()["field"] == "endpoint"
        assert "'api_key'" in refused.json()["detail"]
        assert redis_client.get(store.provider_key("keyed")) is None
        moved = {**body, "endpoint": "https://api.esp.example/send?region=eu",
                 "query": {"api_key": "sk-live-123"}}  # fmt: skip
        assert api.put("/v1/providers/keyed", json=moved).status_code == 201
        view = api.get("/v1/providers/keyed").json()
        assert view["query"] == {"api_key": "********"} and "sk-live-123" not in str(view)


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_a_credential_in_an_http_providers_body_is_a_secret(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """An API key an ESP takes in the body (Mandrill's ``"key"``) is a secret as one in a
    header is (DESIGN §2: stored encrypted, never returned); it was stored and shown as
    given (review H7). A ``$$`` value is filled per message and is none; an object of the
    user's own that looks like an encrypted value stays data."""
    with HttpSink() as sink:
        body = {
            "kind": "http",
            "endpoint": f"{sink.url}/send",
            "body": {
                "key": "md-live-123456",
                "idempotency_key": "$$MessageID",
                "message": {"html": "$$HTML", "subject": "$$Subject", "to": [{"email": "$$To"}],
                            "from_email": "$$FromAddress", "from_name": "$$FromName",
                            "tags": [{"auth_token": "tk-987654"}, "plain"]},
                "extra": {"enc": "not ours"},
            },
            "from_address": "deals@acme.example",
        }  # fmt: skip
        with api_client(api_server) as api:
            saved = api.put("/v1/providers/mandrill", json=body)
            assert saved.status_code == 201, saved.text
            assert "md-live-123456" not in saved.text and "tk-987654" not in saved.text
            view = api.get("/v1/providers/mandrill").json()
            assert view["body"]["key"] == "********"
            assert view["body"]["message"]["tags"] == [{"auth_token": "********"}, "plain"]
            assert view["body"]["idempotency_key"] == "$$MessageID"
            assert view["body"]["extra"] == {"enc": "not ours"}
            stored = redis_client.get(store.provider_key("mandrill"))
            assert stored is not None and stored.count('{"enc":') == 3  # two, and the user's
            assert "md-live-123456" not in stored and "tk-987654" not in stored
            # The view saved back keeps both; a mask where none is stored is refused.
            assert api.put("/v1/providers/mandrill", json=view).status_code == 200
            assert _test(api_server, "mandrill")["ok"] is True
            moved = {**view, "body": {**view["body"], "api_key": "********"}}
            refused = api.put("/v1/providers/mandrill", json=moved)
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] == "body.api_key"
        sent = sink.requests[-1].json()
    assert sent["key"] == "md-live-123456"
    assert sent["message"]["tags"] == [{"auth_token": "tk-987654"}, "plain"]
    assert sent["extra"] == {"enc": "not ours"}


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_an_azure_signature_or_function_code_is_a_credential(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """An Azure SAS's ``sig`` and an Azure Function's ``code`` carry the key itself: in
    the endpoint's query they are refused (the endpoint is shown as it is), in ``query``
    or a header they are stored encrypted and masked; "zipcode" is no credential."""
    base = {**BASIC_AUTH_HTTP, "auth": "none", "method": "POST"}
    with api_client(api_server) as api:
        for name in ("sig", "code", "Code"):
            endpoint = f"https://esp.example/send?{name}=Zx81secretValue"
            refused = api.put("/v1/providers/az", json={**base, "endpoint": endpoint})
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] == "endpoint" and name in refused.json()["detail"]
        body = {
            **base,
            "endpoint": "https://esp.example/send?zipcode=75001",
            "headers": {"code": "Zx81secretValue", "X-Zipcode": "75001"},
        }
        assert api.put("/v1/providers/az", json=body).status_code == 201
        shown = api.get("/v1/providers/az").json()
        assert shown["headers"] == {"code": "********", "X-Zipcode": "75001"}
        assert shown["endpoint"].endswith("?zipcode=75001")
        assert "Zx81secretValue" not in str(redis_client.get("dispatch:provider:az"))
