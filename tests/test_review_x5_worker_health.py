"""`dispatch health` and /metrics after a worker was killed without its shutdown
(``kill -9``, out of memory): the worker started in its place is not reported unhealthy
for the dead one's note (review X5)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import redis
from prometheus_client.parser import text_string_to_metric_families

from dispatch import store, worker_health
from tests.api_server import ApiServer

INTERVAL = 30.0  # the default canary interval: a dead note stays 10 minutes


def _stale_note(r: redis.Redis, name: str) -> None:
    """The note a worker left when it was killed a few canary intervals ago."""
    at = time.time() - INTERVAL * (worker_health.STALE_INTERVALS + 1)
    r.set(store.worker_alive_key(name), repr(at), ex=int(INTERVAL * worker_health.KEEP_INTERVALS))
    r.zadd(store.WORKERS_ZSET, {name: at})


def _dead_pid() -> int:
    """The process id of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_worker_of_this_machine_does_not_fail_the_health_of_its_replacement(
    redis_client: redis.Redis,
) -> None:
    host = socket.gethostname()
    dead = f"dispatch-{_dead_pid()}-aaaaaa@{host}"
    _stale_note(redis_client, dead)
    worker_health.note(redis_client, f"dispatch-{os.getpid()}-bbbbbb@{host}", INTERVAL)

    health = worker_health.check(redis_client, INTERVAL)
    assert health.ok, health.message
    assert health.message == f"1 worker(s) of {host} taking tasks"


def test_a_stuck_worker_whose_process_lives_is_still_unhealthy(redis_client: redis.Redis) -> None:
    """The process is there (celery#8030: it stopped consuming): that is what health is
    for, whatever else runs."""
    host = socket.gethostname()
    _stale_note(redis_client, f"dispatch-{os.getpid()}-aaaaaa@{host}")
    worker_health.note(redis_client, f"dispatch-{os.getppid()}-bbbbbb@{host}", INTERVAL)

    health = worker_health.check(redis_client, INTERVAL)
    assert not health.ok
    assert health.message.startswith(f"not taking tasks (last one dispatch-{os.getpid()}-aaaaaa")


def test_only_dead_workers_left_says_so(redis_client: redis.Redis) -> None:
    host = socket.gethostname()
    dead = f"dispatch-{_dead_pid()}-aaaaaa@{host}"
    _stale_note(redis_client, dead)

    health = worker_health.check(redis_client, INTERVAL)
    assert not health.ok
    assert health.message == (
        f"no worker of host {host} has taken a task yet ({dead} ended without its shutdown)"
    )


def test_a_worker_restarted_with_the_same_process_id_forgets_its_predecessor(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A container's ``dispatch worker`` is its PID 1 again after a restart: the note of
    the one killed before it is forgotten at start, so neither ``dispatch health`` nor
    ``dispatch_workers_not_consuming`` reports a worker that no longer exists."""
    host = "c0ffee"  # the container's host name, kept across its restarts
    killed, other_pid, other_host = (
        f"dispatch-1-aaaaaa@{host}",
        f"dispatch-7-cccccc@{host}",
        "dispatch-1-dddddd@elsewhere",
    )
    for name in (killed, other_pid, other_host):
        _stale_note(redis_client, name)
    replacement = f"dispatch-1-bbbbbb@{host}"

    assert worker_health.forget_predecessors(redis_client, replacement) == [killed]
    worker_health.note(redis_client, replacement, INTERVAL)

    left = set(redis_client.zrange(store.WORKERS_ZSET, 0, -1))
    assert left == {replacement, other_pid, other_host}
    assert redis_client.get(store.worker_alive_key(killed)) is None
    assert worker_health.check(redis_client, INTERVAL, host="elsewhere").ok is False
    with api_server.client() as http:
        text = http.get("/metrics").text
    (not_consuming,) = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dispatch_workers_not_consuming"
    ]
    assert not_consuming == 2  # the other two
    assert f'worker="{killed}"' not in text


def test_a_node_name_of_its_own_forgets_nothing(redis_client: redis.Redis) -> None:
    _stale_note(redis_client, "dispatch-1-aaaaaa@h")
    assert worker_health.forget_predecessors(redis_client, "mine@h") == []
    assert redis_client.zcard(store.WORKERS_ZSET) == 1


def _scans(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_health_reads_the_workers_index_not_the_keyspace(redis_client: redis.Redis) -> None:
    """A healthcheck runs every minute in each worker container: it must not SCAN a
    keyspace of millions of keys (0.8 s of Redis with 1.2 million)."""
    host = socket.gethostname()
    worker_health.note(redis_client, f"dispatch-{os.getpid()}-bbbbbb@{host}", INTERVAL)
    worker_health.note(redis_client, f"dispatch-{os.getpid()}-cccccc@other", INTERVAL)
    redis_client.zadd(store.WORKERS_ZSET, {f"dispatch-1-dddddd@{host}": 1.0})  # long gone
    before = _scans(redis_client)

    health = worker_health.check(redis_client, INTERVAL)

    assert _scans(redis_client) == before
    assert health.ok and health.message == f"1 worker(s) of {host} taking tasks"
