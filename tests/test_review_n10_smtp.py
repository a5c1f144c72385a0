"""Review N10: the SMTP family against servers that behave as real ones do.

A bare SMTP server on a thread of its own (its replies scripted byte for byte), so that a
campaign run in this process talks to it as to a real relay.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from dispatch import campaign_reads
from providers.base import OutcomeStatus, SendOutcome
from providers.config import parse_provider_config
from providers.errors import ProviderError, ThrottledError
from providers.smtp import SmtpTransport
from tests.helpers import recipients, run_inline, smtp_provider
from tests.test_review_o4_hostile_replies import RawServer
from tests.test_smtp_sending import FAST, _config, _message, _send

# Replaces the reply to a command (its line, in upper case) when it gives one.
Answer = Callable[[bytes], bytes | None]


class ScriptedServer(RawServer):
    """:class:`RawServer` (``answer``'s replies where it gives one), greeting with
    ``greeting`` instead when given: a refusal of the session, then a close."""

    def __init__(
        self,
        greeting: bytes | None = None,
        ehlo: bytes = b"250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n",
        answer: Answer = lambda command: None,
    ) -> None:
        super().__init__(lambda n: b"250 ok\r\n", ehlo=ehlo, answer=answer)
        self.greeting = greeting
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    def hang_up(self) -> None:
        """Close every connection from the server's side (an idle timeout)."""
        for writer in self.writers:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        if self.greeting is None:
            await super().handle(reader, writer)
            return
        writer.write(self.greeting)
        await writer.drain()
        writer.close()

    @contextmanager
    def running(self) -> Iterator[ScriptedServer]:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(server.close)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def _auth_reply(reply: bytes) -> Answer:
    return lambda command: reply if command.startswith(b"AUTH") else None


NOT_UTF8 = [
    pytest.param({"greeting": b"421 4.3.2 too busy \xff\r\n"}, id="421-greeting"),
    pytest.param({"greeting": b"554 5.7.1 go away \xc3\r\n"}, id="554-greeting"),
    pytest.param({"answer": _auth_reply(b"535 5.7.8 bad \xff\xfe creds\r\n")}, id="535-auth"),
    pytest.param({"answer": _auth_reply(b"454 4.7.0 later \xe9\r\n")}, id="454-auth"),
]


@pytest.mark.parametrize("server_args", NOT_UTF8)
def test_a_refusal_to_connect_that_is_not_utf8_is_readable_text(
    server_args: dict[str, object],
) -> None:
    """aiosmtplib decoded such a reply into lone surrogates, which the error carried to
    every message's ledger record (orjson refused it: the batch crashed) and to the test
    email's JSON answer. The bytes read as U+FFFD, as in every later reply."""
    with ScriptedServer(**server_args).running() as server:  # type: ignore[arg-type]
        config = _config(server.port, "none", username="u", password="pw", timeout=5.0)
        with pytest.raises(ProviderError) as info:
            asyncio.run(_send(config, [_message()]))
    detail = info.value.detail
    assert "\ufffd" in detail
    assert detail.encode("utf-8") and str(info.value).encode("utf-8")
    assert server.taken == 0


def test_an_auth_refusal_that_is_not_utf8_pauses_the_campaign(redis_client: redis.Redis) -> None:
    server = ScriptedServer(answer=_auth_reply(b"535 5.7.8 mot de passe refus\xe9\r\n"))
    with server.running():
        smtp_provider(redis_client, server.port, username="u", password="pw")
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
        cid, _ = run_inline(redis_client, body, FAST)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    assert "535 5.7.8 mot de passe refus\ufffd" in summary["reason"]
    assert (summary["failed"], summary["sent"], summary["queued"]) == (0, 0, 3)


def _refuse_r1_r2(ended_by: str) -> Answer:
    """Refuses the first batch's recipients (r1, r2), and DATA with no recipient; with
    ``ended_by`` "421", answers the next MAIL on that connection with a 421 (Postfix's
    "too many errors", or its idle timeout read as the answer)."""
    mails = 0
    accepted = False

    def answer(command: bytes) -> bytes | None:
        nonlocal mails, accepted
        if command.startswith(b"MAIL"):
            mails += 1
            accepted = False
            if mails == 3 and ended_by == "421":
                return b"421 4.4.2 raw Error: timeout exceeded\r\n"
        elif command.startswith(b"RCPT"):
            if b"<R1@" in command or b"<R2@" in command:
                return b"550 5.1.1 no such user\r\n"
            accepted = True
        elif command.startswith(b"DATA") and not accepted:
            return b"554 5.5.1 no valid recipients\r\n"
        return None

    return answer


@pytest.mark.parametrize("ended_by", ["421", "close"])
def test_a_kept_connection_that_sent_nothing_and_was_ended_is_redialled(ended_by: str) -> None:
    """A session kept from one batch to the next (dispatch.session_pool) whose connection
    only answered refusals, then ended by the server (closed idle, unseen yet, or a 421
    to the next MAIL): its next messages go on a new connection at once. Before, only a
    connection that had *sent* counted as used: the whole chunk failed as a connection
    error or a throttle, an attempt each and the provider slowed down, for a connection
    that was only old."""
    server = ScriptedServer(answer=_refuse_r1_r2(ended_by))

    async def run() -> list[list[SendOutcome]]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = parse_provider_config(_config(port, "none", timeout=5.0))
        transport = SmtpTransport(config)  # type: ignore[arg-type]
        batches = [
            [_message(seq, f"r{seq}@example.com") for seq in seqs] for seqs in ((1, 2), (3, 4))
        ]
        try:
            async with transport.session() as session:
                first = list(await session.send(batches[0]))
                if ended_by == "close":
                    server.hang_up()  # (the client has not read the close yet)
                return [first, list(await session.send(batches[1]))]
        finally:
            listener.close()

    first, second = asyncio.run(run())
    assert [o.status for o in first] == [OutcomeStatus.FAILED] * 2
    assert [o.status for o in second] == [OutcomeStatus.SENT] * 2
    assert server.connections == 2
    assert server.complete == 2  # each message of the second batch, once


@pytest.mark.parametrize(
    ("server_args", "reply"),
    [
        ({"greeting": b"421 4.3.2 too busy\r\n"}, "421 4.3.2 too busy"),
        ({"ehlo": b"250-STARTTLS\r\n250 PIPELINING\r\n"}, "454 4.7.0 TLS not available"),
    ],
)
def test_a_session_refused_for_now_names_the_server(
    server_args: dict[str, bytes], reply: str
) -> None:
    """A 4xx greeting, or a 454 to STARTTLS, said only the reply ("421 4.3.2 too busy"):
    the test email's answer and the messages' retry detail did not say which server or
    that it was the session, not the message, it refused."""
    with ScriptedServer(**server_args).running() as server:  # type: ignore[arg-type]
        config = _config(server.port, "starttls", timeout=5.0)
        with pytest.raises(ThrottledError) as info:
            asyncio.run(_send(config, [_message()]))
    assert info.value.detail.startswith(f"127.0.0.1:{server.port} refused the session for now: ")
    assert reply in info.value.detail
