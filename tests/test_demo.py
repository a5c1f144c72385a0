"""``dispatch demo`` as a user runs it: the JSON report, and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from dispatch.progress import ProgressBar


def _demo(tmp_path: Path, *argv: str) -> subprocess.Popen[str]:
    """``dispatch demo`` in its own process group, as a shell runs it in a terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "demo", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "demo.err").open("w"),
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _group_gone(pgid: int, *, kill: bool = True) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    if kill:
        os.killpg(pgid, signal.SIGKILL)  # never leave it running
    return False


def test_the_json_report_holds_the_whole_report(tmp_path: Path) -> None:
    """DESIGN §8: ``--json`` prints the report as one JSON object: the campaigns, what
    the replayed callbacks did to their counters, and the sinks' checks."""
    demo = _demo(tmp_path, "--json", "--recipients", "20", "--concurrency", "1")
    try:
        out, _ = demo.communicate(timeout=300)
    finally:
        gone = _group_gone(demo.pid)
    err = (tmp_path / "demo.err").read_text()
    assert (demo.returncode, gone) == (0, True), err
    report = json.loads(out)
    assert report["ok"] is True and "Traceback" not in err
    assert [c["provider"] for c in report["campaigns"]] == ["demo-smtp", "demo-http"]
    for campaign in report["campaigns"]:
        assert campaign["sent"] == campaign["total"] == 20
        callbacks = campaign["callbacks"]
        assert callbacks["ok"] is True and callbacks["counters"]["delivered"] > 0
        assert callbacks["counters"]["delivered"] == callbacks["posted"]["delivered"]
    assert [c["ok"] for c in report["checks"]] == [True, True]


def test_ctrl_c_stops_the_demo_and_all_it_started(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--recipients", "20000", "--concurrency", "1")
    log = tmp_path / "demo.err"
    try:
        deadline = time.monotonic() + 120
        while "demo-smtp [" not in log.read_text():  # sending: worker, API, sinks all up
            assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        demo.communicate(timeout=120)
    finally:
        gone = _group_gone(demo.pid)
    err = log.read_text()
    assert (demo.returncode, gone) == (130, True), err
    assert "Traceback" not in err and err.rstrip().endswith("interrupted")


def test_sigterm_stops_the_demo_and_its_embedded_redis(tmp_path: Path) -> None:
    """``timeout 60 dispatch demo`` (or a supervisor's stop) sends SIGTERM to the group:
    the embedded Redis, in a session of its own so that Ctrl-C spares it, must not be
    left running once the demo has gone."""
    demo = _demo(tmp_path, "--recipients", "20000", "--concurrency", "1")
    log = tmp_path / "demo.err"
    try:
        deadline = time.monotonic() + 120
        while "demo-smtp [" not in log.read_text():
            assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = re.search(r'started embedded Redis at (redis://[^\s"]+)', log.read_text())
        assert url is not None, log.read_text()
        os.killpg(demo.pid, signal.SIGTERM)
        demo.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _group_gone(demo.pid, kill=False):
            time.sleep(0.2)
    finally:
        gone = _group_gone(demo.pid)
    err = log.read_text()
    assert gone and demo.returncode != 0, err
    assert "Traceback" not in err, err
    client = redis.Redis.from_url(url.group(1), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pass
    else:
        client.shutdown(nosave=True)  # never leave it running
        raise AssertionError(f"the demo's Redis at {url.group(1)} outlived it")


def test_progress_counts_its_rate_from_when_it_is_shown() -> None:
    """``status --follow`` on a campaign already 90 % done: 0/s at first, not 900
    messages over the few microseconds since the bar was made."""
    stream = io.StringIO()
    ProgressBar("c", stream=stream).update(900, 1000)
    assert " 0/s" in stream.getvalue(), stream.getvalue()
