"""Review H10, Generic HTTP provider, against raw servers on 127.0.0.1.

* a compressed response body is decoded within the read bound: a refusal sent gzipped
  (1 MB of gzip holds 1 GB of zeros) was decoded whole, a 64 KB read became tens of
  megabytes in memory, per session;
* what arrived of a refusal's body before the connection dropped is kept in the detail
  (it was dropped, leaving "HTTP 400" with no reason);
* a connection that fails while the request is still being written, and then gives no
  answer, is retried: the provider cannot have received the whole request (it was
  ``unknown``, never resent, though certainly not sent). One that fails after the whole
  request was written stays ``unknown``;
* a query too long for httpx's URL (a value over 64 KB in a GET query) fails its message
  as ``Invalid message``, naming the query: httpx's ``InvalidURL`` (no HTTP error) was
  raised out of the whole chunk, whose messages the dispatcher then marked ``unknown``
  though none was sent, and the test email answered 500.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from contextlib import suppress

import pytest

from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.errors import ErrorClass
from providers.http import KEEPALIVE_SECONDS, MAX_QUERY_CHARS
from tests.http_sink import HttpSink
from tests.test_http_provider import SEED_BATCH_BODY, http_config, local, message, send

Serve = Callable[[socket.socket], None]


def receive(conn: socket.socket, body_bytes: int | None = None) -> bytes:
    """What the client sent: the request line and headers, then its body (as long as
    Content-Length says), or only ``body_bytes`` of it (stopping the client mid-body)."""
    data = b""
    head = b""
    while True:
        if not head and b"\r\n\r\n" in data:
            head = data.partition(b"\r\n\r\n")[0]
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            wanted = len(head) + 4 + (length if body_bytes is None else body_bytes)
        if head and len(data) >= wanted:
            return data
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk


def reset(conn: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashing or abrupt server does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


async def outcome_of(
    serve: Serve, msg: OutgoingMessage | None = None, receive_buffer: int = 0
) -> SendOutcome:
    """The outcome of sending ``msg`` (message 1) to a server on 127.0.0.1 whose one
    connection ``serve`` handles; ``receive_buffer``: that connection's SO_RCVBUF."""
    listener = socket.socket()
    if receive_buffer:  # (inherited by the accepted connection)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        with suppress(OSError), listener.accept()[0] as conn:
            serve(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        (outcome,) = await send(local(http_config(url, timeout=10)), [msg or message(1)])
    finally:
        listener.close()
        thread.join(timeout=10)
    return outcome


def gzipped_zeros(megabytes: int) -> bytes:
    """``megabytes`` MB of zero bytes, gzipped (about 1 KB a MB), made 1 MB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


def answer(status: bytes, body: bytes, *headers: bytes, length: int | None = None) -> Serve:
    """A server reading the request, then answering ``status`` with ``body`` (announced
    as ``length`` bytes, its own length by default) and ``headers``."""

    def serve(conn: socket.socket) -> None:
        receive(conn)
        lines = [b"HTTP/1.1 " + status, *headers, b"Content-Length: %d" % (length or len(body))]
        conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    return serve


@pytest.mark.asyncio
async def test_a_compressed_refusal_is_decoded_within_the_read_bound() -> None:
    bomb = answer(b"400 Bad", gzipped_zeros(256), b"Content-Encoding: gzip")
    tracemalloc.start()
    try:
        outcome = await outcome_of(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome.status is OutcomeStatus.FAILED and outcome.code == 400
    assert peak < 16 * 1024 * 1024  # the bound is 64 KB; decoded whole, a chunk made ~64 MB


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw deflate"])
async def test_a_compressed_refusal_is_still_quoted(encoding: str) -> None:
    """Also "deflate" without zlib's header, as some servers send it (review Q10)."""
    text = b'{"error": "recipient domain not verified"}'
    payload = gzip.compress(text) if "gzip" in encoding else zlib.compress(text)
    if encoding == "raw deflate":
        packer = zlib.compressobj(wbits=-15)
        payload, encoding = packer.compress(text) + packer.flush(), "deflate"
    serve = answer(b"422 No", payload, b"Content-Encoding: " + encoding.encode())
    outcome = await outcome_of(serve)
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.detail == 'HTTP 422: {"error": "recipient domain not verified"}'


@pytest.mark.asyncio
async def test_a_body_in_an_encoding_not_decoded_is_said_so() -> None:
    outcome = await outcome_of(answer(b"400 No", b"\x8b\x01\x80\x03", b"Content-Encoding: br"))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.detail == "HTTP 400: (a body in br encoding, not shown)"


@pytest.mark.asyncio
async def test_what_arrived_of_a_refusal_is_kept_when_the_connection_drops() -> None:
    # Content-Length promises more than is sent, then the server closes.
    outcome = await outcome_of(answer(b"400 Bad", b"unknown field 'heading'", length=500))
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.detail == "HTTP 400: unknown field 'heading'"


@pytest.mark.asyncio
async def test_a_connection_lost_while_the_request_is_written_is_retried() -> None:
    heard: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        heard.append(receive(conn, body_bytes=256 * 1024))  # the client is still writing
        reset(conn)

    # 16 MB: more than the socket buffers hold (the client's send buffer is 4 MB at most
    # by default, the server's receive buffer is made small), so the writing fails.
    big = message(1, html="<p>" + "x" * (16 * 1024 * 1024) + "</p>")
    outcome = await outcome_of(serve, big, receive_buffer=4096)
    assert heard and heard[0].startswith(b"POST ")
    assert outcome.status is OutcomeStatus.RETRY
    assert "before the whole request was sent" in outcome.detail


@pytest.mark.asyncio
async def test_a_connection_lost_after_the_whole_request_is_unknown() -> None:
    def serve(conn: socket.socket) -> None:
        receive(conn)
        reset(conn)

    outcome = await outcome_of(serve)
    assert outcome.status is OutcomeStatus.UNKNOWN
    assert "may have accepted it" in outcome.detail


GET_QUERY = {"to": "$$To", "s": "$$Subject", "fn": "$$FromName", "fa": "$$FromAddress"}


@pytest.mark.asyncio
async def test_a_query_too_long_for_a_url_fails_its_message_alone() -> None:
    long, short = "x" * (MAX_QUERY_CHARS + 1), "Sara"
    with HttpSink() as sink:
        config = http_config(sink.url, method="GET", body=None, query={**GET_QUERY, "n": "$$name"})
        messages = [message(i, user_vars={"name": name}) for i, name in enumerate((long, short))]
        async with local(config).session() as session:
            too_long, fine = await session.send(messages)
        assert [r.query[-1] for r in sink.requests] == [("n", "Sara")]
    assert fine.status is OutcomeStatus.SENT
    assert too_long.status is OutcomeStatus.FAILED
    assert too_long.error_class is ErrorClass.INVALID_MESSAGE
    assert too_long.detail.startswith("query: the values make the URL too long to send")


@pytest.mark.asyncio
async def test_a_batch_query_too_long_fails_its_messages_unsent() -> None:
    campaign_vars = {"tag": "x" * (MAX_QUERY_CHARS + 1), "name": "", "userID": ""}
    with HttpSink() as sink:
        config = http_config(sink.url, body=SEED_BATCH_BODY, batch=True, query={"t": "$$tag"})
        messages = [message(i, campaign_vars=campaign_vars) for i in range(3)]
        outcomes = await send(local(config), messages)
        assert sink.requests == []
    assert {o.status for o in outcomes} == {OutcomeStatus.FAILED}
    assert all(o.detail.startswith("query: the values make the URL") for o in outcomes)


@pytest.mark.asyncio
async def test_a_connection_idle_past_the_keepalive_is_not_reused() -> None:
    """A server closes an idle connection after a few seconds; a request sent as it does
    gets no answer and ends its batch ``unknown``: a connection idle past
    KEEPALIVE_SECONDS is replaced, never raced (httpx's default reused it for 5 s)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    served: list[int] = []  # requests per accepted connection

    def run() -> None:
        with suppress(OSError):
            while len(served) < 2 and sum(served) < 2:
                conn = listener.accept()[0]
                served.append(0)
                with conn:
                    while sum(served) < 2 and receive(conn):
                        served[-1] += 1
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with local(http_config(url, timeout=10)).session() as session:
            first = await session.send([message(1)])
            await asyncio.sleep(KEEPALIVE_SECONDS + 0.5)
            second = await session.send([message(2)])
    finally:
        listener.close()
        thread.join(timeout=10)
    assert [o.status for o in first + second] == [OutcomeStatus.SENT, OutcomeStatus.SENT]
    assert served == [1, 1]  # the second request came on a new connection
