"""What went wrong that a person must know: campaigns paused automatically (by kind) and
stalled campaigns restarted, counted in Redis for ``/metrics`` and logged as warnings.

Workers, beat and the API are separate processes: the counts live in one Redis hash
(``store.INCIDENTS_HASH``) that the code path which pauses or restarts adds to, so a
scrape reads a few fields, however many campaigns were ever sent. Fields:
``pause|<kind>`` (one per automatic pause), ``restarted`` (stalled campaigns enqueued
again by housekeeping) and ``swept_at`` (when housekeeping last ran: beat is alive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from enum import StrEnum

import redis
import redis.asyncio as aioredis

from dispatch import store
from dispatch.limits import QuotaExhaustedError
from providers.errors import AuthenticationError, ConfigurationError, SendingQuotaError
from providers.netguard import PrivateEndpointError

log = logging.getLogger(__name__)

RESTARTED = "restarted"
SWEPT_AT = "swept_at"


class PauseKind(StrEnum):
    """Why a campaign paused itself (the ``kind`` label of ``dispatch_campaign_pauses``)."""

    AUTHENTICATION = "authentication"  # the provider refused the credentials
    # The provider cannot work as configured: STARTTLS or AUTH not offered, TLS failed,
    # the server refused the session.
    CONFIGURATION = "configuration"
    QUOTA = "quota"  # the provider's or our own daily quota is used up
    PRIVATE_ENDPOINT = "private_endpoint"  # an http endpoint resolved to a private address
    REPUTATION = "reputation"  # hard bounces or spam complaints past the guard's rate
    PROVIDER_DELETED = "provider_deleted"  # its provider no longer exists
    # The first messages all failed and none was sent (dispatch.batch_outcomes's failure breaker).
    FAILURES = "failures"
    # A scheduled campaign that could not start at its send_at (dispatch.lifecycle's
    # release: data it cannot read, a bug): it waits for a person.
    START_FAILED = "start_failed"


def kind_of(exc: ConfigurationError) -> PauseKind:
    """The kind of pause a configuration error causes."""
    if isinstance(exc, AuthenticationError):
        return PauseKind.AUTHENTICATION
    if isinstance(exc, SendingQuotaError | QuotaExhaustedError):
        return PauseKind.QUOTA
    if isinstance(exc, PrivateEndpointError):
        return PauseKind.PRIVATE_ENDPOINT
    return PauseKind.CONFIGURATION


def _pause_field(kind: PauseKind) -> str:
    return f"pause|{kind.value}"


def _log_pause(campaign_id: str, provider: str, kind: PauseKind, reason: str) -> None:
    log.warning(
        "campaign %s paused (%s): %s",
        campaign_id,
        kind.value,
        reason,
        extra={"campaign_id": campaign_id, "provider": provider, "pause": kind.value},
    )


async def paused(
    r: aioredis.Redis, campaign_id: str, provider: str, kind: PauseKind, reason: str
) -> None:
    """A batch paused its campaign: count it and log it."""
    await r.hincrby(store.INCIDENTS_HASH, _pause_field(kind), 1)
    _log_pause(campaign_id, provider, kind, reason)


def paused_sync(
    r: redis.Redis, campaign_id: str, provider: str, kind: PauseKind, reason: str
) -> None:
    """:func:`paused` for synchronous callers (the reputation guard)."""
    r.hincrby(store.INCIDENTS_HASH, _pause_field(kind), 1)
    _log_pause(campaign_id, provider, kind, reason)


def swept(r: redis.Redis, restarted: list[str], now: float | None = None) -> None:
    """Housekeeping ran; ``restarted``: the stalled campaigns it enqueued again."""
    pipe = r.pipeline(transaction=False)
    pipe.hset(store.INCIDENTS_HASH, SWEPT_AT, repr(time.time() if now is None else now))
    if restarted:
        pipe.hincrby(store.INCIDENTS_HASH, RESTARTED, len(restarted))
    pipe.execute()
    for campaign_id in restarted:
        log.warning(
            "campaign %s stalled: its batches were enqueued again",
            campaign_id,
            extra={"campaign_id": campaign_id},
        )


def resumed(campaign_id: str) -> None:
    """Housekeeping resumed a campaign its provider's daily quota (ours) paused."""
    log.info(
        "campaign %s resumed: its provider's daily quota has room again (its oldest "
        "sends counted are 24 hours old)",
        campaign_id,
        extra={"campaign_id": campaign_id},
    )


def pause_counts(fields: Mapping[str, float | None]) -> dict[PauseKind, float]:
    """Automatic pauses by kind (every kind, 0 when none), from the hash's fields read
    as numbers (``None``: not a number, that kind is left out)."""
    counts = {kind: fields.get(_pause_field(kind), 0.0) for kind in PauseKind}
    return {kind: count for kind, count in counts.items() if count is not None}
