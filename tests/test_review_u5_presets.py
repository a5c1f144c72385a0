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

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatch.settings import Settings
from tests import smtp_server
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import run_inline, smtp_provider
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


# Each preset with the security of its default port, and its login (reference §2.6, §3, §4).
PRESETS: dict[str, tuple[str, tuple[str, str], dict[str, Any]]] = {
    "ses": ("starttls", SES_USER, {"configuration_set": "acme-events_1"}),
    "sendgrid": ("starttls", ("apikey", "SG.key"), {}),
    "gmail": ("tls", ("deals@acme.example", "abcdefghijklmnop"), {}),
}


def _header_lines(data: bytes) -> list[bytes]:
    """The header lines of a message as sent (folded ones unfolded)."""
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
    return head.split(b"\r\n")


def _values(lines: list[bytes], name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1][1:] for line in lines if line.lower().startswith(name + b":")]


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_each_preset_sends_its_headers_once_and_exactly_over_its_security(
    redis_client: redis.Redis, trusted_cert: tuple[Path, Path], kind: str
) -> None:
    """Through each preset (security and login as its service's, the test CA): a message
    with a cc and a bcc carries ``X-CleverTap_META`` once, its value the meta byte for
    byte; SendGrid's ``X-SMTPAPI`` once, on one line (never folded or RFC 2047-encoded),
    JSON whose ``unique_args`` are exactly the meta and the campaign id, in ASCII
    (``\\uXXXX``) for an address that is not; SES's configuration set once. The meta is
    as long as campaigns allow (a 64-octet local part, a 64-character category and
    variant of quotes and backslashes, a 64-character campaign id): every line stays
    within RFC 5322's 998."""
    security, login, extra = PRESETS[kind]
    # 64 octets before the @, in UTF-8 but for SES, which has no SMTPUTF8 (reference §4).
    to = f"{'e' * 64 if kind == 'ses' else 'é' * 32}@{'d' * 60}.example"
    category, variant = '"\\' * 31 + "cc", "\\" * 63 + "v"
    campaign_id = "c" * 64
    with SmtpTestServer(
        security=security, credentials=login, cert=trusted_cert, smtputf8=True
    ) as server:
        smtp_provider(
            redis_client, server.port, kind=kind, security=security, username=login[0],
            password=login[1], tls_ca=trusted_cert[0].read_text(), **extra,
        )  # fmt: skip
        body = {
            "id": campaign_id, "provider": "local", "subject": "s", "html": "<p>h</p>",
            "category": category, "variant": variant, "cc": ["boss@example.com"],
            "bcc": ["archive@example.com"], "recipients": [{"email": to}],
        }  # fmt: skip
        run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
        assert len(server.messages) == 1, server.handler.commands
        sent = server.messages[0]
    assert sent.rcpt_tos == [to, "boss@example.com", "archive@example.com"]
    lines = _header_lines(sent.data)
    assert max(map(len, lines)) <= 998
    (meta,) = _values(lines, b"x-clevertap_meta")
    day = meta.decode().split("|")[3]
    expected = f"{to}|{Settings().account_id}|{campaign_id}|{day}|{variant}|{category}|0|"
    assert meta.decode() == expected
    smtpapi = _values(lines, b"x-smtpapi")
    assert len(smtpapi) == (kind == "sendgrid")
    for value in smtpapi:
        assert value.isascii() and b"=?" not in value
        args = {"unique_args": {"clevertap_meta": expected, "campaign_id": campaign_id}}
        assert json.loads(value) == args
    configuration_sets = _values(lines, b"x-ses-configuration-set")
    assert configuration_sets == ([b"acme-events_1"] if kind == "ses" else [])
