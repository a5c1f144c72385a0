"""A message that needs SMTPUTF8 for its Reply-To alone (a campaign's or a provider's
``reply_to`` with a non-ASCII local part), to a server that does not offer it: it fails
alone, and its detail names the address, as it does for the envelope's."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from providers.base import OutcomeStatus
from providers.errors import ErrorClass
from tests.smtp_server import SmtpTestServer
from tests.test_smtputf8 import _message, _send


def test_a_utf8_reply_to_is_named_when_the_server_lacks_smtputf8() -> None:
    messages = [
        replace(_message(0, "ann@example.com"), reply_to="Zoë@Acme.Example"),
        _message(1, "bo@example.com"),
    ]
    with SmtpTestServer() as server:
        outcomes = asyncio.run(_send(server.port, messages))
    assert [m.rcpt_tos for m in server.messages] == [["bo@example.com"]]
    assert (outcomes[0].status, outcomes[0].error_class) == (
        OutcomeStatus.FAILED,
        ErrorClass.INVALID_RECIPIENT,
    )
    assert outcomes[0].detail == (
        "'Zoë@acme.example' needs SMTPUTF8 (RFC 6531), which the server 127.0.0.1 does not offer"
    )
    assert outcomes[1].status is OutcomeStatus.SENT
