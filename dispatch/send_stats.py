"""How long providers take to accept a send, how often they ask us to slow down, how
often a batch found none of their connections free, and how often a session lost its
connection slot.

A batch run counts in memory how long each message's hand-over to the provider took
(the exchange that carried it: a chunk of up to four SMTP messages pipelined on one
connection, or one HTTP request, a whole batch for a batching provider) and the
exchanges whose reply throttled it (one per exchange, however many of its messages were
throttled: an SMTP chunk whose four RCPTs got 451 counts one) and whether
it went back to the broker for want of a connection slot, and the connection slots its
sessions lost (not renewed in time: a stalled process, Redis slow or away, or a bug;
the session closes and waits for a slot again) (dispatch.sending), then adds
them to Redis with the release of its lease, and every ``FLUSH_SECONDS`` while it runs
(a batch paced for minutes, or waiting on a slow provider, shows as it happens:
``store.SEND_STATS_HASH``): the API's
``/metrics`` reports them for every worker as ``dispatch_send_seconds`` (a histogram),
``dispatch_throttles_total``, ``dispatch_batches_deferred_total`` and
``dispatch_connection_slots_lost_total`` (DESIGN §8).

Fields of the hash: ``<provider>|le=<bound>`` (messages whose hand-over took at most
``bound`` seconds and more than the bound before it; ``+Inf`` for the rest),
``<provider>|sum`` (seconds, a float), ``<provider>|throttles``,
``<provider>|deferred`` and ``<provider>|slots_lost``.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from dispatch import store

FLUSH_SECONDS = 10.0  # how often a running batch adds its figures to Redis
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LABELS = (*(f"{b:g}" for b in BUCKETS), "+Inf")


class SendStats:
    """One batch run's hand-overs, throttles and deferral, until :meth:`add_to` takes
    them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.counts = [0] * len(_LABELS)
        self.seconds = 0.0
        self.throttles = 0
        self.deferred = 0  # runs that went back to the broker for want of a slot
        self.slots_lost = 0  # slots found gone under a session (it reconnected)

    def observe(self, seconds: float, messages: int) -> None:
        """An exchange with the provider that carried ``messages`` and took ``seconds``."""
        self.counts[bisect_left(BUCKETS, seconds)] += messages
        self.seconds += seconds * messages

    def add_to(self, pipe: Pipeline, provider: str) -> None:
        """Queue the commands that add what was counted to Redis on ``pipe``, and start
        again from zero (a batch run's lease release carries them: no round trip of
        their own)."""
        for label, count in zip(_LABELS, self.counts, strict=True):
            if count:
                pipe.hincrby(store.SEND_STATS_HASH, f"{provider}|le={label}", count)
        if any(self.counts):
            pipe.hincrbyfloat(store.SEND_STATS_HASH, f"{provider}|sum", self.seconds)
        if self.throttles:
            pipe.hincrby(store.SEND_STATS_HASH, f"{provider}|throttles", self.throttles)
        if self.deferred:
            pipe.hincrby(store.SEND_STATS_HASH, f"{provider}|deferred", self.deferred)
        if self.slots_lost:
            pipe.hincrby(store.SEND_STATS_HASH, f"{provider}|slots_lost", self.slots_lost)
        self._reset()

    async def flush(self, client: aioredis.Redis, provider: str) -> None:
        """Add what was counted so far to Redis now, and start again from zero (a Redis
        error loses these figures, not the batch)."""
        pipe = client.pipeline(transaction=False)
        self.add_to(pipe, provider)
        if len(pipe):
            with contextlib.suppress(RedisError):
                await pipe.execute()


class ProviderSends(NamedTuple):
    """One provider's figures, from the hash."""

    buckets: list[tuple[str, float]]  # cumulative ``(le, count)``, Prometheus's form
    seconds: float  # the sum of the hand-overs' seconds
    throttles: float
    deferred: float
    slots_lost: float


def histograms(
    fields: Mapping[Any, Any], providers: Iterable[str] = ()
) -> dict[str, ProviderSends]:
    """Per provider, from the hash: its histogram, throttles, deferred batch runs and
    connection slots lost (``providers``: those to report even with nothing counted yet,
    at 0)."""
    out: dict[str, ProviderSends] = {}
    raw: dict[str, dict[str, float]] = {provider: {} for provider in providers}
    for key, value in fields.items():
        provider, _, name = str(key).rpartition("|")
        raw.setdefault(provider, {})[name] = float(value)
    for provider, values in sorted(raw.items()):
        running = 0.0
        buckets = []
        for label in _LABELS:
            running += values.get(f"le={label}", 0.0)
            buckets.append((label, running))
        out[provider] = ProviderSends(
            buckets,
            values.get("sum", 0.0),
            values.get("throttles", 0.0),
            values.get("deferred", 0.0),
            values.get("slots_lost", 0.0),
        )
    return out
