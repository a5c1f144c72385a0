"""Review J24: a provider that goes away while sending a callback's body (its own timeout,
a dropped connection) over the real API served by uvicorn."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from tests.api_server import ApiServer


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    """What uvicorn (its 'Exception in ASGI application') and the callback routes log."""
    handler = _Records()
    loggers = [logging.getLogger("uvicorn.error"), logging.getLogger("dispatch.api.callbacks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_provider_gone_mid_body_is_no_server_error(
    api_server: ApiServer, paths: dict[str, str], records: _Records
) -> None:
    """It was an ERROR 'Exception in ASGI application' with an 80-line ClientDisconnect
    traceback for each such request (300 slow senders cut: 25,000 lines); it is now one
    INFO line naming the provider (nothing was stored, the provider sends it again)."""
    with socket.create_connection(("127.0.0.1", api_server.port)) as conn:
        head = f"POST {paths['gen']} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head.encode() + b"1\r\n[\r\n")  # and no last chunk
    deadline = time.monotonic() + 10
    while not records.records and time.monotonic() < deadline:
        time.sleep(0.05)
    assert records.records, "nothing logged about the request"
    assert [r.levelname for r in records.records] == ["INFO"], [
        r.getMessage() for r in records.records
    ]
    message = records.records[0].getMessage()
    assert message == "callback for gen: the provider went away mid-body; nothing stored"
