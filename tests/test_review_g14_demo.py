"""Review G14: ``dispatch demo`` whose worker exited (it could not start, or died) waited
five minutes for each of its two campaigns, the progress bar standing at 0, and said
why only in its report at the end (after the callbacks' wait too). It stops as soon as
the worker is gone, naming its exit code and its log."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dispatch import cli, demo, store
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings


def _exits_at_once(concurrency: int) -> subprocess.Popen[bytes]:
    """A worker that exits at once, as one that cannot start does."""
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_the_demo_stops_when_its_worker_exits(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Redis of its own: the session's worker, on the session's Redis, took the demo's
    # campaigns (the demo then went on to its callbacks, and failed at them).
    monkeypatch.setenv("DISPATCH_REDIS_URL", own_redis.url)
    get_settings.cache_clear()
    store.reset_clients()
    monkeypatch.setattr(demo, "_start_worker", _exits_at_once)
    monkeypatch.setattr(demo, "TIMEOUT_SECONDS", 5.0)  # (the old code's wait: a bound)
    monkeypatch.setenv("DISPATCH_PUBLIC_URL", "http://127.0.0.1:1")  # (the demo sets it)
    # (SIGTERM is the test's as before: cmd_demo sets its handler)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    assert cli.main(["demo", "--recipients", "5", "--json"]) == 1
    err = capsys.readouterr().err
    store.reset_clients()
    assert "error: the demo's worker exited (code 3)" in err and str(demo.WORKER_LOG) in err
