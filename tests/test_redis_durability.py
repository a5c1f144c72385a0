"""A Redis without an append-only file is warned about at start (review E23): Debian's
default redis.conf only snapshots, and a SIGKILL there left no trace of a campaign 740
sends in, so posting it again would send to everyone again. The embedded Redis of
``dispatch up`` and the demo keeps nothing by design and is not warned about."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from dispatch import store, tasks
from dispatch.redis_server import RedisServer, _free_port, find_redis_server


@pytest.fixture
def packaged(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis as a distribution's redis.conf runs it: a folder of its own, no AOF."""
    with packaged_redis(tmp_path) as client:
        yield client


@contextmanager
def packaged_redis(folder: Path) -> Iterator[redis.Redis]:
    """The Redis of :func:`packaged`, in ``folder``."""
    port = _free_port()
    command = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--dir", str(folder), "--appendonly", "no", "--save", "3600 1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "no redis-server"
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.kill()  # (a clean shutdown waits for the AOF a test turned on)
        proc.wait(10)


def test_a_redis_without_aof_is_a_problem(packaged: redis.Redis) -> None:
    problem = store.durability_problem(packaged)
    assert problem is not None and "appendonly yes" in problem


def test_the_same_redis_with_aof_is_not(packaged: redis.Redis) -> None:
    packaged.config_set("appendonly", "yes")
    assert store.durability_problem(packaged) is None


def test_a_managed_redis_refusing_config_without_aof_is_a_problem(
    packaged: redis.Redis,
) -> None:
    packaged.acl_setuser(
        "default", enabled=True, nopass=True, commands=["+@all", "-config"], keys=["*"]
    )
    assert store.durability_problem(packaged) is not None


def test_the_embedded_redis_is_not_a_problem() -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert client.info("persistence")["aof_enabled"] == 0  # it keeps nothing...
        assert store.durability_problem(client) is None  # ...by design
    finally:
        client.close()
        server.stop()


def test_the_worker_warns_at_start(
    packaged: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store, "sync_client", lambda: packaged)
    tasks._warn_about_redis()
    warned = [r.getMessage() for r in caplog.records if r.name == tasks.log.name]
    assert any("append-only file" in w for w in warned), caplog.text
