"""Local servers for the demo: an SMTP sink that records what it receives."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SmtpSinkHandler:
    """Keeps every message's envelope and bytes (thread-safe)."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 OK queued"


class SmtpSink:
    """An SMTP server on 127.0.0.1 that accepts and records everything."""

    def __init__(self) -> None:
        self.handler = SmtpSinkHandler()
        self.port = free_port()
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, data_size_limit=0
        )

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[tuple[str, list[str], bytes]]:
        with self.handler.lock:
            return list(self.handler.messages)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
