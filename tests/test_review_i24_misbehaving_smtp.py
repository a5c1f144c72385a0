"""Review I24: the SMTP family against servers that misbehave as real MTAs do.

A bare asyncio SMTP server on 127.0.0.1 (its replies scripted per command), on a thread of
its own so that a campaign run in this process talks to it as to a real relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, ledger, store
from providers.base import OutcomeStatus
from providers.errors import ErrorClass
from tests.helpers import recipients, run_inline, smtp_provider
from tests.test_review_n10_smtp import ScriptedServer
from tests.test_smtp_sending import FAST, _config, _message, _send

DROP = b"DROP"  # a reply that ends so: sent, then the server closes the connection
Script = Callable[[bytes], bytes | None]
_WRITER: ContextVar[asyncio.StreamWriter] = ContextVar("writer")


class DroppingServer(ScriptedServer):
    """:class:`ScriptedServer` whose ``answer`` may end a reply with :data:`DROP` (Exim's
    ``drop`` ACL verb: the reply, then the connection closed)."""

    def __init__(self, ehlo: bytes, answer: Script) -> None:
        super().__init__(ehlo=ehlo, answer=self._dropping)
        self.script = answer

    def _dropping(self, command: bytes) -> bytes | None:
        reply = self.script(command)
        if reply is None or not reply.endswith(DROP):
            return reply
        writer = _WRITER.get()  # (each connection's handler task has its own)
        writer.write(reply.removesuffix(DROP))
        writer.close()
        return b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _WRITER.set(writer)
        with contextlib.suppress(ConnectionError):  # (a close the client saw first)
            await super().handle(reader, writer)


def _user0_fails_the_others_go(r: redis.Redis, server: DroppingServer) -> dict[str, Any]:
    """Sends a campaign of three (user0 first) through ``server``: user0 fails at its first
    attempt, the other two are sent once each. Returns user0's ledger record."""
    with server.running():
        smtp_provider(r, server.port)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
        cid, _ = run_inline(r, body, FAST)
    summary = campaign_reads.campaign_summary(cid, r)
    assert (summary["sent"], summary["failed"], summary["queued"]) == (2, 1, 0)
    assert server.complete == 2  # each good recipient once
    rec = ledger.parse_record(r.hget(store.ledger_key(cid), "0"))
    assert rec is not None
    assert (rec["state"], rec["attempts"]) == ("failed", 1)
    return rec


def _refuse_then_drop_at_rset() -> Script:
    """Refuses user0's RCPT (and the DATA without a recipient), then closes the connection
    at the RSET that follows: a relay that hangs up after a refusal."""
    refused = False

    def answer(command: bytes) -> bytes | None:
        nonlocal refused
        if command.startswith(b"MAIL"):
            refused = False
        elif command.startswith(b"RCPT") and b"<USER0@" in command:
            refused = True
            return b"550 5.1.1 <user0@example.com>: Recipient address rejected\r\n"
        elif command.startswith(b"DATA") and refused:
            return b"554 5.5.1 Error: no valid recipients\r\n"
        elif command.startswith(b"RSET") and refused:
            return DROP
        return None

    return answer


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_relay_hanging_up_after_refusing_a_recipient_keeps_the_refusal(
    redis_client: redis.Redis, pipelining: bool
) -> None:
    """A server that drops the connection after refusing a recipient (at the RSET that
    follows): the refusal was the message's answer, yet the lost RSET took its place, so
    the whole chunk was a connection error, retried; the same again at every attempt
    (the refused message leads its chunk), until every message of it failed as `SMTP
    connection error`, the good recipients never sent. Now the message fails with its
    refusal and the others go on a new connection."""
    ehlo = b"250 PIPELINING\r\n" if pipelining else b"250 8BITMIME\r\n"
    server = DroppingServer(ehlo=ehlo, answer=_refuse_then_drop_at_rset())
    rec = _user0_fails_the_others_go(redis_client, server)
    assert rec["error_class"] == ErrorClass.INVALID_RECIPIENT
    assert "550 5.1.1" in rec["detail"]


def _drop_after_refusing(command: bytes) -> bytes | None:
    """Exim's ``drop`` in its RCPT ACL: user0 refused, then the connection closed, the
    pipelined DATA never answered."""
    if command.startswith(b"RCPT") and b"<USER0@" in command:
        return b"550 5.7.1 <user0@example.com>: dropped by policy\r\n" + DROP
    return None


def test_a_pipelining_relay_dropping_after_a_refusal_keeps_the_refusal(
    redis_client: redis.Redis,
) -> None:
    """The same with PIPELINING: the refusal came, the reply to DATA never did. The lost
    DATA reply made the whole chunk a connection error at every attempt, the good
    recipients never sent."""
    server = DroppingServer(ehlo=b"250 PIPELINING\r\n", answer=_drop_after_refusing)
    rec = _user0_fails_the_others_go(redis_client, server)
    assert rec["error_class"] == ErrorClass.DISPATCH_FAILED_SMTP  # a policy block (x.7.x)
    assert "550 5.7.1" in rec["detail"]


@pytest.mark.parametrize("refusal", [b"502 5.5.2 Error: command not recognized\r\n",
                                     b"500 5.5.1 Unknown command\r\n"])  # fmt: skip
def test_a_server_that_does_not_know_ehlo_is_greeted_with_helo(refusal: bytes) -> None:
    """RFC 5321 §4.1.4: a client SHOULD fall back to HELO when EHLO is refused; aiosmtplib
    does so for STARTTLS. With ``security`` ``none`` (and ``tls``) the EHLO dispatch sends
    itself was not retried as HELO: "refused the session", a configuration error that
    paused every campaign on an old relay that takes mail well."""
    server = ScriptedServer(answer=lambda command: refusal if command.startswith(b"EHLO") else None)
    with server.running():
        config = _config(server.port, "none", timeout=5.0)
        outcomes = asyncio.run(
            _send(config, [_message(1, "a@example.com"), _message(2, "b@example.com")])
        )
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 2  # type: ignore[attr-defined]
    assert b"HELO " in server.received
    assert server.complete == 2
