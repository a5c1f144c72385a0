"""A message larger than the SMTP server's SIZE (RFC 1870) fails before it is sent.

It was sent whole, refused with 552 after the upload, and failed as "SMTP dispatching
failed": counted by the failure breaker, and sent again by retry-failed for nothing.
"""

from __future__ import annotations

import asyncio

from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import parse_provider_config
from providers.errors import ErrorClass
from providers.registry import build_transport
from tests.smtp_server import SmtpTestServer


def _message(seq: int, html: str) -> OutgoingMessage:
    return OutgoingMessage(
        seq=seq, meta=f"u{seq}@example.com|1|c|20261124|0|d|{seq}|", campaign_id="c",
        to=f"u{seq}@example.com", subject="Hi", html=html, text="Hi",
        from_address="news@acme.example",
    )  # fmt: skip


def _send(server: SmtpTestServer, messages: list[OutgoingMessage]) -> list[SendOutcome]:
    config = parse_provider_config({"nickname": "p", "kind": "smtp", "host": "127.0.0.1",
                                    "port": server.port, "security": "none",
                                    "from_address": "news@acme.example"})  # fmt: skip

    async def send() -> list[SendOutcome]:
        async with build_transport(config).session() as session:
            return list(await session.send(messages))

    return asyncio.run(send())


def test_a_message_over_the_servers_size_fails_alone_before_it_is_sent() -> None:
    with SmtpTestServer(data_size_limit=4000) as server:
        small, large, after = (
            _message(1, "<p>small</p>"),
            _message(2, "<p>" + "x " * 3000 + "</p>"),
            _message(3, "<p>after</p>"),
        )
        outcomes = _send(server, [small, large, after])
        received = [m.rcpt_tos for m in server.messages]
    assert [o.status for o in outcomes] == [
        OutcomeStatus.SENT, OutcomeStatus.FAILED, OutcomeStatus.SENT,
    ]  # fmt: skip
    failed = outcomes[1]
    assert failed.error_class is ErrorClass.INVALID_MESSAGE
    assert "more than the 4,000 the server 127.0.0.1 takes (its SIZE, RFC 1870)" in failed.detail
    assert received == [["u1@example.com"], ["u3@example.com"]]  # the large one never went


def test_within_the_size_it_goes() -> None:
    with SmtpTestServer(data_size_limit=100_000) as server:
        outcomes = _send(server, [_message(1, "<p>" + "x " * 3000 + "</p>")])
        assert len(server.messages) == 1
    assert outcomes[0].status is OutcomeStatus.SENT
