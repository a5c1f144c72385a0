"""`dispatch health`: a worker that stops taking tasks (celery#8030) is found out by the
canary it sends itself, not by its process still being there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis

from dispatch import store
from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, wait_for

CANARY = {"DISPATCH_WORKER_CANARY_SECONDS": "0.5"}


def health(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCH_REDIS_URL": url, **CANARY}
    return subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_that_stops_taking_tasks_is_unhealthy_and_one_that_stops_leaves_no_note() -> None:
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    worker = WorkerProcess(server.url, concurrency=1, own_session=True, **CANARY)
    try:
        before = health(server.url)
        assert before.returncode == 1 and "has taken a task yet" in before.stderr

        worker.start()
        wait_for(lambda: health(server.url).returncode == 0, timeout=60, interval=0.5)
        assert "1 worker(s)" in health(server.url).stdout

        # Frozen: its process is there, its consumer takes nothing.
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: health(server.url).returncode == 1, timeout=60, interval=0.5)
            assert "not taking tasks" in health(server.url).stderr
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        wait_for(lambda: health(server.url).returncode == 0, timeout=60, interval=0.5)

        worker.stop()  # a clean stop takes its note away
        assert list(r.scan_iter(match=store.worker_alive_key("*"))) == []
    finally:
        worker.stop()
        r.close()
        server.stop()
