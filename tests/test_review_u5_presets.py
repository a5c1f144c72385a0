"""Review U5: the SES, SendGrid and Gmail presets against their seed pages and the
wire reference, each through a real aiosmtpd server with the preset's security
(STARTTLS or SMTPS with a test CA) and its credentials.

SES's SMTP interface has two more ports than 465 and 587 (reference §4): 2465 is a TLS
wrapper (TLS from connect), 2587 STARTTLS. An SES provider saved with port 2465 and no
security took the preset's ``starttls``: each connection waited for a greeting the
server never sends before a TLS handshake, and every message, the test email included,
timed out. One saved with ``starttls`` on 2465 or ``tls`` on 2587 was accepted, with the
same end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import smtp_server
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.smtp_server import SmtpTestServer

SES_USER = ("AKIAIOSFODNN7EXAMPLE", "BLV9mzGQ6nSGIB3LhiTCeV+rDQxeDknRb6Ep1Ts6NyQt")
SENDER = {"from_address": "deals@acme.example"}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds it (asyncio does): a port in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def ses_wrapper_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """SES's second TLS wrapper port, 2465, for the next test server (skipped when taken)."""
    if not _port_free(2465):
        pytest.skip("port 2465 is in use on this machine")
    monkeypatch.setattr(smtp_server, "free_port", lambda: 2465)
    yield 2465


@covers("PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_ses_on_its_tls_wrapper_port_2465_speaks_tls_from_connect(
    api_server: ApiServer,
    redis_client: redis.Redis,
    trusted_cert: tuple[Path, Path],
    ses_wrapper_port: int,
) -> None:
    """An SES provider on port 2465 without a security connects with TLS from connect, as
    SES's TLS wrapper ports speak (reference §4), and its test email is taken."""
    with SmtpTestServer(security="tls", credentials=SES_USER, cert=trusted_cert) as server:
        assert server.port == ses_wrapper_port
        body = {
            "kind": "ses",
            "host": "127.0.0.1",
            "port": ses_wrapper_port,
            "username": SES_USER[0],
            "password": SES_USER[1],
            "tls_ca": trusted_cert[0].read_text(),
            "timeout": 3.0,
            **SENDER,
        }
        with api_client(api_server) as api:
            saved = api.put("/v1/providers/ses-wrapper", json=body)
            assert saved.status_code in (200, 201), saved.text
            assert saved.json()["connects_to"]["security"] == "tls", saved.json()
            answer = api.post("/v1/providers/ses-wrapper/test", json={"to": "ann@example.com"})
        assert answer.json() == {"ok": True, "error": None, "detail": "accepted"}, answer.json()
        assert [m.rcpt_tos for m in server.messages] == [["ann@example.com"]]


@covers("PUT /v1/providers/{nickname}")
def test_ses_ports_take_the_security_ses_speaks_on_them(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """SES's ports (reference §4): 2465 TLS from connect, 2587 STARTTLS. A port given
    alone takes its security; the other one is refused, naming ``security``, as on 465
    and 587."""
    expected = [
        ({"port": 2465}, 2465, "tls"),
        ({"port": 2587}, 2587, "starttls"),
        ({"port": 2465, "security": "tls"}, 2465, "tls"),
        ({"port": 2587, "security": "starttls"}, 2587, "starttls"),
        ({"port": 465}, 465, "tls"),
        ({}, 587, "starttls"),
    ]
    refused = [
        {"port": 2465, "security": "starttls"},
        {"port": 2465, "security": "none"},
        {"port": 2587, "security": "tls"},
    ]
    with api_client(api_server) as api:
        for fields, port, security in expected:
            answer = api.put("/v1/providers/ses", json={"kind": "ses", **fields, **SENDER})
            assert answer.status_code in (200, 201), (fields, answer.text)
            assert answer.json()["connects_to"] == {
                "host": "email-smtp.us-east-1.amazonaws.com",
                "port": port,
                "security": security,
            }, fields
        for fields in refused:
            answer = api.put("/v1/providers/ses", json={"kind": "ses", **fields, **SENDER})
            assert answer.status_code == 422, (fields, answer.text)
            assert answer.json()["field"] == "security", answer.json()
            assert f"port {fields['port']}" in answer.json()["detail"], answer.json()
        # Another kind's server on 2465 may speak anything: the port is SES's.
        other = {"kind": "smtp", "host": "mail.example.com", "port": 2465, **SENDER}
        answer = api.put("/v1/providers/other", json={**other, "security": "starttls"})
        assert answer.status_code in (200, 201), answer.text


@covers("PUT /v1/providers/{nickname}", "POST /v1/providers/{nickname}/test")
def test_a_gmail_app_password_copied_with_its_spaces_logs_in(
    api_server: ApiServer, redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    """Google shows an app password as four groups of four letters ("abcd efgh ijkl
    mnop", seed 001: "the App password that you generated"); the spaces are for reading
    and the login takes the 16 letters. Copied as shown, every login was refused (535
    5.7.8) and every campaign paused: it is saved without them, over SMTPS (the preset's
    465 security) with the test CA."""
    account = ("deals@acme.example", "abcdefghijklmnop")
    with SmtpTestServer(security="tls", credentials=account, cert=trusted_cert) as server:
        body = {
            "kind": "gmail",
            "host": "127.0.0.1",
            "port": server.port,
            "username": account[0],
            "password": "abcd efgh ijkl\u00a0mnop",  # as copied from Google's dialog
            "tls_ca": trusted_cert[0].read_text(),
            "timeout": 5.0,
            **SENDER,
        }
        with api_client(api_server) as api:
            saved = api.put("/v1/providers/gmail", json=body)
            assert saved.status_code in (200, 201), saved.text
            assert saved.json()["connects_to"]["security"] == "tls"
            answer = api.post("/v1/providers/gmail/test", json={"to": "ann@example.com"})
            assert answer.json() == {"ok": True, "error": None, "detail": "accepted"}
            # Any other password is kept as given (a wrong one is Gmail's to refuse).
            other = api.put("/v1/providers/gmail", json={**body, "password": "my account pw"})
            assert other.status_code == 200, other.text
            refused = api.post("/v1/providers/gmail/test", json={"to": "ann@example.com"})
        assert refused.json()["error"] == "SMTP connection error", refused.json()
        assert "535" in refused.json()["detail"]
        assert [m.rcpt_tos for m in server.messages] == [["ann@example.com"]]
