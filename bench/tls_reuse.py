"""What a kept HTTPS connection saves a Generic HTTP batch (dispatch.session_pool).

Sends the same rendered batch of 1000 messages to a local HTTPS server (a throwaway
self-signed certificate) through dispatch's own HTTP session, N times: once with a new
session (connection, TLS handshake) per batch, as every batch did before sessions were
kept, and once over one kept session. Prints the client's CPU per batch for both and
the ratio, measured in the same run (the server runs in another thread; only the
sending thread's CPU is counted). Certificates are not verified (the bench has no CA):
a real provider's chain check costs a little more per handshake.

    .venv/bin/python -m bench.tls_reuse [--batches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.http_e2e import BODY, recipients
from providers.base import OutcomeStatus, OutgoingMessage
from providers.config import parse_provider_config
from providers.http import HttpTransport
from providers.netguard import GuardedTransport


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server(directory: Path) -> ThreadingHTTPServer:
    from tests.smtp_server import self_signed_cert  # the test suite's throwaway certificate

    cert, key = self_signed_cert(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _messages() -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            seq,
            f"{r['email']}|1|c1|20261123|0|default|{seq}|",
            "c1",
            str(r["email"]),
            "Hello",
            "<p>Hello, fresh picks are in.</p>",
            "",
            "deals@acme.example",
            "Acme",
            user_vars=r["vars"],  # type: ignore[arg-type]
        )
        for seq, r in enumerate(recipients(1000))
    ]


async def _run(url: str, batches: int) -> tuple[float, float]:
    config = parse_provider_config(
        {
            "nickname": "tls",
            "kind": "http",
            "endpoint": url,
            "method": "POST",
            "batch": True,
            "batch_size": 1000,
            "body": BODY,
            "from_address": "deals@acme.example",
        }
    )

    def transport() -> HttpTransport:
        guarded = GuardedTransport(
            allow_private=True,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=False,
        )
        return HttpTransport(config, allow_private=True, http_transport=guarded)  # type: ignore[arg-type]

    messages = _messages()
    async with transport().session() as session:
        outcomes = await session.send(messages)
    if any(o.status is not OutcomeStatus.SENT for o in outcomes):
        raise SystemExit(f"the server refused the batch: {outcomes[0]}")
    started = time.thread_time()
    for _ in range(batches):  # a new connection and handshake per batch
        async with transport().session() as session:
            await session.send(messages)
    new = (time.thread_time() - started) / batches
    async with transport().session() as session:
        await session.send(messages)  # connected before the clock
        started = time.thread_time()
        for _ in range(batches):
            await session.send(messages)
        kept = (time.thread_time() - started) / batches
    return new, kept


def _loop() -> asyncio.AbstractEventLoop:
    """The workers' loop (uvloop when installed), for the same per-request costs."""
    from dispatch.runtime import new_loop

    return new_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = _server(Path(directory))
        try:
            url = f"https://127.0.0.1:{server.server_address[1]}/send"
            new, kept = _loop().run_until_complete(_run(url, args.batches))
        finally:
            server.shutdown()
    print(f"Generic HTTP over TLS, batches of 1000, {args.batches} batches each way")
    print(f"  new session per batch    client CPU {new * 1e3:6.2f} ms a batch")
    print(f"  one kept session         client CPU {kept * 1e3:6.2f} ms a batch")
    print(f"  ratio kept / new: {kept / new:.2f}  ({(new - kept) * 1e3:.2f} ms a batch saved)")


if __name__ == "__main__":
    main()
