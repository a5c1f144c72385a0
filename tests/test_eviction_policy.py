"""An evicting Redis could drop ledger records and send twice: the API and the workers
say so when they start (README, Operations: Redis memory)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dispatch import store, tasks
from dispatch.redis_server import RedisServer
from tests.api_server import ApiServer


@pytest.fixture
def lru(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The session's Redis with an evicting policy, for the length of a test."""
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield redis_client
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
def test_every_evicting_policy_is_a_problem_that_names_itself(
    redis_client: redis.Redis, policy: str
) -> None:
    assert store.eviction_problem(redis_client) is None  # Redis's default: noeviction
    redis_client.config_set("maxmemory-policy", policy)
    try:
        problem = store.eviction_problem(redis_client)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    assert problem is not None and policy in problem and "noeviction" in problem


def test_a_redis_that_refuses_config_and_info_is_not_reported() -> None:
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.execute_command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        client.acl_setuser(
            "default", enabled=True, nopass=True, commands=["+@all", "-config", "-info"],
            keys=["*"],
        )  # fmt: skip
        assert store.eviction_problem(client) is None  # cannot tell
    finally:
        server.stop()


def test_the_api_warns_at_start(lru: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    server = ApiServer().start()
    server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dispatch.api.app"]
    assert any("allkeys-lru" in w for w in warnings), caplog.text


def test_the_worker_warns_when_ready(lru: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    from celery.signals import worker_ready

    assert any(
        getattr(receiver(), "__name__", "") == "_warn_about_redis"
        for _, receiver in worker_ready.receivers
    )
    tasks._warn_about_redis()
    assert any("allkeys-lru" in r.getMessage() for r in caplog.records if r.name == tasks.log.name)
