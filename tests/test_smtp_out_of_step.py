"""An SMTP server out of step with the commands: a reply where RFC 5321 has none (3xx to
MAIL or RCPT; to DATA anything but 354, 4xx or 5xx), or replies nobody asked for.

Such a server's later replies cannot be matched to commands, so the connection is
dropped before the message's content goes out on it, and the message goes again on a
new connection. Before, a 3xx to MAIL or RCPT was read as accepted, a 250 to DATA failed
the message for good with "250 ok" as the reason, and a flood of replies was buffered
whole and read as the answers to the next messages' commands.
"""

from __future__ import annotations

import pytest

from providers.base import OutcomeStatus
from providers.smtp_wire import MAX_UNREAD_REPLIES
from tests.test_review_o4_hostile_replies import RawServer, _send_through

OK = b"250 ok\r\n"


def _server(prefix: bytes, reply: bytes, ehlo: bytes = b"250 PIPELINING\r\n") -> RawServer:
    """Answers the second command starting with ``prefix`` (the second message's) with
    ``reply``."""
    seen: list[bytes] = []

    def answer(command: bytes) -> bytes | None:
        if command.startswith(prefix):
            seen.append(command)
            if len(seen) == 2:
                return reply
        return None

    return RawServer(lambda n: OK, ehlo=ehlo, answer=answer)


@pytest.mark.parametrize("ehlo", [b"250 PIPELINING\r\n", b"250 SIZE 1000000\r\n"])
@pytest.mark.parametrize(
    ("prefix", "reply"),
    [
        (b"MAIL", b"354 go ahead\r\n"),
        (b"MAIL", b"334 VXNlcm5hbWU6\r\n"),
        (b"RCPT", b"354 go ahead\r\n"),
        (b"RCPT", b"300 what\r\n"),
        (b"DATA", b"334 eh\r\n"),
        (b"DATA", b"250 ok\r\n"),
    ],
)
def test_a_reply_out_of_place_drops_the_connection_and_the_message_goes_on_a_new_one(
    prefix: bytes, reply: bytes, ehlo: bytes
) -> None:
    server = _server(prefix, reply, ehlo)
    outcomes = _send_through(lambda n: OK, count=3, server=server)
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 3
    # The second message's content never went out on the connection out of step: it
    # went on a new one, and each message's content reached the server once.
    assert server.received.count(b"\r\nEHLO") == 1
    assert server.complete == 3


def test_replies_nobody_asked_for_end_the_session() -> None:
    flood = b"250 ok\r\n" * (MAX_UNREAD_REPLIES + 10)
    server = _server(b"MAIL", flood)
    outcomes = _send_through(lambda n: OK, count=3, server=server)
    # The first message's answer came with the flood and is thrown away with it: its
    # outcome is unknown (never sent again); the others are retried, none failed.
    assert [o.status for o in outcomes] == [
        OutcomeStatus.UNKNOWN, OutcomeStatus.RETRY, OutcomeStatus.RETRY
    ]  # fmt: skip
    assert f"more than {MAX_UNREAD_REPLIES} replies not asked for" in outcomes[0].detail
    assert server.complete == 1
