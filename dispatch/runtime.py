"""One asyncio event loop per worker process, with its own Redis client.

Tasks are synchronous (Celery prefork); they run their coroutine on this loop so that
clients and connection pools live as long as the process, not one task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis

from dispatch import store

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_client: aioredis.Redis | None = None


def run(factory: Callable[[aioredis.Redis], Coroutine[Any, Any, T]]) -> T:
    """Run ``factory(redis_client)`` to completion on this process's loop."""
    global _loop, _client
    if _loop is None or _loop.is_closed():
        _loop = _new_loop()
        _client = None
    if _client is None:
        _client = store.async_client()
    return _loop.run_until_complete(factory(_client))


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (it comes with uvicorn[standard]): its sockets,
    transports and scheduling are C; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
