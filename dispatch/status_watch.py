"""Stops a sending batch within a second of a pause, cancel, expiry, provider change or shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis

from dispatch import faults, incidents, send_stats, store
from dispatch.batch_campaign import BatchCampaign
from dispatch.lifecycle import expire_now
from dispatch.models import CampaignStatus
from dispatch.provider_store import decode_provider
from providers.config import ProviderBase

if TYPE_CHECKING:  # (the sender runs this watch: a cycle at import time)
    from dispatch.sending import BatchSender

log = logging.getLogger(__name__)
STATUS_POLL_SECONDS = 0.5


async def watch_status(
    r: aioredis.Redis, campaign: BatchCampaign, sender: BatchSender, stop_key: str = ""
) -> None:
    """Poll the campaign status so that pause and cancel take effect within a second, and
    the clock so that a campaign whose ``expires_at`` passes while it sends expires then
    (not when beat next looks: nothing may go out after it), its provider so that one
    deleted or saved with another configuration (host, password, limits) takes effect
    within a second, not when the batch ends (minutes later at a slow pace): the campaign
    pauses, or the batch runs again with the new configuration; and ``stop_key``
    (run_batch) so that a worker asked to shut down hands its batches on within a second;
    and adds the batch's send metrics to Redis every ``send_stats.FLUSH_SECONDS``. A poll
    that meets a Redis error (a restart) is skipped: the next one looks again. One that
    fails otherwise (a stored status it cannot read, a bug) hands the batch on, logged
    with its traceback: a run that no longer sees a pause or a cancel must not send on
    (it did, to the batch's end, and said nothing), and the next run reads the campaign
    afresh (one not ``running`` sends nothing). A flush of the metrics that fails is
    logged and the watch goes on (the figures are lost, not the batch's control).

    A run that has lasted :func:`run_budget` hands the batch on: Celery kills a task at
    its time limit (half the visibility timeout), which left a slowly paced batch's chunk
    on the wire unknown and the batch stalled until beat's sweep; the next run starts
    with a whole time limit. Its senders take no new chunk, but those that reserved
    their pace send first (``BatchSender.run_out``): a pace's reservation is not given
    back, and each run's cut short pushed the next run's further ahead (a pace reaching
    past the budget never sent again). None is reserved further ahead than
    :func:`pace_horizon`: the last chunk then still has a quarter of the time limit to
    be answered."""
    try:
        await _watch(r, campaign, sender, stop_key)
    except Exception:
        log.exception(
            "campaign %s batch %s: its status watch failed: the batch is handed on (a "
            "pause or a cancel would go unseen)", campaign.content.id,
            sender.outcome_log.context.get("batch"), extra=sender.outcome_log.context,
        )  # fmt: skip
        sender.handed_on = True
        sender.finish()
        await faults.count(r, "error", faults.STATUS_WATCH)


async def _watch(
    r: aioredis.Redis, campaign: BatchCampaign, sender: BatchSender, stop_key: str
) -> None:
    """:func:`watch_status`'s polls; raises what it cannot deal with."""
    started = flushed = time.monotonic()
    hand_on_at = started + run_budget(campaign.settings.visibility_timeout)
    while not sender.done.is_set():
        await asyncio.sleep(STATUS_POLL_SECONDS)
        if not sender.out_of_time and time.monotonic() >= hand_on_at:
            # Watched on: a pause, a cancel or the worker's stop still cut its end short.
            log.info(
                "campaign %s batch %s: ran %.0f s, handed on to run again (the task's time "
                "limit)", campaign.content.id, sender.outcome_log.context.get("batch"),
                time.monotonic() - started, extra=sender.outcome_log.context,
            )  # fmt: skip
            sender.run_out()
        if time.monotonic() - flushed >= send_stats.FLUSH_SECONDS:  # /metrics, while it runs
            flushed = time.monotonic()
            try:
                await sender.stats.flush(r, campaign.provider.nickname)
            except Exception:  # (Redis's errors it drops itself): figures, not the batch
                log.exception(
                    "campaign %s: could not add the send metrics", campaign.content.id,
                    extra=sender.outcome_log.context,
                )  # fmt: skip
        try:
            if await _status_changed(r, campaign, sender, stop_key):
                return
        except redis.RedisError as exc:  # Redis restarting: the next poll looks again
            log.warning(
                "campaign %s: status poll failed (%s)", campaign.content.id, exc,
                extra=sender.outcome_log.context,
            )  # fmt: skip


async def _status_changed(
    r: aioredis.Redis, campaign: BatchCampaign, sender: BatchSender, stop_key: str
) -> bool:
    """One poll of :func:`watch_status`; True when the batch stops."""
    expires_at = campaign.content.expires_at
    if expires_at is not None and expires_at <= datetime.now(UTC):
        await expire_now(r, campaign.content.id)
    if stop_key and await r.exists(stop_key):
        sender.handed_on = True
        sender.finish()
        return True
    status = await r.hget(store.campaign_key(campaign.content.id), "status")
    if status and status != CampaignStatus.RUNNING.value:
        campaign.status = CampaignStatus(str(status))
        campaign.stop_reason = f"campaign {campaign.status}"
        sender.finish()
        return True
    nickname = campaign.provider.nickname
    stored = await r.get(store.provider_key(nickname))
    if stored is None:
        campaign.stop_kind = incidents.PauseKind.PROVIDER_DELETED
        campaign.stop_reason = provider_gone(nickname)
        sender.finish()
        return True
    if sender.configuration and stored != sender.configuration:
        if _differs(str(stored), campaign.provider):
            sender.reconfigured = True
            sender.finish()
            return True
        sender.configuration = str(stored)  # the same saved again: looked at once
    return False


def run_budget(visibility_timeout: float) -> float:
    """How long one run of a batch sends before it hands the batch on: half the task's
    hard time limit (``dispatch.celery_app``: half the visibility timeout), so that a
    chunk on the wire when it stops has the other half to be answered (an SMTP reply to
    the end of a message may take ``data_timeout``, up to 900 s)."""
    return visibility_timeout / 4


def pace_horizon(visibility_timeout: float) -> float:
    """How far ahead a run's senders reserve the provider's pace: half the run's budget
    (:func:`run_budget`), so that a chunk reserved before the run ran out goes out by
    then and still has a quarter of the task's time limit to be answered."""
    return run_budget(visibility_timeout) / 2


def provider_gone(nickname: str) -> str:
    """Why a campaign whose provider was deleted pauses."""
    return f"provider {nickname!r} is gone"


def _differs(stored: str, provider: ProviderBase) -> bool:
    """Whether the configuration ``stored`` (a provider saved again) is not ``provider``
    (a GET's answer PUT back encrypts its secrets anew: other bytes, the same provider)."""
    try:
        return decode_provider(stored)[0] != provider
    except Exception:  # (a secret that no longer decrypts): the next run says what
        return True


async def provider_replaced(r: aioredis.Redis, provider: ProviderBase, configuration: str) -> bool:
    """Whether ``provider``, stored as ``configuration`` when the batch began, has been
    saved again with another configuration since."""
    stored = await r.get(store.provider_key(provider.nickname))
    return stored is not None and stored != configuration and _differs(str(stored), provider)
