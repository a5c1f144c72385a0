"""The eviction policy of a Redis that refuses CONFIG, as the managed services do (review
e23): INFO tells it, and their default, volatile-lru, evicts leases, dedupe keys, paces
and quotas. The check read CONFIG alone, so the API and the workers started there without
a word."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dispatch import store, tasks
from dispatch.redis_server import RedisServer


@pytest.fixture
def managed() -> Iterator[redis.Redis]:
    """A Redis as ElastiCache, Memorystore or Azure Cache run one: volatile-lru, and
    CONFIG refused to the service's user."""
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        client.config_set("maxmemory-policy", "volatile-lru")
        client.acl_setuser(
            "default", enabled=True, nopass=True, commands=["+@all", "-config"], keys=["*"]
        )
        with pytest.raises(redis.ResponseError):
            client.config_get("maxmemory-policy")
        yield client
    finally:
        client.close()
        server.stop()


def test_a_redis_that_refuses_config_is_checked_by_info(managed: redis.Redis) -> None:
    problem = store.eviction_problem(managed)
    assert problem is not None and "volatile-lru" in problem and "noeviction" in problem


def test_the_worker_warns_about_it(
    managed: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store, "sync_client", lambda: managed)
    tasks._warn_about_redis()
    warned = [r.getMessage() for r in caplog.records if r.name == tasks.log.name]
    assert any("volatile-lru" in w for w in warned), caplog.text


def test_a_noeviction_redis_that_refuses_config_is_no_problem(managed: redis.Redis) -> None:
    managed.acl_setuser("default", commands=["+config"])
    managed.config_set("maxmemory-policy", "noeviction")
    managed.acl_setuser("default", commands=["-config"])
    assert store.eviction_problem(managed) is None
