"""Review J24: connections that never send a whole request head, over the real API served
as ``dispatch api`` serves it (uvicorn with :class:`HeadDeadlineProtocol`)."""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from dispatch import cli
from dispatch.api.server import HeadDeadlineProtocol
from dispatch.redis_server import RedisServer
from tests.api_server import ApiServer
from tests.smtp_server import free_port

META = "ann@example.com|1|c1|20250101|0|default|1|"
EVENT = {"version": "v2", "type": "delivered", "email": "ann@example.com", "meta": META}
WAIT = 10.0  # how long a test waits for the server to close a connection


class _QuickHead(HeadDeadlineProtocol):
    head_seconds = 0.5


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[ApiServer]:
    api = ApiServer(http=_QuickHead).start()
    yield api
    api.stop()


def _closed_by_server(conn: socket.socket, trickle: bytes = b"") -> bool:
    """Whether the server closes ``conn`` within :data:`WAIT` (``trickle`` sent now and then)."""
    conn.settimeout(0.2)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if trickle:
                conn.sendall(trickle)
            if conn.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset, or the send found it closed
            return True
    return False


def _request(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _read_answer(conn: socket.socket) -> bytes:
    conn.settimeout(WAIT)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        data += conn.recv(4096)
    return data


def test_silent_connection_is_closed(server: ApiServer) -> None:
    """It was kept for good: enough of them (1,024 under systemd) and the API accepted
    nothing, callbacks included."""
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        assert _closed_by_server(conn)


def test_head_sent_a_line_at_a_time_is_closed(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"POST /v1/callbacks/gen/x HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(conn, trickle=b"X-Slow: 1\r\n")


def test_requests_are_answered_and_kept_alive(server: ApiServer, paths: dict[str, str]) -> None:
    """A callback whose body comes after the head deadline is still read and answered
    (the body is the route's to bound), and the connection serves a next request."""
    body = json.dumps(EVENT).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        request = _request(paths["gen"], body)
        conn.sendall(request[: -len(body)])
        # The head is whole: the server waits for the body past the head deadline.
        assert not _closed_by_server_for(conn, 1.0)
        conn.sendall(body)
        assert b" 200 OK\r\n" in _read_answer(conn)
        conn.sendall(request)
        assert b" 200 OK\r\n" in _read_answer(conn)
        assert _closed_by_server(conn)  # then idle: closed as before


def _closed_by_server_for(conn: socket.socket, seconds: float) -> bool:
    conn.settimeout(seconds)
    try:
        return conn.recv(4096) == b""
    except TimeoutError:
        return False


def test_dispatch_api_serves_with_the_head_deadline(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append(kwargs))
    port = free_port()
    assert cli.cmd_api(argparse.Namespace(host="127.0.0.1", port=port)) == 0
    assert runs and runs[0]["http"] is HeadDeadlineProtocol
