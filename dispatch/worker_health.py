"""Is a worker still taking tasks? (``dispatch health``, the compose healthcheck.)

A Celery worker on Redis has been seen to stop consuming after a reconnect while its
process lives on (celery#8030, PITFALLS): a process check says nothing. So each worker's
main process sends itself a small ``dispatch.canary`` task every
``DISPATCH_WORKER_CANARY_SECONDS`` on its own direct queue (``worker_direct``: consumed
with the others, by the same consumer), and the task notes the time in Redis. A worker
whose note is older than a few intervals is not consuming.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import redis

from dispatch import store

log = logging.getLogger(__name__)

STALE_INTERVALS = 4  # notes older than this many intervals: not consuming
KEEP_INTERVALS = 20  # a note outlives a worker killed without its shutdown this long


def note(r: redis.Redis, hostname: str, interval: float) -> None:
    """The canary task ran in worker ``hostname``; workers gone for ``KEEP_INTERVALS``
    leave the index /metrics reads."""
    now = time.time()
    pipe = r.pipeline(transaction=False)
    pipe.set(store.worker_alive_key(hostname), repr(now), ex=int(interval * KEEP_INTERVALS))
    pipe.zadd(store.WORKERS_ZSET, {hostname: now})
    pipe.zremrangebyscore(store.WORKERS_ZSET, "-inf", now - interval * KEEP_INTERVALS)
    pipe.execute()


def forget(r: redis.Redis, hostname: str) -> None:
    """The worker stopped cleanly: no note left to go stale."""
    r.delete(store.worker_alive_key(hostname))
    r.zrem(store.WORKERS_ZSET, hostname)


def start_canary(hostname: str, interval: float) -> threading.Thread:
    """Send the canary task to ``hostname``'s own queue now and every ``interval`` s."""
    from celery.utils.nodenames import worker_direct

    from dispatch.celery_app import app

    def loop() -> None:
        while True:
            try:
                app.send_task("dispatch.canary", (hostname,), queue=worker_direct(hostname).name)
            except Exception:  # the broker is away: the note goes stale, as it should
                log.warning("could not send the worker canary", exc_info=True)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="dispatch-canary", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str


def check(r: redis.Redis, interval: float, host: str | None = None) -> Health:
    """The workers of ``host`` (default: this machine): each took its canary recently."""
    host = host or socket.gethostname()
    now = time.time()
    ages: dict[str, float] = {}
    for key in r.scan_iter(match=store.worker_alive_key(f"*@{host}"), count=1000):
        raw = r.get(key)
        if raw is not None:
            ages[str(key).split(":", 2)[2].rsplit(":", 1)[0]] = now - float(raw)
    if not ages:
        return Health(False, f"no worker of host {host} has taken a task yet")
    limit = interval * STALE_INTERVALS
    stale = {name: age for name, age in ages.items() if age > limit}
    if stale:
        listed = ", ".join(f"{name} {age:.0f} s ago" for name, age in sorted(stale.items()))
        return Health(False, f"not taking tasks (last one {listed}; limit {limit:.0f} s)")
    return Health(True, f"{len(ages)} worker(s) of {host} taking tasks")
