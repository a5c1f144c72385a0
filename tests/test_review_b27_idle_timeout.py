"""Redis closing idle connections (its ``timeout`` setting; managed services often set
one): dispatch's asyncio client took a connection the server had closed and failed on
it ("Connection closed by server"), under asyncio's loop and uvloop's (review B27):
redis-py 8's asyncio pool skips its check of a pooled connection while its maintenance
notifications are on ("auto" with RESP3, its default)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from dispatch import store
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings

IDLE_TIMEOUT = 1  # seconds Redis keeps an idle client connection


def test_the_async_client_reconnects_after_redis_closed_its_idle_connection(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("timeout", IDLE_TIMEOUT)
    admin.close()
    monkeypatch.setenv("DISPATCH_REDIS_URL", own_redis.url)
    get_settings.cache_clear()

    async def go() -> list[object]:
        client = store.async_client()
        try:
            answers: list[object] = [await client.set("dispatch:idle", 1)]
            await asyncio.sleep(IDLE_TIMEOUT + 1.5)  # (the server closes it meanwhile)
            answers.append(await client.incr("dispatch:idle"))
            return answers
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [True, 2]  # (the second raised ConnectionError)
