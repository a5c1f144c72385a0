"""``dispatch health --beat`` (beat's compose healthcheck) while its Redis is away says so
and exits 1, as ``dispatch health`` does for the workers: it printed kombu's traceback
(review C13)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed again on return: nothing listens there


def test_the_beat_check_names_an_unreachable_redis_without_a_traceback() -> None:
    port = _closed_port()
    env = {**os.environ, "DISPATCH_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    done = subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "health", "--beat"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "celerybeat@" in done.stderr and "Redis does not answer" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
