"""Servers that take only so many messages per connection (aiosmtpd, real connections).

Many relays end a connection after a number of messages: with ``421`` to the next
``MAIL`` (RFC 5321 §3.8), or by closing it. The messages not handed over then are sent
on a new connection, not counted as failed attempts: a campaign through such a server
must get through, however small its limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from providers.base import OutcomeStatus, OutgoingMessage
from providers.config import parse_provider_config
from providers.errors import ThrottledError
from providers.smtp import SmtpTransport
from tests.smtp_server import Handler, SmtpTestServer


class CappedHandler(Handler):
    """Takes ``cap`` messages per connection, then answers the next MAIL with ``refusal``
    (``421 ...`` closes the connection after it, ``DROP`` closes it without a word)."""

    def __init__(self, cap: int, refusal: str, *, pipelining: bool) -> None:
        super().__init__(pipelining=pipelining)
        self.cap = cap
        self.refusal = refusal
        self.per_connection: dict[int, int] = {}
        self.sessions: list[Session] = []  # kept alive: their ids are never reused

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.per_connection.get(id(session), 0) >= self.cap:
            return self._answer(server, self.refusal)
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if session not in self.sessions:
            self.sessions.append(session)
        self.per_connection[id(session)] = self.per_connection.get(id(session), 0) + 1
        return reply


def _messages(seqs: range) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            seq=seq,
            meta=f"u{seq}@example.com|1|c1|20261123|0|default|{seq}|",
            campaign_id="c1",
            to=f"u{seq}@example.com",
            subject="Hello",
            html="<p>Hi</p>",
            text="Hi",
            from_address="deals@acme.example",
        )
        for seq in seqs
    ]


def _server(handler: Handler) -> SmtpTestServer:
    server = SmtpTestServer()
    server.handler = handler
    return server


def _transport(port: int, **fields: object) -> SmtpTransport:
    config = {"nickname": "s", "kind": "smtp", "host": "127.0.0.1", "port": port,
              "security": "none", **fields}  # fmt: skip
    return SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]


async def _send_chunks(transport: SmtpTransport, chunks: list[range]) -> list[OutcomeStatus]:
    """Chunks one after the other on one session, as the dispatcher sends them."""
    statuses: list[OutcomeStatus] = []
    async with transport.session() as session:
        for chunk in chunks:
            statuses += [o.status for o in await session.send(_messages(chunk))]
    return statuses


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("refusal", ["421 4.7.0 Too many messages, closing", "DROP"])
def test_messages_past_the_servers_limit_go_on_a_new_connection(
    refusal: str, pipelining: bool
) -> None:
    """One message per connection: every message of the chunks is sent, none retried."""
    handler = CappedHandler(1, refusal, pipelining=pipelining)
    with _server(handler) as server:
        statuses = asyncio.run(_send_chunks(_transport(server.port), [range(4), range(4, 8)]))
        received = sorted(m.rcpt_tos[0] for m in handler.messages)
        assert statuses == [OutcomeStatus.SENT] * 8
        assert received == sorted(f"u{i}@example.com" for i in range(8))
        assert set(handler.per_connection.values()) == {1}


def test_max_messages_per_connection_holds_inside_a_chunk() -> None:
    """The configured limit (SendGrid's 100) is never passed, even in the middle of a
    chunk: the connection is renewed between two of its messages."""
    handler = CappedHandler(3, "421 4.7.0 closing", pipelining=True)
    with _server(handler) as server:
        transport = _transport(server.port, max_messages_per_connection=3)
        statuses = asyncio.run(_send_chunks(transport, [range(4), range(4, 8), range(8, 10)]))
        assert statuses == [OutcomeStatus.SENT] * 10
        assert sorted(handler.per_connection.values()) == [1, 3, 3, 3]
        assert handler.connections == 4


def test_a_421_on_a_new_connections_first_message_is_still_a_throttle() -> None:
    """No reconnecting in a loop: a server that refuses at once is slowing us down."""
    handler = CappedHandler(0, "421 4.7.0 Try again later", pipelining=True)
    with _server(handler) as server:
        with pytest.raises(ThrottledError):
            asyncio.run(_send_chunks(_transport(server.port), [range(4)]))
        assert handler.connections == 1
        assert handler.messages == []
