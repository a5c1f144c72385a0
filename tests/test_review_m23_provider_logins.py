"""Review M23: the logins of the SES, SendGrid and Gmail presets as their seed pages
have users give them, through the real API and a real aiosmtpd over SMTPS (test CA).

* A login pasted with a space at either end (copied from the SES console's dialog or
  its CSV, SendGrid's key page, Google's app-password dialog, often with a no-break
  space from the web page) was saved as given: every login was refused (535), every
  campaign paused, and the password, masked in every read, never showed why. These
  services' logins never begin or end with a space, so it is saved without. Any other
  server's login is kept as given.
* A refused login said only the server's reply ("535 Authentication Credentials
  Invalid"), which does not tell an SES user that IAM access keys are not SMTP
  credentials (seed 003) nor a SendGrid user that the relay takes an API key, not the
  account's password (which seed 004 still asks for): the answer now says what the
  service takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.smtp_server import SmtpTestServer

SENDER = {"from_address": "deals@acme.example"}
LOGINS = {
    "ses": ("AKIAIOSFODNN7EXAMPLE", "BLV9mzGQ6nSGIB3LhiTCeV+rDQxeDknRb6Ep1Ts6NyQt"),
    "sendgrid": ("apikey", "SG.abcdefghijklmnopqrstuv.0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"),
    "gmail": ("deals@acme.example", "abcdefghijklmnop"),
}


def _body(kind: str, port: int, cert: Path, **login: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "host": "127.0.0.1",
        "port": port,
        "security": "tls",
        "tls_ca": cert.read_text(),
        "timeout": 5.0,
        **login,
        **SENDER,
    }


@covers("PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_a_service_login_pasted_with_spaces_at_its_ends_logs_in(
    api_server: ApiServer, redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    for kind, (username, password) in LOGINS.items():
        with SmtpTestServer(
            security="tls", credentials=(username, password), cert=trusted_cert
        ) as server:
            pasted = {"username": f" {username}\u00a0", "password": f"{password} "}
            if kind == "gmail":  # as Google's dialog shows it, copied with a space after
                pasted["password"] = "abcd efgh ijkl mnop "
            with api_client(api_server) as api:
                body = _body(kind, server.port, trusted_cert[0], **pasted)
                saved = api.put(f"/v1/providers/{kind}", json=body)
                assert saved.status_code in (200, 201), saved.text
                assert saved.json()["username"] == username
                answer = api.post(f"/v1/providers/{kind}/test", json={"to": "ann@example.com"})
            assert answer.json() == {"ok": True, "error": None, "detail": "accepted"}, kind
            assert [m.rcpt_tos for m in server.messages] == [["ann@example.com"]], kind


@covers("PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_any_other_servers_login_is_kept_as_given(
    api_server: ApiServer, redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    """A space may be part of another server's password: it is sent as given."""
    account = ("relay", " pass phrase ")
    with SmtpTestServer(security="tls", credentials=account, cert=trusted_cert) as server:
        body = _body("smtp", server.port, trusted_cert[0], username=account[0], password=account[1])
        with api_client(api_server) as api:
            assert api.put("/v1/providers/relay", json=body).status_code in (200, 201)
            answer = api.post("/v1/providers/relay/test", json={"to": "ann@example.com"})
    assert answer.json() == {"ok": True, "error": None, "detail": "accepted"}


@covers("POST /v1/providers/{nickname}/test")
def test_a_refused_login_says_what_the_service_takes(
    api_server: ApiServer, redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    expected = {
        "ses": (
            "Amazon SES takes the SMTP credentials made in the SES console (not IAM access keys)"
        ),
        "sendgrid": "SendGrid takes the API key as password (username apikey)",
        "gmail": "Gmail takes the Gmail address as username and an app password",
    }
    for kind, (username, password) in LOGINS.items():
        with SmtpTestServer(
            security="tls", credentials=(username, password), cert=trusted_cert
        ) as server:
            # SES: an IAM secret access key; SendGrid and Gmail: the account's password.
            wrong = {"username": username, "password": "hunter2-of-the-account"}
            with api_client(api_server) as api:
                body = _body(kind, server.port, trusted_cert[0], **wrong)
                assert api.put(f"/v1/providers/{kind}", json=body).status_code in (200, 201)
                answer = api.post(f"/v1/providers/{kind}/test", json={"to": "ann@example.com"})
        result = answer.json()
        assert result["error"] == "SMTP connection error", result
        assert "535" in result["detail"] and expected[kind] in result["detail"], result
        assert server.messages == []
    # Another server's reply is all there is to say.
    with SmtpTestServer(security="tls", credentials=("relay", "pw"), cert=trusted_cert) as server:
        body = _body("smtp", server.port, trusted_cert[0], username="relay", password="no")
        with api_client(api_server) as api:
            assert api.put("/v1/providers/relay", json=body).status_code in (200, 201)
            answer = api.post("/v1/providers/relay/test", json={"to": "ann@example.com"})
    assert answer.json()["detail"].endswith("535 5.7.8 Authentication credentials invalid")
