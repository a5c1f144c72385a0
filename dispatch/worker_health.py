"""Is a worker still taking tasks? (``dispatch health``, the compose healthcheck.)

A Celery worker on Redis has been seen to stop consuming after a reconnect while its
process lives on (celery#8030, PITFALLS): a process check says nothing. So each worker's
main process sends itself a small ``dispatch.canary`` task every
``DISPATCH_WORKER_CANARY_SECONDS`` on its own direct queue (``worker_direct``: consumed
with the others, by the same consumer), and the task notes the time in Redis. A worker
whose note is older than a few intervals is not consuming.

The canary runs in a pool process, so it waits while every process runs a task: a batch
at a provider's pace runs for minutes (up to the task time limit), and a worker busy
sending would be reported as not consuming (``dispatch health`` failing, the
``DispatchWorkerNotConsuming`` alert) for as long as its campaign lasts. While every
process of its pool runs a task, the main process notes the time itself: the worker is
taking tasks, it has no room for more. One whose consumer stopped goes stale once its
tasks end (each ends within the task time limit).

A worker killed without its shutdown (``kill -9``, out of memory) leaves a note that goes
stale while nothing runs under its name: the worker started in its place on the same host
with the same process id (a container's restarted ``dispatch worker`` is its PID 1 again)
forgets it unless it answers a ping (a live namesake: containers on the host's network),
and ``dispatch health`` leaves out the notes of this machine's workers whose
process is gone, so that a healthy replacement is not reported unhealthy for
``KEEP_INTERVALS``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from dispatch import store

log = logging.getLogger(__name__)

STALE_INTERVALS = 4  # notes older than this many intervals: not consuming
KEEP_INTERVALS = 20  # a note outlives a worker killed without its shutdown this long
# The node name ``dispatch worker`` gives by default: dispatch-<pid>-<random>@<host>.
_NODE_NAME = re.compile(r"dispatch-(\d+)-[0-9a-f]+@(.+)")


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


def forget_predecessors(r: redis.Redis, hostname: str) -> list[str]:
    """Forget the notes, and remove the direct queues (:func:`drop_direct_queues`), of
    the workers that ran on ``hostname``'s host with its process id under another name
    and answer no ping: killed without their shutdown. (Two live workers can share both:
    containers on the host's network, each its PID 1, or ``--hostname`` given twice; the
    one that answers keeps its note and its queue.) Returns the names of those gone."""
    noted = {str(name) for name in r.zrange(store.WORKERS_ZSET, 0, -1)}
    namesakes = {
        name
        for name in noted | direct_queue_names()
        if name != hostname and _same_process(name, hostname)
    }
    gone = sorted(namesakes - answering(namesakes))
    for name in gone:
        forget(r, name)
    drop_direct_queues(lambda name: name in gone)
    return gone


# How long a starting worker waits for its namesakes to answer a ping (a live worker's
# consumer answers within milliseconds; a killed one never does).
PING_SECONDS = 1.0


def answering(names: set[str], timeout: float = PING_SECONDS) -> set[str]:
    """Those of the nodes ``names`` (workers, beat) that answer a Celery ping (remote
    control) within ``timeout`` s."""
    if not names:
        return set()
    from dispatch.celery_app import app

    replies = app.control.ping(destination=sorted(names), timeout=timeout)
    return {str(name) for reply in replies or () for name in reply} & names


def _gone(name: str, this_host: str) -> bool:
    """A worker of this machine (``dispatch-<pid>-...@this_host``) whose process is no
    more."""
    match = _NODE_NAME.fullmatch(name)
    if match is None or match.group(2) != this_host:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # there, another user's (or no process id at all)
        pass
    return False


# The canary of each worker this process runs (its main process: one), and what stops it.
_canaries: dict[str, tuple[threading.Thread, threading.Event]] = {}
# How long a stopping worker waits for a canary on its way to the broker.
CANARY_STOP_SECONDS = 5.0


def start_canary(
    hostname: str, interval: float, busy: Callable[[], bool] = lambda: False
) -> threading.Thread:
    """Send the canary task to ``hostname``'s own queue now and every ``interval`` s,
    after forgetting the notes of its predecessors (:func:`forget_predecessors`) and
    removing their direct queues (:func:`drop_direct_queues`); note the time at once
    whenever ``busy()`` (every process of the worker's pool runs a task: the canary
    waits for one to end)."""
    from celery.utils.nodenames import worker_direct

    from dispatch.celery_app import app

    stop = threading.Event()

    def loop() -> None:
        # Here, not in the worker's start: a ping for a killed predecessor waits its
        # timeout out. Before the first canary, which declares this worker's own queue.
        try:
            for name in forget_predecessors(store.sync_client(), hostname):
                log.warning("worker %s stopped without its shutdown (killed?)", name)
        except Exception:  # Redis not up yet: the predecessor's note expires anyway
            log.warning("could not forget the earlier workers of this name", exc_info=True)
        while not stop.is_set():
            try:
                app.send_task("dispatch.canary", (hostname,), queue=worker_direct(hostname).name)
            except Exception:  # the broker is away: the note goes stale, as it should
                log.warning("could not send the worker canary", exc_info=True)
            try:
                # (it reads Celery's set of running tasks, which the main thread changes
                # meanwhile: "Set changed size during iteration" ended this thread, and
                # the worker was told not consuming until it restarted)
                busy_now = busy()
            except Exception:  # this interval's note is skipped: the last one lasts
                log.warning("could not tell whether the worker's pool is full", exc_info=True)
                busy_now = False
            if busy_now:
                try:
                    note(store.sync_client(), hostname, interval)
                except redis.RedisError:  # Redis away: the note goes stale, as it should
                    log.warning("could not note the busy worker's canary", exc_info=True)
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="dispatch-canary", daemon=True)
    _canaries[hostname] = (thread, stop)
    thread.start()
    return thread


def retire(hostname: str, redis_answers: bool = True) -> None:
    """The worker ``hostname`` stopped cleanly: its canary stops, and its direct queue
    goes with the canaries still waiting there (each worker started has a name of its
    own: they stayed in Redis, one queue and two binding entries for every worker ever
    started). ``redis_answers`` False: Redis did not answer the stop's first calls, and
    the queue is left (the next worker started on this host with this process id drops
    it: forget_predecessors)."""
    canary = _canaries.pop(hostname, None)
    if canary is not None:
        thread, stop = canary
        stop.set()
        thread.join(CANARY_STOP_SECONDS)  # (a send under way would declare the queue again)
    if redis_answers:
        drop_direct_queues(lambda name: name == hostname)
    else:
        log.warning("left the direct queue of %s: Redis did not answer", hostname)


def _same_process(name: str, hostname: str) -> bool:
    """``name`` is a default node name with ``hostname``'s process id and host."""
    mine, other = _NODE_NAME.fullmatch(hostname), _NODE_NAME.fullmatch(name)
    return mine is not None and other is not None and mine.groups() == other.groups()


def drop_direct_queues(chosen: Callable[[str], bool]) -> list[str]:
    """Delete the direct queues (``worker_direct``: bindings and waiting tasks) of the
    workers whose node name is ``chosen``; their names. Never raises (logged): a worker
    starts or stops all the same."""
    from celery.utils.nodenames import worker_direct

    from dispatch.celery_app import app

    dropped: list[str] = []
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)  # Redis away: a stop does not wait on it
            channel: Any = conn.default_channel  # kombu's Redis channel
            for name in sorted(_bound_names(channel)):
                if chosen(name):
                    queue = worker_direct(name)(channel)
                    queue.declare()  # known to this channel, so that delete unbinds it
                    queue.delete()
                    dropped.append(name)
    except Exception:
        log.warning("could not remove the direct queues of stopped workers", exc_info=True)
    return dropped


def _bound_names(channel: Any) -> set[str]:
    """The node names whose direct queue is bound (in kombu's Redis ``channel``)."""
    from celery.utils.nodenames import WORKER_DIRECT_EXCHANGE

    return {str(routing_key) for routing_key, *_ in channel.get_table(WORKER_DIRECT_EXCHANGE.name)}


def direct_queue_names() -> set[str]:
    """The node names whose direct queue is in Redis."""
    from dispatch.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        return _bound_names(conn.default_channel)


# A host whose clock differs from Redis's by more than this is named by the health check:
# leases, pace, quotas, connection slots and housekeeping read Redis's clock, but a batch's
# check of expires_at and retry times read the host's (README: keep the clocks
# synchronised with NTP).
CLOCK_SKEW_WARNING_SECONDS = 2.0


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str
    warnings: tuple[str, ...] = ()


def clock_skew(r: redis.Redis) -> float:
    """Seconds this host's clock is ahead of Redis's (negative: behind), within the
    round trip's time."""
    before = time.time()
    redis_now = store.redis_time(r)
    return (before + time.time()) / 2 - redis_now


def _clock_warnings(r: redis.Redis) -> tuple[str, ...]:
    skew = clock_skew(r)
    if abs(skew) <= CLOCK_SKEW_WARNING_SECONDS:
        return ()
    side = "ahead of" if skew > 0 else "behind"
    return (
        f"this host's clock is {abs(skew):.1f} s {side} Redis's: a batch's expires_at, "
        "and retry times read it; synchronise it (NTP)",
    )


def check(r: redis.Redis, interval: float, host: str | None = None) -> Health:
    """The workers of ``host`` (default: this machine): each took its canary recently
    (a worker of this machine whose process is gone is left out)."""
    this_host = socket.gethostname()
    host = host or this_host
    warnings = _clock_warnings(r)
    now = time.time()
    ages: dict[str, float] = {}
    gone: list[str] = []
    # The index /metrics reads, not a SCAN of the keyspace (0.8 s with 1.2 million keys,
    # for each healthcheck of each worker).
    notes = cast(list[tuple[str, float]], r.zrange(store.WORKERS_ZSET, 0, -1, withscores=True))
    for member, score in notes:
        name, age = str(member), now - float(score)
        if not name.endswith(f"@{host}") or age > interval * KEEP_INTERVALS:
            continue  # another host's, or gone long ago (as its note's expiry)
        if _gone(name, this_host):
            gone.append(name)
        else:
            ages[name] = age
    if not ages:
        ended = f" ({', '.join(sorted(gone))} ended without its shutdown)" if gone else ""
        return Health(False, f"no worker of host {host} has taken a task yet{ended}", warnings)
    limit = interval * STALE_INTERVALS
    stale = {name: age for name, age in ages.items() if age > limit}
    if stale:
        listed = ", ".join(f"{name} {age:.0f} s ago" for name, age in sorted(stale.items()))
        return Health(False, f"not taking tasks (last one {listed}; limit {limit:.0f} s)", warnings)
    return Health(True, f"{len(ages)} worker(s) of {host} taking tasks", warnings)


# How long ``dispatch health --beat`` waits for beat's answer (it comes in milliseconds).
BEAT_PING_SECONDS = 5.0


def check_beat(host: str | None = None) -> Health:
    """Beat on ``host`` (default: this machine) runs and its scheduler ticks: it answers
    a ping (``beat_enable_remote_control``) unless its last pass is older than
    ``beat_remote_control_max_tick_age``."""
    from kombu.exceptions import KombuError

    from dispatch.celery_app import app

    name = f"celerybeat@{host or socket.gethostname()}"
    try:
        answered = answering({name}, BEAT_PING_SECONDS)
    except (KombuError, redis.RedisError, OSError) as exc:  # not a traceback: say why
        return Health(False, f"{name} not asked: its Redis does not answer ({exc})")
    if answered:
        return Health(True, f"{name} is scheduling")
    limit = app.conf.beat_remote_control_max_tick_age
    return Health(
        False,
        f"{name} did not answer within {BEAT_PING_SECONDS:.0f} s: not running, its Redis "
        f"is away, or its scheduler has not ticked for {limit:.0f} s",
    )
