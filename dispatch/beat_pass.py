"""A beat pass over many campaigns: one it cannot deal with is skipped, not the rest.

Beat's passes (housekeeping's sweep, the expiry, the scheduled release, the retention
purge, the reputation guard) walk campaigns one after the other. A campaign whose stored
fields they cannot read (a field written by hand, data of an older version, a bug)
raised out of the pass: every campaign after it was left alone, at every tick, for as
long as it stayed so. Such a campaign is logged with its traceback and skipped; it waits
for a person, and the pass goes on with the others. An error that concerns Redis as a
whole (away, too slow, out of memory, read-only, refusing writes) still ends the pass:
every other campaign would meet it too, and the next tick tries again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import redis

from dispatch import faults
from dispatch.models import CampaignStatus

# Errors of Redis as a whole, not of one campaign's data (redis-py's classes, whose text
# has lost its code: MASTERDOWN, a replica cut from its primary, is a ClusterDownError;
# the codes it has no class for come as ResponseError with the code first: NOREPLICAS,
# writes refused while fewer replicas than min-replicas-to-write keep up).
_REDIS_WIDE = (
    redis.ConnectionError,  # (also LOADING, a refused password, too many clients)
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.ClusterDownError,  # (MASTERDOWN, CLUSTERDOWN)
)
_REDIS_WIDE_CODES = ("MISCONF ", "BUSY ", "NOREPLICAS ")


def redis_wide(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of Redis as a whole (ends a pass), not of one item."""
    if isinstance(exc, _REDIS_WIDE):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_REDIS_WIDE_CODES)


_STATUSES = frozenset(status.value for status in CampaignStatus)


def known_status(campaign_id: str, status: object) -> None:
    """Raises ``ValueError`` when a campaign's stored ``status`` is none dispatch writes
    (written by hand, an older or newer version's): a pass that read it as merely "not
    mine" dropped the campaign from its index without a word (a scheduled one never
    started, never expired), where it is to be skipped and reported. None (the campaign
    is gone) is not such a status."""
    if status is not None and status not in _STATUSES:
        raise ValueError(f"campaign {campaign_id!r} has status {str(status)[:100]!r}")


@contextlib.contextmanager
def skipped_on_error(
    log: logging.Logger, what: str, campaign_id: str, r: redis.Redis
) -> Iterator[None]:
    """Run one campaign's part of a pass (``what``: the pass's name in the log); an
    exception is logged with its traceback and counted (``r``: the pass's Redis;
    ``dispatch_beat_campaigns_skipped_total``, by pass: a campaign skipped at every tick
    for days is seen) and the pass goes on, unless it is :func:`redis_wide` (raised: the
    pass ends)."""
    try:
        yield
    except Exception as exc:
        if redis_wide(exc):
            raise
        log.exception(
            "%s: campaign %s skipped (%s: %s); the others go on",
            what,
            campaign_id,
            type(exc).__name__,
            exc,
            extra={"campaign_id": campaign_id},
        )
        faults.count_sync(r, "skipped", faults.pass_label(what))


@contextlib.contextmanager
def failure_counted(what: str) -> Iterator[None]:
    """Run one of beat's passes as a whole (``what``: its name in the log); an exception
    out of it that is not :func:`redis_wide` (a bug: the pass stopped where it met it,
    and meets it again at every tick) is counted (``dispatch_beat_passes_failed_total``,
    by pass) and raised (Celery logs the task's failure with its traceback). One of
    Redis as a whole is not counted: every process meets it, its own alerts say so, and
    the next tick tries again."""
    try:
        yield
    except Exception as exc:
        if not redis_wide(exc):
            faults.count_sync(None, "failed", faults.pass_label(what))
        raise
