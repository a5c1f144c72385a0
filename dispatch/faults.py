"""Faults a process lives through and logs, counted for ``/metrics``: a bug or a
misconfiguration that repeats at every tick or message would otherwise show in logs only,
for days.

Counted in the incidents hash (``store.INCIDENTS_HASH``, beside dispatch.incidents'
pauses: one hash, read by each scrape whatever the number of campaigns) by the code path
that meets them, in any process (beat's tasks and batches on the workers, a worker's
consumer). Fields:

- ``skipped|<pass>``: a campaign one of beat's passes could not read and skipped
  (dispatch.beat_pass), once per pass that skips it: ``dispatch_beat_campaigns_skipped_total``;
- ``failed|<pass>``: one of beat's passes that raised as a whole, an error that is not
  Redis's (a bug: every campaign after where it stopped waited, at every tick):
  ``dispatch_beat_passes_failed_total``;
- ``error|<where>``: an error that is not Redis's (a bug) met and lived through by a
  worker's background loop (a batch lease's or a connection slot's renewal, a batch's
  status watch, which then hands its batch on, the closer of idle provider sessions):
  ``dispatch_unexpected_errors_total``;
- ``refused|<reason>``: a task message a worker refused unread (dispatch.tasks):
  ``dispatch_task_messages_refused_total``;
- ``lost|batch_lease``: a batch run that stopped because its lease lapsed under it (its
  process stalled past the lease's TTL, or Redis was away that long), counted by
  dispatch.tasks' ``send_batch`` where the run's LeaseLostError arrives (the run's give
  back of its claims meets the same loss and only returns, not counted twice):
  ``dispatch_batch_leases_lost_total``, no label.

Labels are fixed lists (never a campaign or an address): each series exists from the
first scrape, at 0, so that ``increase()`` sees the first fault. A count that fails is
dropped (the fault is logged anyway): it never adds a failure to the path it counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import redis
import redis.asyncio as aioredis

from dispatch import store

# The ``pass`` label: beat_pass.skipped_on_error's ``what``, spaces as underscores.
BEAT_PASSES = ("housekeeping", "expiry", "scheduled_release", "retention_purge", "reputation_guard")
# The ``pass`` label of a pass that failed as a whole: beat's tasks (dispatch.tasks).
FAILED_PASSES = (
    "housekeeping", "expiry", "scheduled_release", "retention_purge", "callback_recovery"
)  # fmt: skip
# The ``where`` label.
LEASE_RENEWAL = "lease_renewal"
SLOT_RENEWAL = "slot_renewal"
STATUS_WATCH = "status_watch"
IDLE_CLOSER = "idle_closer"
ERROR_PLACES = (LEASE_RENEWAL, SLOT_RENEWAL, STATUS_WATCH, IDLE_CLOSER)
# The ``reason`` label: sent in a serializer the workers do not take (not JSON), over the
# size a task's body may be, not decodable as its message says, not a task message Celery
# can run (or no task message at all), a task name no worker knows.
REFUSALS = ("serializer", "too_large", "undecodable", "malformed", "unregistered")
# The one field of ``lost``: a batch's lease.
BATCH_LEASE = "batch_lease"
# An async count waits no longer (redis-py retries a command that timed out for about a
# minute: a renewal loop must not wait on its own count).
COUNT_WAIT_SECONDS = 2.0


def pass_label(what: str) -> str:
    """The ``pass`` label of a pass named ``what`` in its log lines."""
    return what.replace(" ", "_")


def count_sync(r: redis.Redis | None, kind: str, label: str) -> None:
    """Count one fault (``kind``: skipped, failed, error, refused or lost) from synchronous
    code (``r``: None for the process's shared client)."""
    with contextlib.suppress(Exception):
        (r or store.sync_client()).hincrby(store.INCIDENTS_HASH, f"{kind}|{label}", 1)


async def count(r: aioredis.Redis, kind: str, label: str) -> None:
    """:func:`count_sync` from a coroutine, waiting at most ``COUNT_WAIT_SECONDS``."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            r.hincrby(store.INCIDENTS_HASH, f"{kind}|{label}", 1), COUNT_WAIT_SECONDS
        )


def counts(
    found: Mapping[str, float | None], kind: str, labels: tuple[str, ...]
) -> dict[str, float]:
    """Each label's count of ``kind`` (0 when none), from the hash's fields read as
    numbers (``None``: not a number, that label is left out)."""
    numbers = {label: found.get(f"{kind}|{label}", 0.0) for label in labels}
    return {label: count for label, count in numbers.items() if count is not None}
