"""What opening an SMTP session over TLS costs the sender, against aiosmtplib's default.

Opens N sessions with STARTTLS (and N with SMTPS) to a local aiosmtpd server (a
throwaway self-signed certificate, in its own process) and closes each with QUIT: once
with aiosmtplib as a plain user calls it (it builds a TLS context, loading the CA
bundle, for every connection), once through dispatch's SMTP adapter (one context per
process, providers.tls). Prints the client's CPU per session, all threads counted
(aiosmtplib builds its context in a thread), and the ratio, measured in the same run.
Certificates are not verified (the bench has no CA); a check costs the same both ways.

A batch that cannot keep its sessions (dispatch.session_pool) opens up to
``DISPATCH_SESSIONS_PER_WORKER`` of them: eight by default.

    .venv/bin/python -m bench.smtp_tls [--sessions 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiosmtplib

from bench.common import ROOT
from providers.config import SmtpConfig, parse_provider_config
from providers.smtp import SmtpTransport

_SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.smtp_server import SmtpTestServer
server = SmtpTestServer(security={security!r}).start()
print(server.port, flush=True)
time.sleep(3600)
"""


def _start_server(security: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER.format(root=str(ROOT), security=security)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def _cpu_per_call(call: Callable[[], Awaitable[None]], n: int) -> float:
    await call()  # imports and first-use costs before the clock
    started = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - started) / n


async def _measure(security: str, port: int, n: int) -> tuple[float, float]:
    async def library_default() -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            validate_certs=False,
        )
        await client.connect()
        await client.quit()

    config = parse_provider_config(
        {
            "nickname": "tls",
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "security": security,
            "tls_verify": False,
        }
    )
    assert isinstance(config, SmtpConfig)
    transport = SmtpTransport(config)

    async def dispatch_session() -> None:
        async with transport.session():
            pass

    return await _cpu_per_call(library_default, n), await _cpu_per_call(dispatch_session, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    from dispatch.runtime import new_loop  # the workers' loop (uvloop when installed)

    print(f"SMTP sessions over TLS, open and QUIT, {args.sessions} each way")
    for security in ("starttls", "tls"):
        proc, port = _start_server(security)
        try:
            default, dispatch = new_loop().run_until_complete(
                _measure(security, port, args.sessions)
            )
        finally:
            proc.kill()
            proc.wait()
        print(f"  {security:8}  aiosmtplib default  client CPU {default * 1e3:6.2f} ms a session")
        print(f"  {security:8}  dispatch            client CPU {dispatch * 1e3:6.2f} ms a session")
        print(f"  {security:8}  ratio dispatch / default: {dispatch / default:.2f}")


if __name__ == "__main__":
    main()
