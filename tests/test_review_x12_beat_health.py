"""Beat's compose healthcheck (``dispatch health --beat``): beat answers a ping while its
scheduler ticks; the check is the one the compose file runs, run for real (review X12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from dispatch.redis_server import RedisServer
from tests.worker import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _beat_check() -> list[str]:
    """The compose file's beat healthcheck, valid against the Compose specification."""
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    kind, program, *args = compose["services"]["beat"]["healthcheck"]["test"]
    assert (kind, program) == ("CMD", "dispatch")
    return [sys.executable, "-m", "dispatch.cli", *args]


def test_the_beat_healthcheck_passes_while_beat_runs_and_fails_once_it_stops(
    tmp_path: Path,
) -> None:
    check = _beat_check()
    server = RedisServer().start()
    # TMPDIR: beat's schedule file goes under this test's folder.
    env = {**os.environ, "DISPATCH_REDIS_URL": server.url, "TMPDIR": str(tmp_path)}
    beat = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "beat", "--loglevel", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)

    try:
        wait_for(lambda: run().returncode == 0, timeout=120, interval=1)
        beat.terminate()
        assert beat.wait(timeout=60) == 0
        stopped = run()
        assert stopped.returncode == 1
        assert "celerybeat@" in stopped.stderr and "did not answer" in stopped.stderr
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()
        server.stop()
