"""A worker that starts forgets the note and removes the direct queue of the worker killed
before it with the same process id on the same host, but not those of a live worker that
shares both (containers on the host's network, each its PID 1; ``--hostname`` given
twice): it answers a ping (review X12)."""

from __future__ import annotations

import subprocess
import sys

import redis
from celery.utils.nodenames import worker_direct

from dispatch import store
from dispatch.celery_app import app
from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, wait_for

BINDINGS = ("_kombu.binding.C.dq2", "_kombu.binding_permanent.C.dq2")


class NamedWorker(WorkerProcess):
    """``dispatch worker --hostname NAME``."""

    def __init__(self, redis_url: str, name: str, **env: str) -> None:
        super().__init__(redis_url, concurrency=1, **env)
        self.name = name

    def start(self) -> NamedWorker:
        cmd = [sys.executable, "-m", "dispatch.cli", "worker", "--loglevel", "WARNING"]
        cmd += ["--concurrency", "1", "--hostname", self.name]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL)
        return self


def _noted(r: redis.Redis, name: str) -> float | None:
    return r.zscore(store.WORKERS_ZSET, name)


def _bound(r: redis.Redis, name: str) -> bool:
    return any(m.startswith(f"{name}\x06\x16") for key in BINDINGS for m in r.smembers(key))


def test_a_worker_leaves_the_queue_and_note_of_a_live_worker_of_its_pid_and_host(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    host = "x12-host-network"
    first, second = f"dispatch-1-aaaaaa@{host}", f"dispatch-1-bbbbbb@{host}"
    # One canary each, at start: nothing declares a dropped queue again during the test.
    env = {"DISPATCH_WORKER_CANARY_SECONDS": "3600"}
    live = NamedWorker(redis_server.url, first, **env).start()
    starting = NamedWorker(redis_server.url, second, **env)
    try:
        wait_for(lambda: _noted(redis_client, first) is not None, timeout=120)
        starting.start()
        wait_for(lambda: _noted(redis_client, second) is not None, timeout=120)

        seen = _noted(redis_client, first)
        assert seen is not None and _bound(redis_client, first)
        # Still reachable on its own queue: a task sent there is taken.
        app.send_task("dispatch.canary", (first,), queue=worker_direct(first).name)
        wait_for(lambda: (_noted(redis_client, first) or 0) > seen, timeout=60)
    finally:
        live.stop()
        starting.stop()
    assert live.proc is not None and live.proc.returncode == 0
    assert not _bound(redis_client, first) and not _bound(redis_client, second)
