"""A worker's direct queue (``worker_direct``, where its canary arrives) leaves Redis with
it: each ``dispatch worker`` has a node name of its own, and every worker ever started
left its queue, the canaries waiting there and two binding entries (review E11)."""

from __future__ import annotations

import os
import socket

import redis
from celery.utils.nodenames import worker_direct

from dispatch import store, worker_health
from dispatch.celery_app import app
from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, wait_for

BINDINGS = ("_kombu.binding.C.dq2", "_kombu.binding_permanent.C.dq2")


def _bound(r: redis.Redis) -> set[str]:
    """The node names with a direct queue bound."""
    return {str(m).split("\x06\x16")[0] for key in BINDINGS for m in r.smembers(key)}


def _waiting(r: redis.Redis, name: str) -> int:
    """Tasks waiting in ``name``'s direct queue (every priority's list)."""
    return sum(int(r.llen(key)) for key in store.queue_keys(worker_direct(name).name))


def _canary_to(name: str) -> None:
    """A canary sent to ``name``'s direct queue, as its worker sends them."""
    app.send_task("dispatch.canary", (name,), queue=worker_direct(name))


def test_a_worker_that_stops_takes_its_direct_queue_with_it(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    before = _bound(redis_client)
    worker = WorkerProcess(
        redis_server.url, concurrency=1, DISPATCH_WORKER_CANARY_SECONDS="0.5"
    ).start()
    try:
        wait_for(lambda: bool(_bound(redis_client) - before), timeout=120)
        (name,) = _bound(redis_client) - before
        wait_for(lambda: redis_client.zscore(store.WORKERS_ZSET, name) is not None, timeout=60)
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0
    assert name not in _bound(redis_client)
    assert _waiting(redis_client, name) == 0


def test_a_worker_that_starts_removes_the_queue_of_the_one_killed_before_it(
    redis_client: redis.Redis,
) -> None:
    """A container's worker is its PID 1 again after a restart: the queue of the one
    killed before it (same process id, same host) goes, another worker's stays."""
    host = socket.gethostname()
    killed = f"dispatch-{os.getpid()}-aaaaaa@{host}"
    other = f"dispatch-{os.getpid() + 1}-cccccc@{host}"
    for name in (killed, other):
        _canary_to(name)  # never taken: its worker is gone (or busy)
        assert name in _bound(redis_client) and _waiting(redis_client, name) == 1
    mine = f"dispatch-{os.getpid()}-bbbbbb@{host}"
    app.amqp.queues.select_add(worker_direct(mine))  # as its worker does at start

    worker_health.start_canary(mine, 3600)
    wait_for(lambda: _waiting(redis_client, mine) == 1)
    assert killed not in _bound(redis_client) and _waiting(redis_client, killed) == 0
    assert other in _bound(redis_client) and _waiting(redis_client, other) == 1

    worker_health.retire(mine)  # as its shutdown does
    assert mine not in _bound(redis_client) and _waiting(redis_client, mine) == 0
    assert other in _bound(redis_client)
    worker_health.drop_direct_queues(lambda name: name == other)
    assert other not in _bound(redis_client) and _waiting(redis_client, other) == 0
