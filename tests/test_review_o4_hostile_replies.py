"""Review O4: an SMTP server whose replies are malformed or out of place.

The answer to a message's final dot decides whether it was sent: a reply that is no reply,
or a 354 where only 2xx, 4xx or 5xx belong, leaves the outcome unknown (never sent again),
and the messages after it on the connection are retried, not lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from providers.base import OutcomeStatus, SendOutcome
from providers.config import parse_provider_config
from providers.errors import ProviderError
from providers.smtp import SmtpTransport
from tests.test_smtp_sending import _config, _message

DataReply = Callable[[int], bytes]


class RawServer:
    """A bare SMTP server on 127.0.0.1 (PIPELINING) answering each message's final dot with
    ``data_reply(n)`` (n counts the messages, from 1) and everything else with 250."""

    def __init__(
        self,
        data_reply: DataReply,
        ehlo: bytes = b"250 PIPELINING\r\n",
        answer: Callable[[bytes], bytes | None] = lambda command: None,
    ) -> None:
        self.data_reply = data_reply
        self.ehlo = ehlo
        self.answer = answer  # replaces the reply to a command when it gives one
        self.taken = 0
        self.complete = 0
        self.received = b""  # every byte the client sent

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw\r\n")
        while line := await reader.readline():
            self.received += line
            command = line.upper()
            if (reply := self.answer(command)) is not None:
                writer.write(reply)
            elif command.startswith(b"EHLO"):
                writer.write(b"250-raw\r\n" + self.ehlo)
            elif command.startswith(b"STARTTLS"):
                writer.write(b"454 4.7.0 TLS not available due to temporary reason\r\n")
            elif command.startswith(b"AUTH"):
                writer.write(b"235 2.7.0 ok\r\n")
            elif command.startswith(b"DATA"):
                writer.write(b"354 go on\r\n")
                while (content := await reader.readline()) not in (b".\r\n", b""):
                    pass
                self.taken += 1
                self.complete += content == b".\r\n"  # the content came whole
                writer.write(self.data_reply(self.taken))
            elif command.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


def _send_through(
    data_reply: DataReply, count: int = 3, server: RawServer | None = None, **fields: object
) -> list[SendOutcome]:
    server = server or RawServer(data_reply)
    fields = {"security": "none", **fields}

    async def run() -> list[SendOutcome]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = parse_provider_config(_config(port, timeout=5.0, **fields))  # type: ignore[arg-type]
        transport = SmtpTransport(config)  # type: ignore[arg-type]
        messages = [_message(seq, f"r{seq}@example.com") for seq in range(1, count + 1)]
        try:
            async with transport.session() as session:
                return list(await session.send(messages))
        finally:
            listener.close()
            await listener.wait_closed()

    return asyncio.run(run())


def _first_then_ok(first: bytes) -> DataReply:
    return lambda n: first if n == 1 else b"250 ok\r\n"


@pytest.mark.parametrize(
    "reply",
    [b" 250 ok\r\n", b"2500 ok\r\n", b"25 ok\r\n", b"199 eh\r\n", b"+25 ok\r\n", b"2_0 ok\r\n"],
)
def test_a_malformed_reply_to_the_final_dot_leaves_the_message_unknown(reply: bytes) -> None:
    outcomes = _send_through(_first_then_ok(reply))
    assert outcomes[0].status is OutcomeStatus.UNKNOWN
    assert "malformed reply line" in outcomes[0].detail
    # The rest were not handed over on the broken session: retried, not lost, not failed.
    assert [o.status for o in outcomes[1:]] == [OutcomeStatus.RETRY, OutcomeStatus.RETRY]


def test_a_354_to_the_final_dot_is_not_a_sent_message() -> None:
    outcomes = _send_through(_first_then_ok(b"354 go on\r\n"))
    assert outcomes[0].status is OutcomeStatus.UNKNOWN
    assert "unexpected reply 354 go on" in outcomes[0].detail
    assert [o.status for o in outcomes[1:]] == [OutcomeStatus.RETRY, OutcomeStatus.RETRY]


def test_a_reply_of_endless_continuation_lines_is_cut_off() -> None:
    flood = b"250-more\r\n" * 5000 + b"250 ok\r\n"
    outcomes = _send_through(_first_then_ok(flood), count=2)
    assert outcomes[0].status is OutcomeStatus.UNKNOWN
    assert "reply of more than" in outcomes[0].detail
    assert outcomes[1].status is OutcomeStatus.RETRY


@pytest.mark.parametrize("reply", [b"250 ok\r\n", b"250\r\n", b"250-queued\r\n250-\r\n250 id7\r\n"])
def test_well_formed_replies_still_send(reply: bytes) -> None:
    outcomes = _send_through(lambda n: reply)
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 3


@pytest.mark.parametrize(
    "ehlo",
    [
        b"250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n",  # STARTTLS stripped from the EHLO
        b"250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",  # offered, then refused
    ],
)
def test_starttls_stripped_or_refused_never_sends_the_password_or_a_message(ehlo: bytes) -> None:
    server = RawServer(lambda n: b"250 ok\r\n", ehlo=ehlo)
    with pytest.raises(ProviderError) as info:
        _send_through(server.data_reply, server=server, security="starttls",
                      username="user", password="s3cr3t-pw")  # fmt: skip
    assert b"AUTH" not in server.received.upper()
    assert b"MAIL" not in server.received.upper()
    assert server.taken == 0
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in info.value.detail
