"""One asyncio event loop per worker process, with its own Redis client and sessions.

Tasks are synchronous (Celery prefork); they run their coroutine on this loop so that
clients and connection pools live as long as the process, not one task. Provider
sessions a batch leaves behind (dispatch.session_pool) are closed after their idle time
even when no task follows: a thread runs the loop for that between tasks (the loop
runs in one thread at a time, under a lock).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis

from dispatch import faults, store
from dispatch.session_pool import SessionPool
from dispatch.settings import get_settings

T = TypeVar("T")
log = logging.getLogger(__name__)
CLOSE_RETRY_SECONDS = 5.0  # after a failed close of idle sessions, the next try
_loop: asyncio.AbstractEventLoop | None = None
_client: aioredis.Redis | None = None
_pool: SessionPool | None = None
_lock = threading.Lock()  # whoever runs the loop holds it
_wake = threading.Condition()  # guards _close_at; wakes the closer thread
_close_at: float | None = None  # (monotonic) when kept sessions are due to close
_closer_pid = 0  # the process whose closer thread runs


def _forked() -> None:
    global _wake, _close_at
    _wake, _close_at = threading.Condition(), None  # the parent's lock may have been held


os.register_at_fork(after_in_child=_forked)


def run(factory: Callable[[aioredis.Redis], Coroutine[Any, Any, T]]) -> T:
    """Run ``factory(redis_client)`` to completion on this process's loop."""
    global _loop, _client, _pool
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = new_loop()
            _client = None
            _pool = SessionPool(get_settings().session_idle_seconds)
        if _client is None:
            _client = store.async_client()
        try:
            return _loop.run_until_complete(factory(_client))
        finally:
            _schedule_close()


def session_pool() -> SessionPool:
    """This process's kept provider sessions (call from a coroutine that :func:`run`
    runs: they belong to its loop)."""
    assert _pool is not None, "session_pool() outside runtime.run"
    return _pool


def _schedule_close() -> None:
    """Close the sessions left idle once they are due, unless a task comes first (it
    takes them or closes them itself). One thread per process waits for that: a thread
    started for every task cost a worker about 5 % of its CPU."""
    global _close_at, _closer_pid
    due = _pool.next_expiry() if _pool is not None else None
    at = None if due is None else time.monotonic() + due + 0.05
    with _wake:
        sooner = at is not None and (_close_at is None or at < _close_at)
        _close_at = at
        if _closer_pid != os.getpid():  # threads do not survive a fork
            _closer_pid = os.getpid()
            threading.Thread(target=_closer, name="dispatch-session-closer", daemon=True).start()
        elif sooner:
            _wake.notify()


def _closer() -> None:
    global _close_at
    while True:
        with _wake:
            while True:
                at = _close_at
                if at is not None and at <= time.monotonic():
                    break
                _wake.wait(None if at is None else at - time.monotonic())
            _close_at = None
        try:
            _close_idle()
        except (Exception, asyncio.CancelledError):
            # A close that failed (a bug) ended this thread, its traceback on stderr: no
            # idle session of the process was closed again between tasks, each kept its
            # connection open after its parked slot expired (past max_connections).
            log.exception(
                "closing idle provider sessions failed; trying again in %g s", CLOSE_RETRY_SECONDS
            )
            with _wake:  # (unless a task's end schedules it sooner or later meanwhile)
                if _close_at is None:
                    _close_at = time.monotonic() + CLOSE_RETRY_SECONDS
            faults.count_sync(None, "error", faults.IDLE_CLOSER)


def _close_idle() -> None:
    if not _lock.acquire(blocking=False):
        return  # a task runs the loop: it reschedules when it ends
    try:
        if _loop is not None and not _loop.is_closed() and _pool is not None:
            _loop.run_until_complete(_pool.close_idle())
            _schedule_close()
    finally:
        _lock.release()


def shutdown() -> None:
    """Close the kept sessions (QUIT, slots given back) as the process ends."""
    global _close_at
    with _wake:
        _close_at = None
    if not _lock.acquire(timeout=5):  # the loop is busy (never expected at exit): leave
        return  # the sockets to the process's end and the slots to their expiry
    try:
        if _loop is not None and not _loop.is_closed() and _pool is not None:
            _loop.run_until_complete(_pool.close_all())
    finally:
        _lock.release()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (it comes with uvicorn[standard]): its sockets,
    transports and scheduling are C; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
