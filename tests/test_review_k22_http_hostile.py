"""Review K22, Generic HTTP provider against broken ESP servers on 127.0.0.1.

A server that sends more than its answer on a kept-alive connection (a ``Content-Length``
counted in characters for a body with "é" in it, a stray CRLF after the body) left the
extra bytes in h11's buffer, where httpcore's check of an idle connection does not look:
the next request was written on it, its answer read from the leftover ("illegal status
line"), and its messages, which the provider took, were left ``unknown``: every second
request of a campaign. Such a connection is now closed, and the next request goes on a
new one.

An answer h11 refuses (an illegal status or header line) was quoted whole in the
detail of every message of the request, and in their log lines: up to 16 KB of the
server's bytes each. The quote is now cut, after the credentials in it are masked.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest

from providers.base import OutcomeStatus, SendOutcome
from providers.http import EXCERPT_CHARS
from tests.test_http_provider import http_config, local, message, send
from tests.test_review_h10_http import receive

Answer = Callable[[], bytes]


def characters_not_bytes() -> bytes:
    """An answer whose Content-Length counts the characters of a body with "é" in it."""
    body = '{"id":"é"}'
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body.encode()


def stray_line_break() -> bytes:
    """A right Content-Length, then a CRLF after the body."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}\r\n"


def in_step() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


async def requests_per_connection(
    answer: Answer, count: int, **fields: Any
) -> tuple[list[SendOutcome], list[int]]:
    """The outcomes of ``count`` messages sent one per request in one session (provider
    ``fields`` added) to a server answering each request with ``answer()`` (keeping the
    connection open), and how many requests each connection it accepted carried."""
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[int] = []

    def run() -> None:
        with suppress(OSError):
            while sum(served) < count:
                conn = listener.accept()[0]
                served.append(0)
                with conn:
                    while sum(served) < count and receive(conn):
                        served[-1] += 1
                        conn.sendall(answer())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        outcomes = await send(
            local(http_config(url, timeout=5, **fields)), [message(i) for i in range(count)]
        )
    finally:
        listener.close()
        thread.join(timeout=10)
    return outcomes, served


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", [characters_not_bytes, stray_line_break])
async def test_a_connection_left_out_of_step_is_not_reused(answer: Answer) -> None:
    outcomes, served = await requests_per_connection(answer, 4)
    assert [o.status for o in outcomes] == [
        OutcomeStatus.SENT
    ] * 4  # (was sent, unknown, sent, unknown)
    assert served == [1, 1, 1, 1]  # each request on a connection of its own, each once


@pytest.mark.asyncio
async def test_a_connection_in_step_is_still_reused() -> None:
    outcomes, served = await requests_per_connection(in_step, 4)
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 4
    assert served == [4]


@pytest.mark.asyncio
async def test_an_answer_h11_refuses_is_quoted_cut_with_the_credentials_masked() -> None:
    def refused() -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + b"echo sk-live-123 " * 900 + b"\r\n\r\n"

    headers = {"Authorization": "Bearer sk-live-123"}
    (outcome,), _ = await requests_per_connection(refused, 1, headers=headers)
    assert outcome.status is OutcomeStatus.UNKNOWN  # the provider may have taken it
    assert "illegal header line" in outcome.detail
    assert "sk-live" not in outcome.detail and "********" in outcome.detail
    assert len(outcome.detail) < EXCERPT_CHARS + 200  # (was over 15,000 characters)
