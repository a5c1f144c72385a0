"""A real recording HTTP server on 127.0.0.1 (port 0) that answers a scripted sequence.

Used by the Generic HTTP provider's tests (and usable by the demo): every request is
recorded (method, path, query, headers, body); replies come from a script
(``sink.script(Reply(503), Reply(200))``) and then from the default reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted answer; ``delay`` seconds pass before it is sent."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = 0.0  # time.monotonic() when it arrived
    peer_port: int = 0  # the client's port: one per TCP connection

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=Reply)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Asked first for each request: a reply that depends on it (None: the script's turn).
    answer: Callable[[RecordedRequest], Reply | None] | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state
        request = RecordedRequest(
            self.command,
            self.path,
            list(self.headers.items()),
            body,
            time.monotonic(),
            self.client_address[1],
        )
        with state.lock:
            state.requests.append(request)
            reply = state.answer(request) if state.answer else None
            if reply is None:
                reply = state.script.popleft() if state.script else state.default
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)


class HttpSink:
    """Context manager running the server in a thread; ``url`` is its base URL."""

    def __init__(
        self,
        default: Reply | None = None,
        answer: Callable[[RecordedRequest], Reply | None] | None = None,
    ) -> None:
        """``answer``: consulted first for every request; its reply, unless None."""
        self._state = _State(default=default or Reply(), answer=answer)
        self._server = _Server(self._state)
        # A short poll interval keeps shutdown (and each test) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then with the default."""
        with self._state.lock:
            self._state.script.extend(replies)

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
