"""Review L22: the canary thread of a worker's main process outlives a failed check of
its pool (J22's busy note).

The check reads Celery's set of running tasks (``worker_state.active_requests``, a
WeakSet) from the canary thread while the main thread adds and discards tasks: the
copy then raises "RuntimeError: Set changed size during iteration" (about once in
30,000 reads with a thread churning the set, measured here). It was not caught, the
thread ended, no canary was sent again, and the worker was told not consuming
(``dispatch health`` failing, ``DispatchWorkerNotConsuming``) until it restarted.
"""

from __future__ import annotations

import os
import socket

import redis

from dispatch import store, worker_health
from tests.worker import wait_for


def test_the_canary_goes_on_after_the_pool_check_fails(redis_client: redis.Redis) -> None:
    name = f"dispatch-{os.getpid()}-l22l22@{socket.gethostname()}"
    checks: list[int] = []

    def busy() -> bool:
        checks.append(1)
        if len(checks) == 1:
            raise RuntimeError("Set changed size during iteration")
        return True  # every process runs a task: the main process notes the canary

    worker_health.start_canary(name, 0.05, busy)
    try:
        wait_for(lambda: redis_client.exists(store.worker_alive_key(name)) == 1, timeout=10)
    finally:
        worker_health.retire(name)
        worker_health.forget(redis_client, name)
    assert len(checks) >= 2  # (the thread ended at the first)
