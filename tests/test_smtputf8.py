"""Addresses whose local part is not ASCII (RFC 6531): taken in NFC, written in UTF-8
(RFC 6532), sent with SMTPUTF8 to a server that offers it and never downgraded.

The campaign path over the API and a worker is in ``tests/test_address_spellings.py``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import replace

import pytest

from dispatch.suppressions import suppression_key
from providers.addresses import InvalidAddressError, needs_smtputf8, normalize_address
from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.callbacks.events import read_meta
from providers.config import parse_provider_config
from providers.errors import ErrorClass, InvalidMessageError
from providers.mime import MimeWriter
from providers.smtp import SmtpTransport
from tests.smtp_server import SmtpTestServer

NFD = "jo\u0308hn@example.com"  # "o" and a combining diaeresis
NFC = "j\u00f6hn@example.com"


def _message(seq: int, to: str, from_address: str = "deals@acme.example") -> OutgoingMessage:
    return OutgoingMessage(
        seq=seq,
        meta=f"{to}|1|c1|20261123|0|default|{seq}|",
        campaign_id="c1",
        to=to,
        subject="Grüße",
        html="<p>Hi</p>",
        text="Hi",
        from_address=from_address,
        from_name="Acme",
    )


def test_a_utf8_local_part_is_taken_in_nfc() -> None:
    assert normalize_address(NFD) == NFC
    assert normalize_address("用户@例子.广告") == "用户@xn--fsqu00a.xn--4rr70v"
    assert needs_smtputf8(NFC) and not needs_smtputf8("john@xn--bcher-kva.example")
    # One person in any spelling: composed, decomposed, upper case.
    assert suppression_key(NFD) == suppression_key(NFC) == suppression_key("JÖHN@Example.com")


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("jö hn@example.com", "characters"),
        ("jö\u00a0hn@example.com", "characters"),  # no-break space
        ("jö\u200bhn@example.com", "characters"),  # zero-width space (format character)
        ("jö\x85hn@example.com", "characters"),  # C1 control (NEL)
        ("jö\ud800hn@example.com", "characters"),  # lone surrogate
        (".jöhn@example.com", "characters"),
        ("jö..hn@example.com", "characters"),
        ("ö" * 33 + "@example.com", "64 octets"),  # 33 characters, 66 octets
    ],
)
def test_a_utf8_local_part_is_refused_naming_why(bad: str, why: str) -> None:
    with pytest.raises(InvalidAddressError, match=why):
        normalize_address(bad)


def test_utf8_addresses_are_written_as_they_are() -> None:
    writer = MimeWriter(campaign_id="c1")
    msg = replace(_message(0, NFC, from_address="zoë@acme.example"), cc=("ünal@example.com",))
    data = writer.write(msg)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert f"To: {NFC}\r\n".encode() in head
    assert f"X-CleverTap_META: {NFC}|1|c1|".encode() in head
    assert b"Subject: =?utf-8?" in head  # text is still RFC 2047 encoded
    parsed = email.message_from_string(data.decode(), policy=email.policy.SMTPUTF8)
    assert (parsed["From"], parsed["To"], parsed["Cc"]) == (
        "Acme <zoë@acme.example>",
        NFC,
        "ünal@example.com",
    )
    named = writer.write(replace(msg, from_name="Zoë Müller"))
    parsed = email.message_from_string(named.decode(), policy=email.policy.SMTPUTF8)
    assert parsed["From"].addresses[0].display_name == "Zoë Müller"
    assert parsed["From"].addresses[0].addr_spec == "zoë@acme.example"


def test_the_meta_is_utf8_only_for_its_address() -> None:
    """The account id, campaign id and category are ours and must be ASCII."""
    msg = replace(_message(0, NFC), meta=f"{NFC}|acmé|c1|20261123|0|default|0|")
    with pytest.raises(InvalidMessageError, match="X-CleverTap_META is not ASCII"):
        MimeWriter(campaign_id="c1").write(msg)


async def _send(port: int, messages: list[OutgoingMessage]) -> list[SendOutcome]:
    config = {"nickname": "s", "kind": "smtp", "host": "127.0.0.1", "port": port,
              "security": "none"}  # fmt: skip
    transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
    async with transport.session() as session:
        return list(await session.send(messages))


@pytest.mark.parametrize("pipelining", [True, False])
def test_smtputf8_goes_only_with_the_messages_that_need_it(pipelining: bool) -> None:
    messages = [_message(0, "ann@example.com"), _message(1, NFC), _message(2, "bo@example.com")]
    with SmtpTestServer(smtputf8=True) as server:
        server.handler.pipelining = pipelining
        outcomes = asyncio.run(_send(server.port, messages))
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 3
    assert [(m.rcpt_tos, m.mail_options) for m in server.messages] == [
        (["ann@example.com"], []),
        ([NFC], ["BODY=8BITMIME", "SMTPUTF8"]),
        (["bo@example.com"], []),
    ]
    assert (
        email.message_from_bytes(server.messages[1].data, policy=email.policy.SMTPUTF8)["To"] == NFC
    )


@pytest.mark.parametrize("pipelining", [True, False])
def test_without_smtputf8_such_a_message_fails_alone(pipelining: bool) -> None:
    messages = [
        _message(0, NFC),
        _message(1, "ann@example.com"),
        _message(2, "cy@example.com", from_address="zoë@acme.example"),
        _message(3, "bo@example.com"),
    ]
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        outcomes = asyncio.run(_send(server.port, messages))
    assert [m.rcpt_tos for m in server.messages] == [["ann@example.com"], ["bo@example.com"]]
    assert [(o.status, o.error_class) for o in outcomes] == [
        (OutcomeStatus.FAILED, ErrorClass.INVALID_RECIPIENT),
        (OutcomeStatus.SENT, None),
        (OutcomeStatus.FAILED, ErrorClass.INVALID_RECIPIENT),
        (OutcomeStatus.SENT, None),
    ]
    why = "SMTPUTF8 (RFC 6531), which the server 127.0.0.1 does not offer"
    assert outcomes[0].detail == f"'{NFC}' needs {why}"
    assert outcomes[2].detail == f"'zoë@acme.example' needs {why}"
    # No transaction of an UTF-8 address reached the server, not even refused.
    assert not [c for c in server.handler.commands if not c.isascii()]


@pytest.mark.parametrize(
    ("meta_email", "event_email"),
    [(NFC, NFD), (NFC, "JÖHN@Example.com"), ("ann@xn--bcher-kva.example", "Ann@Bücher.example.")],
)
def test_a_callback_in_another_spelling_of_the_meta_address_is_no_mismatch(
    meta_email: str, event_email: str
) -> None:
    notes: list[str] = []
    assert read_meta(f"{meta_email}|1|c1|20261123|0|default|3|", event_email, notes, strict=True)
    assert notes == []
    read_meta(f"{meta_email}|1|c1|20261123|0|default|3|", "other@example.com", notes, strict=True)
    assert len(notes) == 1 and "differs from event email" in notes[0]
