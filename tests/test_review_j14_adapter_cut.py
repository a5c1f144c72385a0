"""Review J14: what the adapters know of a send cut short (``Session.cut_short``).

The Generic HTTP adapter said nothing of a cut send (every message of its chunk ended
``unknown``, never resent): but a request cut while its connection was opening (TCP
connect, TLS handshake), or never started, had not one byte written, and a request
answered before the cut has its answer. httpcore says when it starts writing a request
(its trace extension's ``http11.send_request_headers.started``).

The SMTP adapter, cut while sending a chunk's messages to their put-off Cc (``452``),
said of every such Cc "may not have been sent", also of one whose transaction the server
had answered ``250`` before the cut, and of one whose content was never written.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatch import sending, store
from dispatch.ledger import parse_record
from dispatch.settings import Settings
from providers.base import CutShort, OutcomeStatus, OutgoingMessage
from providers.config import parse_provider_config
from providers.http import HttpTransport
from providers.smtp import SmtpTransport
from tests.helpers import create_held, http_provider, recipients, run_batches
from tests.http_sink import HttpSink, Reply
from tests.smtp_server import Handler, SmtpTestServer
from tests.test_http_provider import http_config, message

CUT = 1.0  # the send's deadline
STALL = 3.0  # a stalled answer comes this late: after the cut


async def _cut(
    transport: HttpTransport | SmtpTransport, messages: list[OutgoingMessage]
) -> CutShort:
    """What the session says of its send of ``messages``, cut ``CUT`` s in."""
    async with transport.session() as session:
        try:
            async with asyncio.timeout(CUT):
                await session.send(messages)
        except TimeoutError:
            return session.cut_short()
    raise AssertionError("the send was not cut")


def _http_cut(endpoint: str, messages: list[OutgoingMessage]) -> CutShort:
    transport = HttpTransport(http_config(endpoint, timeout=10), allow_private=True)
    return asyncio.run(_cut(transport, messages))


@contextmanager
def _silent_listener(backlog: int) -> Iterator[socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    try:
        yield listener
    finally:
        listener.close()


@contextmanager
def _connect_stalls() -> Iterator[int]:
    """A port whose accept queue is full (never accepted): a new TCP connect to it gets
    no answer (the kernel drops its SYN)."""
    fillers: list[socket.socket] = []
    with _silent_listener(0) as listener:
        port = listener.getsockname()[1]
        try:
            while len(fillers) < 16:
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(("127.0.0.1", port))
                _, writable, _ = select.select([], [filler], [], 0.3)
                if not writable:  # this one waits: the queue is full
                    break
            else:
                raise AssertionError("the accept queue never filled")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_a_request_cut_while_connecting_was_not_handed_over() -> None:
    with _connect_stalls() as port:
        known = _http_cut(f"http://127.0.0.1:{port}/send", [message(0)])
    assert known == CutShort([], [0]), known


def test_a_request_cut_in_its_tls_handshake_was_not_handed_over() -> None:
    with _silent_listener(8) as listener:
        endpoint = f"https://127.0.0.1:{listener.getsockname()[1]}/send"
        known = _http_cut(endpoint, [message(0), message(1)])
    assert known == CutShort([], [0, 1]), known


def test_a_request_written_and_unanswered_may_have_been_taken() -> None:
    with _silent_listener(8) as listener:
        known = _http_cut(f"http://127.0.0.1:{listener.getsockname()[1]}/send", [message(0)])
    assert known == CutShort([], []), known


def test_answered_requests_keep_their_answers_and_those_never_started_were_not_sent() -> None:
    """One request a message: the first answered 200, the second's answer comes after the
    cut (perhaps taken), the third was never sent."""
    with HttpSink() as sink:
        sink.script(Reply(200), Reply(200, delay=STALL))
        known = _http_cut(f"{sink.url}/send", [message(0), message(1), message(2)])
        assert len(sink.requests) == 2  # (the third never left)
    assert [(o.seq, o.status) for o in known.outcomes] == [(0, OutcomeStatus.SENT)], known
    assert known.not_handed_over == [2], known


@dataclass
class PutOffHandler(Handler):
    """Puts off (``452``) the first RCPT of each Cc, and answers the end of the data of
    the ``stalled`` Cc's own transaction ``STALL`` s late."""

    stalled: str = ""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("cc") and f"RCPT {address}" not in self.commands:
            self.commands.append(f"RCPT {address}")
            return "452 4.5.3 Too many recipients"
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if envelope.rcpt_tos == [self.stalled]:
            self.stalled = ""
            await asyncio.sleep(STALL)
        return await super().handle_DATA(server, session, envelope)


def test_a_cut_among_put_off_cc_uses_the_answers_that_came() -> None:
    """Three messages, each with a Cc the server puts off; their Cc's transactions go
    back to back (pipelined). The first Cc's is answered 250 before the cut, the
    second's end is answered after it, the third's content was never written. Each
    message was sent to its To; the first Cc has it (its message's detail names no
    one), the second may have it, the third does not."""
    server = SmtpTestServer()
    server.handler = PutOffHandler(pipelining=True, stalled="cc1@example.com")
    with server:
        config = {"nickname": "s", "kind": "smtp", "host": "127.0.0.1", "port": server.port,
                  "security": "none", "timeout": 10, "data_timeout": 10}  # fmt: skip
        transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
        messages = [
            OutgoingMessage(
                seq,
                f"m|1|c1|20261122|0|default|{seq}|",
                "c1",
                f"to{seq}@example.com",
                subject="Hello",
                html="<p>Hi</p>",
                text="Hi",
                from_address="deals@acme.example",
                from_name="Acme",
                cc=(f"cc{seq}@example.com",),
            )
            for seq in range(3)
        ]
        known = asyncio.run(_cut(transport, messages))
        received = [m.rcpt_tos for m in server.messages]
    assert received[:4] == [[f"to{i}@example.com"] for i in range(3)] + [["cc0@example.com"]]
    assert [(o.seq, o.status) for o in known.outcomes] == [
        (i, OutcomeStatus.SENT) for i in range(3)
    ], known
    assert known.not_handed_over == [], known
    details = [o.detail for o in known.outcomes]
    assert details[0] == "", details
    assert details[1] == "cc1@example.com: may not have been sent: the send was cut short"
    assert details[2] == (
        "cc2@example.com: not sent: the send was cut short before it went to them"
    ), details


@pytest.mark.parametrize(
    ("scheme", "state", "handed_on"), [("https", "retry", 3), ("http", "unknown", 0)]
)
def test_an_http_campaign_chunk_cut_in_its_tls_handshake_waits_for_the_next_run(
    scheme: str,
    state: str,
    handed_on: int,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch run's deadline cuts an HTTP provider's chunk (one batch request) while
    its connection's TLS handshake is on: its messages were all recorded ``unknown``
    (never resent) as ``SMTP timeout``; none was sent, and they are given back for the
    next run. Cut once its request was written (plain HTTP), they are unknown, as an
    HTTP provider's failures are named: ``Dispatch failed``."""
    monkeypatch.setattr(sending, "cut_after", lambda visibility_timeout: CUT)
    with _silent_listener(8) as listener:
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
        http_provider(redis_client, url, timeout=10)
        body = {"id": "cut", "provider": "esp", "subject": "s", "html": "<p>h</p>",
                "recipients": recipients(3)}  # fmt: skip
        campaign_id, batches = create_held(redis_client, body)
        [result] = run_batches(batches, Settings(), rounds=1)
    assert result.counts.get("handed_on", 0) == handed_on, result
    ledger = store.ledger_key(campaign_id)
    records = [parse_record(redis_client.hget(ledger, str(seq))) for seq in range(3)]
    assert [(r or {}).get("state") for r in records] == [state] * 3, records
    assert [(r or {}).get("error_class") for r in records] == ["Dispatch failed"] * 3, records
