"""The SMTP family against a real aiosmtpd server: security, AUTH, refusals, retries, reuse."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from dispatch import campaign_reads, campaigns, ledger, lifecycle, store
from dispatch.settings import Settings
from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import parse_provider_config
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    ErrorClass,
    ProviderError,
    SendingQuotaError,
    ThrottledError,
)
from providers.smtp import SmtpTransport
from providers.smtp_replies import ReplyKind, classify
from tests.helpers import create_held, recipients, run_batches, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer, self_signed_cert

META_RE = re.compile(r"^[^|]+@[^|]+\|1\|[^|]+\|\d{8}\|0\|default\|\d+\|$")
FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=5.0)


def _message(seq: int = 0, to: str = "a@example.com") -> OutgoingMessage:
    return OutgoingMessage(
        seq=seq,
        meta=f"{to}|1|c1|20261122|0|default|{seq}|",
        campaign_id="c1",
        to=to,
        subject="Hello",
        html="<p>Hi</p>",
        text="Hi",
        from_address="deals@acme.example",
        from_name="Acme",
    )


def _config(port: int, security: str, **fields: object) -> dict[str, object]:
    """A provider "s" of kind smtp on the local test server."""
    return {"nickname": "s", "kind": "smtp", "host": "127.0.0.1", "port": port,
            "security": security, **fields}  # fmt: skip


async def _send(config: dict[str, object], messages: list[OutgoingMessage]) -> list[object]:
    transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
    async with transport.session() as session:
        return list(await session.send(messages))


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_each_security_mode_delivers(security: str) -> None:
    with SmtpTestServer(security=security) as server:
        # The test server's certificate is self-signed.
        config = _config(server.port, security, tls_verify=False)
        outcomes = asyncio.run(_send(config, [_message(0), _message(1, "b@example.com")]))
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT, OutcomeStatus.SENT]  # type: ignore[attr-defined]
    assert [m.rcpt_tos for m in server.messages] == [["a@example.com"], ["b@example.com"]]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_certificates_are_checked_unless_turned_off(security: str) -> None:
    """TLS contexts are shared per process (providers.tls): one made without checks must
    never serve a provider that checks, in either order."""
    with SmtpTestServer(security=security) as server:
        base = _config(server.port, security)
        unchecked = {**base, "tls_verify": False}
        for config in (base, unchecked, base):
            if config is base:  # the default checks: a self-signed certificate is refused
                with pytest.raises(Exception) as info:
                    asyncio.run(_send(config, [_message()]))
                assert getattr(info.value, "error_class", None) == ErrorClass.CONNECTION
                assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
            else:
                outcomes = asyncio.run(_send(config, [_message()]))
                assert [o.status for o in outcomes] == [OutcomeStatus.SENT]  # type: ignore[attr-defined]
    assert len(server.messages) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_private_ca_is_trusted_through_tls_ca(security: str, tmp_path: Path) -> None:
    """A relay with a certificate of the user's own CA: ``tls_ca`` trusts it with the checks
    on; the host name must still match, and another CA's certificate is still refused."""
    cert, key = self_signed_cert(tmp_path)  # its own CA, for 127.0.0.1 only
    (tmp_path / "other").mkdir()
    other, _ = self_signed_cert(tmp_path / "other")
    with SmtpTestServer(security=security, cert=(cert, key)) as server:
        trusted = _config(server.port, security, tls_ca=cert.read_text())
        outcomes = asyncio.run(_send(trusted, [_message()]))
        assert [o.status for o in outcomes] == [OutcomeStatus.SENT]  # type: ignore[attr-defined]
        for config, reason in (
            ({**trusted, "host": "localhost"}, "match"),  # the certificate names 127.0.0.1
            ({**trusted, "tls_ca": other.read_text()}, "CERTIFICATE_VERIFY_FAILED"),
        ):
            with pytest.raises(ConfigurationError) as info:
                asyncio.run(_send(config, [_message()]))
            assert reason in info.value.detail
    assert len(server.messages) == 1


def test_plain_client_refused_by_starttls_server_is_a_connection_error() -> None:
    """A server that requires STARTTLS refuses a plain session: never a silent downgrade."""
    with SmtpTestServer(security="starttls") as server:
        config = _config(server.port, "none")
        with pytest.raises(AuthenticationError):
            asyncio.run(_send(config, [_message()]))
    assert server.messages == []


def test_starttls_against_server_without_it_fails() -> None:
    """Not a network hiccup to retry: the server will never offer STARTTLS by itself."""
    with SmtpTestServer(security="none") as server:
        config = _config(server.port, "starttls")
        with pytest.raises(ConfigurationError) as info:
            asyncio.run(_send(config, [_message()]))
    assert info.value.error_class == ErrorClass.CONNECTION
    assert "STARTTLS" in info.value.detail
    assert server.messages == []


def test_credentials_for_a_server_without_auth_fail_as_configuration() -> None:
    """A username given to a server that offers no AUTH (many offer it only after
    STARTTLS) is the provider's configuration to fix, not a transient failure."""
    with SmtpTestServer(security="none") as server:
        config = _config(server.port, "none", username="user", password="secret")
        with pytest.raises(ConfigurationError) as info:
            asyncio.run(_send(config, [_message()]))
    assert "AUTH" in info.value.detail
    assert server.messages == []


@pytest.mark.parametrize("fields", [{"security": "starttls"}, {"username": "u", "password": "p"}])
def test_a_server_lacking_what_the_provider_needs_pauses_the_campaign(
    redis_client: redis.Redis, fields: dict[str, str]
) -> None:
    """STARTTLS or AUTH not offered: every recipient would fail the same way (DESIGN §7)."""
    with SmtpTestServer(security="none") as server:
        smtp_provider(redis_client, server.port, **fields)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(6)}
        cid, _ = run_inline(redis_client, body, FAST)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith("SMTP connection error")
    assert "not supported" in summary["reason"]
    assert (summary["failed"], summary["sent"], summary["queued"]) == (0, 0, 6)


def test_auth_success_and_failure() -> None:
    with SmtpTestServer(credentials=("user", "right")) as server:
        base = _config(server.port, "none", username="user")
        ok = asyncio.run(_send({**base, "password": "right"}, [_message()]))
        assert ok[0].status is OutcomeStatus.SENT  # type: ignore[attr-defined]
        with pytest.raises(AuthenticationError) as info:
            asyncio.run(_send({**base, "password": "wrong"}, [_message(1)]))
    assert info.value.error_class.value == "SMTP connection error"
    assert len(server.messages) == 1


def test_message_headers_and_bcc_only_in_envelope(smtp: SmtpTestServer) -> None:
    msg = OutgoingMessage(
        seq=7,
        meta="a@example.com|1|c1|20261122|0|default|7|",
        campaign_id="c1",
        to="a@example.com",
        cc=("c@example.com",),
        bcc=("hidden@example.com",),
        reply_to="reply@acme.example",
        subject="Grüße – Angebot",
        html="<p>Hallo</p>",
        text="Hallo",
        from_address="news@example.com",
        from_name="Zoë Ñandú Marketing",
    )
    config = _config(smtp.port, "none")
    asyncio.run(_send(config, [msg]))
    received = smtp.messages[0]
    assert received.rcpt_tos == ["a@example.com", "c@example.com", "hidden@example.com"]
    raw = received.data.decode()
    assert "hidden@example.com" not in raw
    assert "From: =?utf-8?b?" in raw  # RFC 2047 encoded display name, never raw UTF-8
    parsed = received.message
    assert parsed["From"].addresses[0].display_name == "Zoë Ñandú Marketing"
    assert parsed["Subject"] == "Grüße – Angebot"
    assert parsed["Cc"] == "c@example.com"
    assert parsed["Reply-To"] == "reply@acme.example"
    assert parsed["X-CleverTap_META"] == "a@example.com|1|c1|20261122|0|default|7|"
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsed["Date"]
    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]


def test_long_one_line_bodies_are_accepted_by_a_real_server(smtp: SmtpTestServer) -> None:
    """A 5000-character one-line HTML part: aiosmtpd refused bare-LF soft line breaks with
    "500 Line too long"."""
    html = "<p>" + "Hello there, " * 384 + "</p>"
    msg = _message()
    msg.html, msg.text = html, "plain " * 1000
    [outcome] = asyncio.run(_send(_config(smtp.port, "none"), [msg]))
    assert outcome.status is OutcomeStatus.SENT, outcome  # type: ignore[attr-defined]
    data = smtp.messages[0].data
    assert data.count(b"\n") == data.count(b"\r\n")
    parsed = smtp.messages[0].message
    assert parsed.get_body(("html",)).get_content() == html  # type: ignore[union-attr]
    assert parsed.get_body(("plain",)).get_content() == msg.text  # type: ignore[union-attr]


def test_sendgrid_adds_smtpapi_unique_args(smtp: SmtpTestServer) -> None:
    config = {
        "nickname": "sg",
        "kind": "sendgrid",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "username": "",
    }
    long_to = "some.very.long.address+tracking@subdomain.example.com"
    asyncio.run(_send(config, [_message(3, long_to)]))
    raw = smtp.messages[0].data.decode()
    header = next(line for line in raw.split("\r\n") if line.startswith("X-SMTPAPI:"))
    assert "=?" not in header  # never an encoded-word (reference §7.3)
    import json

    value = json.loads(header.split(":", 1)[1])
    assert value == {
        "unique_args": {
            "clevertap_meta": f"{long_to}|1|c1|20261122|0|default|3|",
            "campaign_id": "c1",
        }
    }


def test_long_header_fields_are_accepted_by_a_real_server(smtp: SmtpTestServer) -> None:
    """40 Cc addresses, a 1100-character sender name and a long non-ASCII subject: each
    went out on one line over 998 octets ("500 Line too long")."""
    msg = _message()
    msg.cc = tuple(f"user{i}.with.a.longer.name@example.com" for i in range(40))
    msg.from_name = ("Acme Deals Weekly " * 61).strip()
    msg.subject = ("Grüße – Angebot " * 60).strip()
    [outcome] = asyncio.run(_send(_config(smtp.port, "none"), [msg]))
    assert outcome.status is OutcomeStatus.SENT, outcome  # type: ignore[attr-defined]
    parsed = smtp.messages[0].message
    assert [a.addr_spec for a in parsed["Cc"].addresses] == list(msg.cc)
    assert parsed["From"].addresses[0].display_name == msg.from_name
    assert parsed["Subject"] == msg.subject


def _sendgrid(port: int) -> dict[str, object]:
    return {"nickname": "sg", "kind": "sendgrid", "host": "127.0.0.1", "port": port,
            "security": "none", "username": ""}  # fmt: skip


def test_sendgrid_smtpapi_escapes_non_ascii() -> None:
    """orjson never escapes non-ASCII; the header value must be ASCII JSON (\\uXXXX)."""
    import json

    transport = SmtpTransport(parse_provider_config(_sendgrid(25)))  # type: ignore[arg-type]
    msg = _message(5)
    msg.campaign_id = "Grüße-😀"
    data, _, _, _ = transport.prepare(msg)
    header = next(line for line in data.split(b"\r\n") if line.startswith(b"X-SMTPAPI:"))
    assert header.isascii() and b"\\u00fc" in header
    assert json.loads(header.split(b":", 1)[1])["unique_args"]["campaign_id"] == "Grüße-😀"


def test_values_a_message_cannot_carry_fail_that_message_alone(smtp: SmtpTestServer) -> None:
    """A non-ASCII category in the meta, a lone surrogate in a body or in the campaign id:
    each is that message's failure, never an exception out of the batch."""
    bad_meta, bad_body, bad_campaign, good = (_message(i) for i in range(4))
    bad_meta.meta = "a@example.com|1|c1|20261122|Grüße|Angebote-ü|0|"
    bad_body.html = "<p>\ud800</p>"
    bad_campaign.campaign_id = "c\udcff"
    outcomes = asyncio.run(_send(_sendgrid(smtp.port), [bad_meta, bad_body, bad_campaign, good]))
    assert [(o.status, o.error_class) for o in outcomes] == [  # type: ignore[attr-defined]
        (OutcomeStatus.FAILED, ErrorClass.INVALID_MESSAGE),
        (OutcomeStatus.FAILED, ErrorClass.INVALID_MESSAGE),
        (OutcomeStatus.FAILED, ErrorClass.INVALID_MESSAGE),
        (OutcomeStatus.SENT, None),
    ]
    assert len(smtp.messages) == 1


def test_campaign_end_to_end_inline(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    smtp_provider(redis_client, smtp.port)
    body = {
        "provider": "local",
        "subject": "Hi {{ name }}",
        "html": "<p>Hello {{ name }}, {{ offer }}</p>",
        "vars": {"offer": "50% off"},
        "recipients": recipients(25),
    }
    cid, _ = run_inline(redis_client, body, FAST)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "completed"
    assert (summary["total"], summary["sent"], summary["queued"]) == (25, 25, 0)
    metas = {m.message["X-CleverTap_META"] for m in smtp.messages}
    assert len(metas) == 25 and all(META_RE.match(m) for m in metas)
    first = next(m.message for m in smtp.messages if m.rcpt_tos == ["user3@example.com"])
    assert first["Subject"] == "Hi User 3"
    assert "Hello User 3, 50% off" in first.get_body(("html",)).get_content()  # type: ignore[union-attr]
    events = redis_client.xrange(store.EVENTS_STREAM)
    assert sum('"Notification Sent"' in e[1]["json"] for e in events) == 25


def test_refused_recipient_fails_alone(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("user2@") else None
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
    cid, _ = run_inline(redis_client, body, FAST)
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"]) == (4, 1)
    rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), "2"))
    assert rec is not None
    assert rec["error_class"] == "SMTP invalid email ID"
    assert "550 5.1.1 no such user" in rec["detail"]
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [
        f"user{i}@example.com" for i in (0, 1, 3, 4)
    ]


def test_cc_and_bcc_put_off_by_a_small_recipient_limit_still_get_every_message(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A server taking two recipients per transaction (452 to the rest, RFC 5321
    §4.5.3.1.10): each recipient is sent once and counted sent, the Cc and Bcc are sent
    every message, each one copy."""

    def two_per_transaction(address: str) -> str | None:
        commands = reversed(smtp.handler.commands)  # this RCPT's included: one connection
        this_transaction = list(itertools.takewhile(lambda c: c.startswith("RCPT"), commands))
        return "452 4.5.3 Too many recipients" if len(this_transaction) > 2 else None

    smtp.handler.rcpt_reply = two_per_transaction
    smtp_provider(redis_client, smtp.port, max_connections=1)
    copies = {"cc": ["c1@example.com", "c2@example.com"], "bcc": ["b1@example.com"]}
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(6), **copies}
    cid, _ = run_inline(redis_client, body, FAST)
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"], counters["queued"]) == (6, 0, 0)
    got: dict[str, int] = {}
    for received in smtp.messages:
        for rcpt in received.rcpt_tos:
            got[rcpt] = got.get(rcpt, 0) + 1
    assert got == {
        **{f"user{i}@example.com": 1 for i in range(6)},
        **dict.fromkeys([*copies["cc"], *copies["bcc"]], 6),
    }


def test_invalid_address_and_crlf_vars_fail_alone(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    smtp_provider(redis_client, smtp.port)
    rcpts = recipients(3)
    rcpts[0]["email"] = "not-an-address"
    rcpts[1]["vars"] = {"name": "Eve\r\nBcc: victim@example.com"}
    body = {"provider": "local", "subject": "Hi {{ name }}", "html": "h", "recipients": rcpts}
    cid, _ = run_inline(redis_client, body, FAST)
    records = {s: ledger.parse_record(redis_client.hget(store.ledger_key(cid), s)) for s in "012"}
    assert records["0"]["error_class"] == "SMTP invalid email ID"  # type: ignore[index]
    assert records["1"]["error_class"] == "Invalid message"  # type: ignore[index]
    assert "line break" in records["1"]["detail"]  # type: ignore[index]
    assert records["2"]["state"] == "sent"  # type: ignore[index]
    assert [m.rcpt_tos for m in smtp.messages] == [["user2@example.com"]]


def test_421_then_success_is_retried(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    seen: set[str] = set()

    def once(envelope: object) -> str | None:
        rcpt = envelope.rcpt_tos[0]  # type: ignore[attr-defined]
        if rcpt in seen:
            return None
        seen.add(rcpt)
        return "421 4.7.0 Try again later"

    smtp.handler.data_reply = once
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    cid, _ = run_inline(redis_client, body, FAST)
    counters = campaign_reads.get_counters(cid, redis_client)
    assert counters["sent"] == 3 and counters["failed"] == 0
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [
        f"user{i}@example.com" for i in range(3)
    ]
    # The server closes after each 421 (as real ones do): each message was tried at least
    # twice (dispatch.sending also counts a try for the chunk's others, never handed over),
    # and a throttled try is counted apart from the attempts (DESIGN §7).
    for seq in "012":
        rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), seq))
        assert rec is not None and rec["throttles"] >= 1
        assert rec["attempts"] + rec["throttles"] >= 2


def test_permanent_reply_fails_at_once(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    smtp.handler.data_reply = lambda e: "554 5.7.1 Message rejected: spam"
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2)}
    cid, _ = run_inline(redis_client, body, FAST)
    rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None
    assert (rec["state"], rec["attempts"]) == ("failed", 1)
    assert rec["error_class"] == "SMTP dispatching failed"
    assert "554 5.7.1" in rec["detail"]


@pytest.mark.parametrize(
    ("reply", "expected", "gave_up"),
    [
        ("452 4.3.1 Insufficient system storage", (2, 0), "gave up after 2 attempts"),
        ("451 4.3.0 local error", (0, 3), "gave up after 3 throttled tries: 451 4.3.0"),
    ],
)
def test_transient_gives_up_after_max_attempts_or_max_throttles(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    reply: str,
    expected: tuple[int, int],
    gave_up: str,
) -> None:
    """A transient reply fails after max_attempts; a throttling one (451) is not an
    attempt and fails after max_throttles."""
    smtp.handler.data_reply = lambda e: reply
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(1)}
    settings = Settings(
        retry_base_seconds=0.01, retry_max_seconds=0.02, max_attempts=2, max_throttles=3
    )
    cid, _ = run_inline(redis_client, body, settings)
    rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None
    assert (rec["state"], rec["attempts"], rec["throttles"]) == ("failed", *expected)
    assert rec["detail"].startswith(gave_up)


def test_greylisting_waits_past_max_attempts(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A 450 to RCPT (greylisting: "come back later") is a throttle, not an attempt:
    four of them against max_attempts=2 still end sent."""
    tries = 0

    def greylist(address: str) -> str | None:
        nonlocal tries
        tries += 1
        return "450 4.2.0 Greylisted, please try again later" if tries <= 4 else None

    smtp.handler.rcpt_reply = greylist
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(1)}
    settings = Settings(retry_base_seconds=0.01, retry_max_seconds=0.02, max_attempts=2)
    cid, _ = run_inline(redis_client, body, settings, rounds=10)
    rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None
    assert (rec["state"], rec["attempts"], rec["throttles"]) == ("sent", 1, 4)
    assert [m.rcpt_tos for m in smtp.messages] == [["user0@example.com"]]


def test_auth_failure_pauses_campaign(redis_client: redis.Redis) -> None:
    with SmtpTestServer(credentials=("user", "right")) as server:
        smtp_provider(redis_client, server.port, username="user", password="wrong")
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(10)}
        cid, _ = run_inline(redis_client, body, FAST)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith("SMTP connection error")
    assert (summary["failed"], summary["sent"], summary["queued"]) == (0, 0, 10)


def test_connection_reuse(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    smtp_provider(redis_client, smtp.port, max_connections=3)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(300)}
    cid, _ = run_inline(redis_client, body, FAST)
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 300
    assert len(smtp.messages) == 300
    assert 1 <= smtp.handler.connections <= 3


def test_suppressed_recipient_is_skipped(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    redis_client.hset(store.SUPPRESSIONS_HASH, "user1@example.com", '{"reason": "hard_bounce"}')
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
    cid, _ = run_inline(redis_client, body, FAST)
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["suppressed"]) == (2, 1)
    assert "user1@example.com" not in [m.rcpt_tos[0] for m in smtp.messages]


def test_batches_send_while_a_long_list_is_still_stored(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Each batch starts as soon as it is stored, and the campaign cannot complete early.

    Here every batch is sent to the end inside ``enqueue``, before the next one is stored:
    ``queued`` touches 0 between chunks, and the campaign must still be running then.
    """
    from dispatch.models import CampaignRequest
    from tests.helpers import run_batches

    smtp_provider(redis_client, smtp.port)
    seen: list[tuple[int, str]] = []

    def send_now(cid: str, batch: int) -> None:
        run_batches([(cid, batch)], FAST)
        campaigns.finish_if_done(cid, redis_client)  # what the batch task does after a batch
        seen.append((batch, campaign_reads.get_status(cid, redis_client).value))

    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2500)}
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=redis_client, enqueue=send_now
    )
    assert seen[:2] == [(0, "running"), (1, "running")]  # sent before the rest was stored
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["total"]) == ("completed", 2500, 2500)
    rcpts = [m.rcpt_tos[0] for m in smtp.messages]
    assert len(rcpts) == len(set(rcpts)) == 2500


def _nth(n: int, reply: str) -> Callable[[str], str | None]:
    """A ``mail_reply`` that refuses the ``n``-th MAIL (from 1) with ``reply``, once."""
    seen: list[str] = []

    def answer(address: str) -> str | None:
        seen.append(address)
        return reply if len(seen) == n else None

    return answer


def _four(server: SmtpTestServer) -> tuple[list[SendOutcome] | None, BaseException | None]:
    """Send u0..u3 as one chunk on one session: their outcomes, or what it raised."""
    messages = [_message(i, f"u{i}@example.com") for i in range(4)]
    try:
        return asyncio.run(_send(_config(server.port, "none"), messages)), None  # type: ignore[return-value]
    except ProviderError as exc:
        return None, exc


@pytest.mark.parametrize("pipelining", [False, True])
def test_refused_session_on_the_first_message_attempts_no_other(pipelining: bool) -> None:
    """A throttling reply to the chunk's first MAIL is raised (the caller retries the whole
    chunk): so the other messages must not have been sent meanwhile, or they go twice."""
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        server.handler.mail_reply = _nth(1, "451 4.7.1 Throttling: slow down")
        outcomes, raised = _four(server)
    assert outcomes is None and isinstance(raised, ThrottledError)
    assert server.messages == []


@pytest.mark.parametrize("pipelining", [False, True])
def test_refused_session_mid_chunk_keeps_what_went_out(pipelining: bool) -> None:
    """530 at the second MAIL: the first message went out and must stay sent (raising
    would put it back for a retry); the others are retried, not sent past the refusal."""
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        server.handler.mail_reply = _nth(2, "530 5.7.0 Authentication required")
        outcomes, raised = _four(server)
    assert raised is None and outcomes is not None
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] + [OutcomeStatus.RETRY] * 3
    assert "530 5.7.0" in outcomes[1].detail
    assert [m.rcpt_tos for m in server.messages] == [["u0@example.com"]]


def test_throttled_first_message_sends_each_recipient_once(redis_client: redis.Redis) -> None:
    """Through the batch sender: a 451 to the first MAIL slows down, and in the end every
    recipient got exactly one message."""
    with SmtpTestServer() as server:
        server.handler.mail_reply = _nth(1, "451 4.7.1 Throttling: slow down")
        smtp_provider(redis_client, server.port, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4)}
        cid, _ = run_inline(redis_client, body, FAST)
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 4
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [
        f"user{i}@example.com" for i in range(4)
    ]


@pytest.mark.parametrize("pipelining", [False, True])
def test_421_at_rcpt_is_a_throttle_not_a_lost_connection(pipelining: bool) -> None:
    """421 closes the channel (RFC 5321 §3.8): the message is retried as throttled (the
    provider slows down), the rest of the chunk is not attempted; on the chunk's first
    message it is raised as a throttle."""
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        server.handler.rcpt_reply = lambda a: "421 4.7.0 Too fast" if a[:2] == "u1" else None
        outcomes, _ = _four(server)
        server.handler.rcpt_reply = lambda a: "421 4.7.0 Too fast" if a[:2] == "u0" else None
        _, raised = _four(server)
    assert outcomes is not None
    assert [(o.status, o.throttled) for o in outcomes] == [
        (OutcomeStatus.SENT, False),
        (OutcomeStatus.RETRY, True),
        (OutcomeStatus.RETRY, False),
        (OutcomeStatus.RETRY, False),
    ]
    assert isinstance(raised, ThrottledError) and raised.code == 421
    assert [m.rcpt_tos for m in server.messages] == [["u0@example.com"]]


def test_421_after_data_hands_over_nothing_more_with_pipelining() -> None:
    """After a 421 to a message, a server may still answer commands already pipelined
    (aiosmtpd does, and its 354 invites the next message): the next message must not be
    sent, so it is retried, never left ``unknown``."""
    with SmtpTestServer() as server:
        server.handler.pipelining = True
        server.handler.data_reply = lambda e: "421 4.7.0 Bye" if e.rcpt_tos[0][:2] == "u2" else None
        outcomes, _ = _four(server)
    assert outcomes is not None
    assert [(o.status, o.throttled) for o in outcomes] == [
        (OutcomeStatus.SENT, False),
        (OutcomeStatus.SENT, False),
        (OutcomeStatus.RETRY, True),
        (OutcomeStatus.RETRY, False),
    ]
    assert len(server.messages) == 2


# -- the provider's daily quota used up (reference §4 SES 454, §3.3 Gmail 550 5.4.5) -----

SES_QUOTA = "454 Throttling failure: Daily message quota exceeded."
GMAIL_QUOTA = "550 5.4.5 Daily user sending limit exceeded. - gsmtp"


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (454, "Throttling failure: Daily message quota exceeded.", ReplyKind.QUOTA),
        (550, "5.4.5 Daily user sending limit exceeded. - gsmtp", ReplyKind.QUOTA),
        (550, "5.4.5 Daily sending quota exceeded.", ReplyKind.QUOTA),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
            "process message due to a permanent exception with message Cannot submit message.",
            ReplyKind.QUOTA,
        ),
        (454, "Throttling failure: Maximum sending rate exceeded.", ReplyKind.THROTTLED),
        (552, "5.2.2 Mailbox over quota", ReplyKind.TRANSIENT),  # full: soft (RFC 3463)
        (452, "4.2.2 The email account that you tried to reach is over quota", ReplyKind.TRANSIENT),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist",
            ReplyKind.PERMANENT,
        ),
    ],
)
def test_a_used_up_daily_quota_is_told_from_other_replies(
    code: int, text: str, kind: ReplyKind
) -> None:
    assert classify(code, text) is kind


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_quota_refusal_of_a_message_sends_nothing_after_it(pipelining: bool) -> None:
    """SES answers the quota refusal to the message's content: with PIPELINING the next
    message's commands are already out, and its content must not follow."""
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        server.handler.data_reply = lambda e: SES_QUOTA if e.rcpt_tos[0][:2] == "u1" else None
        outcomes, _ = _four(server)
        server.handler.data_reply = lambda e: SES_QUOTA
        _, raised = _four(server)
    assert outcomes is not None
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] + [OutcomeStatus.RETRY] * 3
    assert "Daily message quota exceeded" in outcomes[1].detail
    assert isinstance(raised, SendingQuotaError) and raised.code == 454
    assert [m.rcpt_tos for m in server.messages] == [["u0@example.com"]]


@pytest.mark.parametrize(("where", "reply"), [("data", SES_QUOTA), ("mail", GMAIL_QUOTA)])
def test_a_used_up_provider_quota_pauses_the_campaign_and_resume_sends_the_rest(
    redis_client: redis.Redis, where: str, reply: str
) -> None:
    """Reference §4: "pause the SES provider until quota frees; don't hammer". Nothing
    fails, nothing goes twice, and resume sends what is left once the quota frees."""
    quota = {"left": 3}

    def answer(_: object) -> str | None:
        if quota["left"] > 0:
            quota["left"] -= 1
            return None
        return reply

    with SmtpTestServer() as server:
        server.handler.pipelining = True
        if where == "data":
            server.handler.data_reply = answer
        else:
            server.handler.mail_reply = answer
        smtp_provider(redis_client, server.port, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(10)}
        cid, batches = create_held(redis_client, body)
        run_batches(batches, FAST)
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert summary["status"] == "paused", summary
        assert reply.split(" - ")[0] in summary["reason"]
        assert (summary["sent"], summary["failed"], summary["queued"]) == (3, 0, 7)

        quota["left"] = 100  # the next day
        lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: None)
        run_batches(batches, FAST)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 10, 0)
    received = sorted(m.rcpt_tos[0] for m in server.messages)
    assert received == sorted(f"user{i}@example.com" for i in range(10))
