"""A worker asked to stop while its Redis answers nothing (frozen, a failover, a dropped
NAT entry: the connection stays open) stops with what it could do instead of waiting on
the broker until its supervisor's kill: kombu's commands wait forever without a socket
timeout (review X12)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis

from dispatch import store
from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, wait_for


def test_a_worker_whose_redis_freezes_stops_all_the_same(tmp_path: Path) -> None:
    """And once Redis has not answered one call of the stop, the later ones are not made
    (each cost 5-36 s of timeouts and redis-py's retries: about 70 s in all, past
    compose's 60 s grace)."""
    log = tmp_path / "worker.log"
    # In a session of its own: stopped in the tests' process group, it made the kernel
    # send that group SIGHUP and SIGCONT whenever the group was orphaned meanwhile (POSIX;
    # e.g. the shell that started the run exiting): Redis ran again and Celery's SIGHUP
    # handler re-executed the worker, which forgot the SIGTERM and ran on (this test's
    # rare "did not stop within 300 s").
    server = RedisServer(own_session=True).start()
    worker = WorkerProcess(
        server.url, concurrency=1, log_path=str(log), DISPATCH_WORKER_CANARY_SECONDS="0.5"
    )
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert server.pid is not None
    try:
        worker.start()
        wait_for(lambda: r.zcard(store.WORKERS_ZSET) > 0, timeout=120)
        os.kill(server.pid, signal.SIGSTOP)
        assert worker.proc is not None
        worker.proc.terminate()
        try:  # (it waited forever: the supervisor's kill, 11 minutes in compose)
            assert worker.proc.wait(timeout=300) == 0
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("the worker did not stop while Redis was frozen") from exc
    finally:
        os.kill(server.pid, signal.SIGCONT)
        worker.stop()
        r.close()
        server.stop()
    logged = log.read_text()
    assert "could not tell the running batches to stop" in logged, logged
    assert "left the direct queue" in logged and "Redis did not answer" in logged, logged
