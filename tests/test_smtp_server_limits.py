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


# -- recipients per transaction (RFC 5321 §4.5.3.1.10) ------------------------------------


class RecipientCapHandler(Handler):
    """Takes ``cap`` recipients per transaction and answers ``refusal`` to the next ones
    (``452 4.5.3 Too many recipients``, as Postfix, Exchange and Gmail word it); the
    addresses in ``refuse`` get their own reply instead."""

    def __init__(self, cap: int, refusal: str, *, pipelining: bool) -> None:
        super().__init__(pipelining=pipelining)
        self.cap = cap
        self.refusal = refusal
        self.refuse: dict[str, str] = {}

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse or len(envelope.rcpt_tos) >= self.cap:
            self.commands.append(f"RCPT {address}")
            return self.refuse.get(address, self.refusal)
        return await super().handle_RCPT(server, session, envelope, address, options)


def _cc(seq: int) -> tuple[str, ...]:
    return (f"c1@example.com{seq or ''}", f"c2@example.com{seq or ''}")


def _bcc(seq: int) -> tuple[str, ...]:
    return (f"b1@example.com{seq or ''}", f"b2@example.com{seq or ''}")


def _with_copies(seq: int) -> OutgoingMessage:
    """u<seq>, copied to c1, c2 and blind to b1, b2 (of example.com<seq> past the first)."""
    msg = _messages(range(seq, seq + 1))[0]
    msg.cc, msg.bcc = _cc(seq), _bcc(seq)
    return msg


def _send_one_chunk(port: int, seqs: range, **fields: object) -> list[tuple[str, str]]:
    async def send() -> list[tuple[str, str]]:
        async with _transport(port, **fields).session() as session:
            outcomes = await session.send([_with_copies(seq) for seq in seqs])
        return [(o.status.value, o.detail) for o in outcomes]

    return asyncio.run(send())


def _copies(handler: Handler) -> dict[str, list[bytes]]:
    """What each recipient was sent (envelope), by recipient."""
    got: dict[str, list[bytes]] = {}
    for received in handler.messages:
        for rcpt in received.rcpt_tos:
            got.setdefault(rcpt, []).append(received.data)
    return got


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("refusal", ["452 4.5.3 Too many recipients", "552 Too many recipients"])
def test_recipients_put_off_by_the_server_get_the_message_in_another_transaction(
    refusal: str, pipelining: bool
) -> None:
    """A server taking two recipients per transaction: Cc and Bcc past the second are
    sent the same message in later transactions (552 is RFC 821's word for it), each
    recipient once, and the message is sent once to its own recipient."""
    handler = RecipientCapHandler(2, refusal, pipelining=pipelining)
    with _server(handler) as server:
        assert _send_one_chunk(server.port, range(2)) == [("sent", "")] * 2
    got = _copies(handler)
    for seq in range(2):
        everyone = [f"u{seq}@example.com", *_cc(seq), *_bcc(seq)]
        copies = [got[rcpt] for rcpt in everyone]
        assert [len(c) for c in copies] == [1] * 5
        assert len({c[0] for c in copies}) == 1  # the same bytes: one Message-ID
    assert b"b1@example.com" not in handler.messages[0].data  # Bcc stays out of the headers


def test_recipients_refused_for_good_are_named_and_not_tried_again() -> None:
    """A Cc refused with 550, and one whose mailbox is full (452 4.2.2), are not sent
    another transaction; the Bcc put off is, and the detail names the other two."""
    handler = RecipientCapHandler(2, "452 4.5.3 Too many recipients", pipelining=True)
    handler.refuse = {
        "c1@example.com": "550 5.1.1 No such user",
        "c2@example.com": "452 4.2.2 Mailbox full",
    }
    with _server(handler) as server:
        [(status, detail)] = _send_one_chunk(server.port, range(1))
    assert status == "sent"
    assert (
        detail == "c1@example.com: 550 5.1.1 No such user; c2@example.com: 452 4.2.2 Mailbox full"
    )
    assert sorted(_copies(handler)) == ["b1@example.com", "b2@example.com", "u0@example.com"]
    assert handler.commands.count("RCPT c1@example.com") == 1
    assert handler.commands.count("RCPT c2@example.com") == 1
    assert handler.commands.count("RCPT b2@example.com") == 2


def test_one_recipient_per_transaction_takes_a_transaction_each() -> None:
    handler = RecipientCapHandler(1, "452 Too many recipients", pipelining=True)
    with _server(handler) as server:
        assert _send_one_chunk(server.port, range(1)) == [("sent", "")]
    assert [m.rcpt_tos for m in handler.messages] == [
        ["u0@example.com"], ["c1@example.com"], ["c2@example.com"], ["b1@example.com"],
        ["b2@example.com"],
    ]  # fmt: skip


def test_a_server_with_no_room_even_for_one_more_ends_the_tries() -> None:
    """452 to the first recipient of the next transaction too (out of storage): the
    message stays sent to its own recipient, the others are named, nothing loops."""
    handler = RecipientCapHandler(1, "452 4.3.1 Insufficient system storage", pipelining=True)
    handler.refuse = dict.fromkeys([*_cc(0), *_bcc(0)], handler.refusal)
    with _server(handler) as server:
        [(status, detail)] = _send_one_chunk(server.port, range(1))
    assert status == "sent"
    assert detail.count("452 4.3.1 Insufficient system storage") == 4
    assert [m.rcpt_tos for m in handler.messages] == [["u0@example.com"]]
    assert handler.commands.count("MAIL deals@acme.example") == 2  # one more try, no loop


class OneOfEach(CappedHandler):
    """One recipient per transaction, one message per connection (421 to the next)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if envelope.rcpt_tos:
            return "452 4.5.3 Too many recipients"
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.mark.parametrize("pipelining", [True, False])
def test_put_off_recipients_go_on_a_new_connection_when_the_server_ends_it(
    pipelining: bool,
) -> None:
    handler = OneOfEach(1, "421 4.7.0 closing", pipelining=pipelining)
    with _server(handler) as server:
        assert _send_one_chunk(server.port, range(2)) == [("sent", "")] * 2
    assert sorted(len(v) for v in _copies(handler).values()) == [1] * 10
    assert handler.connections == 10
