"""Review C7: the SMTP family against its provider pages (seeds 000, 001, 003, 004), on
a real aiosmtpd server with STARTTLS or SMTPS and AUTH."""

from __future__ import annotations

import asyncio
import json

import pytest

from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import parse_provider_config
from providers.errors import ErrorClass
from providers.registry import build_transport
from tests.smtp_server import SmtpTestServer

# The seed's own example of the X-CleverTap_META value (seed 000, "meta").
SEED_META = "user1@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"
LOGIN = ("me@acme.example", "app-password")


def _message() -> OutgoingMessage:
    return OutgoingMessage(
        seq=1,
        meta=SEED_META,
        campaign_id="1730714617",
        to="user1@example.com",
        subject="Hello",
        html="<p>Hi</p>",
        text="Hi",
        from_address="deals@acme.example",
        from_name="Acme Deals",
        reply_to="replies@acme.example",
    )


def _send(server: SmtpTestServer, kind: str, security: str, **fields: object) -> SendOutcome:
    base = {"nickname": "p", "kind": kind, "host": "127.0.0.1", "port": server.port,
            "security": security, "tls_verify": False, "username": LOGIN[0],
            "password": LOGIN[1], "timeout": 5.0}  # fmt: skip
    config = parse_provider_config({**base, **fields})

    async def send() -> list[SendOutcome]:
        async with build_transport(config).session() as session:
            return list(await session.send([_message()]))

    return asyncio.run(send())[0]


@pytest.mark.parametrize(
    ("kind", "security", "fields"),
    [
        ("smtp", "starttls", {}),
        ("smtp", "tls", {}),  # seed 000's "SMTPS" scheme
        ("gmail", "tls", {}),  # seed 001: SMTPS, port 465
        ("ses", "starttls", {"configuration_set": "campaigns"}),
        ("sendgrid", "starttls", {}),  # seed 004: port 587
    ],
)
def test_each_kind_logs_in_over_tls_and_carries_the_pages_headers(
    kind: str, security: str, fields: dict[str, object]
) -> None:
    with SmtpTestServer(security=security, credentials=LOGIN) as server:
        outcome = _send(server, kind, security, **fields)
    assert outcome.status is OutcomeStatus.SENT, outcome
    (received,) = server.messages
    message = received.message
    # Seed 000: "CleverTap sends the X-CleverTap_META key with a specific value", echoed
    # back as is: one line, never folded nor encoded.
    assert f"\r\nX-CleverTap_META: {SEED_META}\r\n".encode() in received.data
    assert message["From"] == "Acme Deals <deals@acme.example>"  # Default From Name
    assert message["Reply-To"] == "replies@acme.example"  # Reply Address
    assert received.mail_from == "deals@acme.example"
    smtpapi = message["X-SMTPAPI"]
    if kind == "sendgrid":
        assert json.loads(smtpapi) == {
            "unique_args": {"clevertap_meta": SEED_META, "campaign_id": "1730714617"}
        }
    else:
        assert smtpapi is None
    expected_set = "campaigns" if kind == "ses" else None
    assert message["X-SES-CONFIGURATION-SET"] == expected_set


@pytest.mark.parametrize(
    "reply",
    [
        # SendGrid's sample "blocked" bounce, the seed's Spamhaus case.
        "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org",
        "550 5.7.1 [192.0.2.10] Our system has detected an unusual rate of unsolicited mail",
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated. - gsmtp",
    ],
)
def test_a_policy_block_at_rcpt_is_dispatching_failed_not_an_invalid_address(reply: str) -> None:
    """Seed 000's error table: "SMTP invalid email ID" is an address that is malformed or
    does not exist; "the recipient's ESP blocks your IP address" is "SMTP dispatching
    failed". A 5.7.x refusal of RCPT (reference §5.1-5.3: a block, not a bad address) was
    filed as the address's fault: never counted by the failure breaker, never sent again
    by retry-failed once the block is lifted."""
    with SmtpTestServer(security="starttls", credentials=LOGIN) as server:
        server.handler.rcpt_reply = lambda address: reply
        blocked = _send(server, "smtp", "starttls")
        server.handler.rcpt_reply = lambda address: "550 5.1.1 user unknown"
        unknown = _send(server, "smtp", "starttls")
    assert blocked.status is OutcomeStatus.FAILED
    assert blocked.error_class is ErrorClass.DISPATCH_FAILED_SMTP, blocked
    assert reply in blocked.detail
    assert (unknown.status, unknown.error_class) == (
        OutcomeStatus.FAILED,
        ErrorClass.INVALID_RECIPIENT,
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 Ok 0100019276a1b2c3-1e2f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6b-000000",
         "0100019276a1b2c3-1e2f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6b-000000"),  # SES, reference §4
        ("250 Ok: queued as kFQtaSL9T7ePqzCPMZL7fg", "kFQtaSL9T7ePqzCPMZL7fg"),  # SendGrid
        ("250 2.0.0 Ok: queued as 4F2B71C0123", "4F2B71C0123"),  # Postfix
        ("250 2.0.0 OK  1732431234 d9443c01a7336-21c2a1b2c3dsm1234567pla.12 - gsmtp",
         "d9443c01a7336-21c2a1b2c3dsm1234567pla.12"),  # Gmail
        ("250 2.6.0 <x@acme.example> [InternalId=1234] Queued mail for delivery", ""),
        ("250 OK queued", ""),
        ("250 Great success", ""),
    ],
)  # fmt: skip
def test_the_servers_message_id_is_read_from_its_reply(reply: str, expected: str) -> None:
    """The id a server gives the message is kept with it (SES's is what its callbacks
    carry as ``mail.messageId``). The last word of the reply was taken whatever it was:
    every Gmail message got the id "gsmtp", an Exchange one "delivery"."""
    with SmtpTestServer(security="tls", credentials=LOGIN) as server:
        server.handler.data_reply = lambda envelope: reply
        outcome = _send(server, "gmail", "tls")
    assert outcome.status is OutcomeStatus.SENT
    assert outcome.provider_message_id == expected
