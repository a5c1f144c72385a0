"""How ``dispatch api`` serves the app: uvicorn, with a deadline on each request's head.

uvicorn closes a connection that idles between two requests (``timeout_keep_alive``), but
not one that never sends a whole request head: a connection opened and left silent, or
fed a header line now and then, is kept for good. Anyone who can reach the port (the
callback URL faces the internet) could hold connections until the process runs out of
file descriptors (1,024 under systemd's default), and then nothing is accepted: every
provider's callbacks fail, and SNS gives up on an event after a few retries. As nginx's
``client_header_timeout``, the head of each request (the first, and each next one on a
kept-alive connection) must arrive within :data:`REQUEST_HEAD_SECONDS`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# nginx's client_header_timeout default; a provider sends its head in one packet.
REQUEST_HEAD_SECONDS = 60.0


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools, its ``auto`` choice), closing a connection
    whose next request head has not arrived :data:`REQUEST_HEAD_SECONDS` after the
    connection opened or its last response ended. A request being read or answered is
    never cut by it (its body is the route's to bound)."""

    head_seconds = REQUEST_HEAD_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_overdue)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        # A pipelined request whose head came whole is being answered: leave it.
        busy = self.cycle is not None and not self.cycle.response_complete
        if not busy and not self.pipeline and not self.transport.is_closing():
            self.transport.close()
