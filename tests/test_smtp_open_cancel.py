"""An SMTP opening cancelled half-way (a batch run's deadline cuts it) closes its
connection at once: it was left to the garbage collector, the server's connection
open meanwhile (one of its limited connections, and a client socket of ours)."""

from __future__ import annotations

import asyncio
import gc
import time

from providers.config import SmtpConfig
from providers.smtp import SmtpTransport
from tests.smtp_server import SmtpTestServer
from tests.test_review_b13_deadline import LateEhloHandler


def test_an_opening_cancelled_at_its_ehlo_closes_its_connection() -> None:
    server = SmtpTestServer()
    handler = server.handler = LateEhloHandler(ehlo_delays=[30.0])
    with server:
        config = SmtpConfig(
            nickname="slow", host="127.0.0.1", port=server.port, security="none",
            from_address="deals@acme.example", timeout=60.0,
        )  # fmt: skip

        async def cut() -> None:
            transport = SmtpTransport(config)
            opening = asyncio.ensure_future(transport.open_wire())
            while handler.active == 0:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # (in its EHLO now)
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            gc.disable()  # (what the fix must not rely on)
            try:
                give_up = time.monotonic() + 5
                while handler.active and time.monotonic() < give_up:
                    await asyncio.sleep(0.05)
            finally:
                gc.enable()

        asyncio.run(cut())
        assert (handler.connections, handler.active) == (1, 0)
