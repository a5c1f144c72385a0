"""Beat's safety net for running campaigns: finish the done, re-enqueue the stalled.

Batch tasks finish their campaign themselves; this catches what a lost task left: a
campaign with nothing queued still marked running, or one whose batches stopped (a worker
died and Redis would hand its task out again only after the visibility timeout,
PITFALLS). Re-enqueueing is safe: a batch skips what its ledger settled and a live
worker's lease turns a duplicate away.

How long a campaign may stay quiet before it counts as stalled: when no batch of any
campaign runs and no batch task waits in the queue, two lease TTLs (the tasks it still
has can only be lost: reserved by a worker that died, or dropped by workers whose broker
connection broke, as when Redis restarts: Celery forgets its reserved and ETA tasks and
Redis hands them out again only after the visibility timeout). Otherwise, twice the
longest retry wait, since its tasks may be waiting behind other campaigns' batches.
Either way never before the latest time a batch of it parked itself for a retry. But a
campaign that was running when Redis restarted or failed over (its run_id changed) has
lost the tasks its workers held whatever else runs: it waits two lease TTLs, once.

Quiet is measured on Redis's clock, the one the ledger writes ``progress_at`` by: a beat
host whose clock ran minutes behind left a dead worker's campaign stalled for as long
again, and one ahead restarted campaigns whose batches had written a moment before.
"""

from __future__ import annotations

import logging
import math
import time

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import batch_enqueue, beat_pass, campaigns, incidents, lifecycle, reputation, store
from dispatch.models import CampaignStatus
from dispatch.recipient_pages import stored_count
from dispatch.settings import get_settings

log = logging.getLogger(__name__)

RECENT_CAMPAIGNS = 1000  # newest campaigns looked at each sweep, besides the active ones
# What the sweep reads of each campaign (``restarted_at``: when it last re-enqueued it).
_FIELDS = ["status", "progress_at", "started_at", "batches", "parked_until", "status_at",
           "restarted_at", "batch_size", "purged_at", lifecycle.RESUME_AT_FIELD]  # fmt: skip


def sweep(
    r: redis.Redis, enqueue: batch_enqueue.EnqueueBatch, now: float | None = None
) -> dict[str, list[str]]:
    """One pass; returns the campaigns it ``finished``, ``restarted``, ``resumed`` (their
    own daily quota starts again) and ``paused`` (the reputation guard,
    dispatch.reputation)."""
    now = store.redis_time(r) if now is None else now
    settings = get_settings()
    quick = settings.lease_ttl_ms / 1000 * 2
    stall = max(settings.retry_max_seconds * 2, quick)
    idle: bool | None = None  # nothing runs and nothing waits (asked once, when needed)
    done: dict[str, list[str]] = {"finished": [], "restarted": [], "resumed": [], "paused": []}
    running: list[str] = []
    redis_since = _redis_since(r, now)
    r.eval(_DROP_LAPSED_LEASES, 1, store.LEASES_ZSET)
    # The active index holds every campaign started and not yet found finished, however
    # many were created since; the newest are read too (started before the index).
    active = {str(m) for m in r.zrange(store.ACTIVE_ZSET, 0, -1)}
    recent = [str(m) for m in r.zrevrange(store.CAMPAIGNS_ZSET, 0, RECENT_CAMPAIGNS - 1)]
    watched = list(dict.fromkeys([*recent, *active]))

    def look_at(campaign_id: str, fields: list[str | None]) -> str:
        """What the sweep did with one campaign: a key of ``done``, ``running`` (left
        as it is) or ``""`` (not running)."""
        nonlocal idle
        (status, progress_at, started_at, batches, parked_until, status_at, restarted_at, size,
         purged, resume_at) = fields  # fmt: skip
        if status == CampaignStatus.PAUSED.value and resume_at and float(resume_at) <= now:
            # Paused by its provider's daily quota (ours), which has room again.
            return "resumed" if _resume_due(r, campaign_id, resume_at, enqueue) else ""
        if status != CampaignStatus.RUNNING.value:
            if campaign_id in active and status != CampaignStatus.PAUSED.value:
                beat_pass.known_status(campaign_id, status)  # (not unwatched unseen)
                since = max(float(progress_at or 0), float(status_at or 0))
                # Purged (dispatch.retention): no message is left to settle.
                left = purged is None and _settle_if_left(
                    r, campaign_id, str(status), now - since >= quick, enqueue
                )
                if not left:
                    campaigns.unwatch_finished(r, campaign_id)
            return ""
        if campaigns.finish_if_done(campaign_id, r):
            return "finished"
        quiet = now - max(float(progress_at or 0), float(started_at or 0), float(parked_until or 0))
        if quiet < quick:
            return "running"
        # Running before this Redis and not restarted since: its held tasks may be lost.
        lost = max(float(started_at or 0), float(restarted_at or 0)) < redis_since
        if quiet < stall and not lost:
            if idle is None:
                idle = _nothing_runs_or_waits(r)
            if not idle:
                return "running"
        if _batch_runs(r, campaign_id):
            return "running"  # a worker is on it
        # Counted in the campaign's own batch size (DISPATCH_BATCH_SIZE may have changed
        # since it started), and from what is stored too: a filler that died never wrote
        # ``batches``.
        per_batch = int(size or settings.batch_size)
        count = max(int(batches or 0), math.ceil(stored_count(r, campaign_id) / per_batch))
        if not _claim_restart(r, campaign_id, progress_at, restarted_at, now):
            return "running"  # it moved since it was read, or another sweep restarted it
        for batch in range(count):
            enqueue(campaign_id, batch)
        return "restarted"

    for campaign_id, fields in zip(watched, _read_all(r, watched), strict=True):
        # One campaign the sweep cannot read (a field written by hand, a bug) stopped
        # every sweep before the campaigns after it: none was finished, restarted or
        # resumed again. It waits for a person; the others are looked after.
        outcome = ""
        with beat_pass.skipped_on_error(log, "housekeeping", campaign_id, r):
            if isinstance(fields, Exception):  # (its key holds another type)
                raise fields
            outcome = look_at(campaign_id, fields)
        if outcome in ("running", "restarted"):
            running.append(campaign_id)
        if outcome in done:
            done[outcome].append(campaign_id)
    # Rates crossed as sends went on after the last bounce or complaint came in (the
    # callbacks judge only when they arrive).
    done["paused"] = reputation.check(r, running)
    incidents.swept(r, done["restarted"], now)
    return done


def _resume_due(
    r: redis.Redis, campaign_id: str, resume_at: str, enqueue: batch_enqueue.EnqueueBatch
) -> bool:
    """Resume a campaign its own daily quota paused, now that it has room again (its
    oldest sends counted left the 24 hours)."""
    if not lifecycle.resume_by_itself(campaign_id, resume_at, client=r, enqueue=enqueue):
        return False  # a person moved it, or another sweep took it
    incidents.resumed(campaign_id)
    return True


# A stalled campaign is restarted only as the sweep read it: still running, no batch
# wrote since and no other sweep restarted it (two beat processes by mistake, or a
# rolling restart, send the sweep twice a period and two workers run both at once: each
# enqueued every batch again). ARGV: progress_at and restarted_at as read ('' for none),
# then now. Returns 1 when this sweep restarts it.
_RESTART = """
local found = redis.call('HMGET', KEYS[1], 'status', 'progress_at', 'restarted_at')
if found[1] ~= 'running' or (found[2] or '') ~= ARGV[1] or (found[3] or '') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'progress_at', ARGV[3], 'restarted_at', ARGV[3])
return 1
"""


def _claim_restart(
    r: redis.Redis, campaign_id: str, progress_at: str | None, restarted_at: str | None, now: float
) -> bool:
    """Mark the campaign restarted now, if it is as read; whether this sweep restarts it."""
    key = store.campaign_key(campaign_id)
    return bool(r.eval(_RESTART, 1, key, progress_at or "", restarted_at or "", repr(now)))


CAMPAIGNS_PER_READ = 1000  # campaigns whose fields are read in one round trip


def _read_all(r: redis.Redis, campaign_ids: list[str]) -> list[list[str | None] | Exception]:
    """The sweep's fields of each campaign, a thousand campaigns to a round trip (one
    round trip each cost a sweep 0.28 s with 2,000 paused campaigns and 10,000 others);
    the error of one that cannot be read in its place (it is not raised: the sweep
    skips that campaign alone)."""
    read: list[list[str | None] | Exception] = []
    for first in range(0, len(campaign_ids), CAMPAIGNS_PER_READ):
        pipe = r.pipeline(transaction=False)
        for campaign_id in campaign_ids[first : first + CAMPAIGNS_PER_READ]:
            pipe.hmget(store.campaign_key(campaign_id), _FIELDS)
        read += pipe.execute(raise_on_error=False)
    return read


def _redis_since(r: redis.Redis, now: float) -> float:
    """Since when the sweeps have seen this Redis: ``now`` when its run_id is new (it
    restarted, or a replica took over), 0 at the first sweep ever or when Redis does not
    say (a managed Redis may refuse INFO)."""
    try:
        run_id = str(r.info("server").get("run_id") or "")
    except redis.ResponseError:
        return 0.0
    seen, since = r.hmget(store.REDIS_RUN_HASH, ["run_id", "since"])
    if not run_id or seen == run_id:
        return float(since or 0)
    first = now if seen else 0.0
    r.hset(store.REDIS_RUN_HASH, mapping={"run_id": run_id, "since": first})
    return first


_ENDED = (CampaignStatus.CANCELLED.value, CampaignStatus.EXPIRED.value)


def _settle_if_left(
    r: redis.Redis,
    campaign_id: str,
    status: str,
    quiet: bool,
    enqueue: batch_enqueue.EnqueueBatch,
) -> bool:
    """Whether an ended campaign still has messages unsent (it stays watched); once
    ``quiet`` and no batch of it runs, they are settled (lifecycle.settle_ended)."""
    if status not in _ENDED or int(r.hget(store.counters_key(campaign_id), "queued") or 0) <= 0:
        return False
    if quiet and not _batch_runs(r, campaign_id):
        lifecycle.settle_ended(campaign_id, CampaignStatus(status), r, enqueue)
    return True


LEASES_PER_READ = 1000  # lease keys asked about in one EXISTS


def _batch_runs(r: redis.Redis, campaign_id: str) -> bool:
    """A worker holds a lease on a batch of the campaign.

    Its batches' lease keys are asked about by name, a thousand to a round trip: a SCAN
    for them walked the whole keyspace ten keys a round trip (with a million callback
    dedupe keys in Redis, 14 s for each campaign the sweep looked at)."""
    batches, size = r.hmget(store.campaign_key(campaign_id), ["batches", "batch_size"])
    per_batch = int(size or get_settings().batch_size)
    count = max(int(batches or 0), math.ceil(stored_count(r, campaign_id) / per_batch))
    for first in range(0, count, LEASES_PER_READ):
        last = min(count, first + LEASES_PER_READ)
        if r.exists(*(store.batch_lease_key(campaign_id, b) for b in range(first, last))):
            return True
    return False


# The registry of leases (store.LEASES_ZSET) without the entries past their expiry, on
# Redis's clock: a holder killed before it let go, or one that found its lease taken
# over, left its entry; the sweep drops them each pass (only a quiet running campaign
# asked the registry, so they stayed as long as none was).
_DROP_LAPSED_LEASES = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now[1] * 1000 + math.floor(now[2] / 1000))
"""
# Whether a batch lease is held anywhere, from the registry: entries whose key is gone
# are dropped on the way.
_ANY_LEASE_HELD = (
    _DROP_LAPSED_LEASES
    + """
for _, lease in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', lease) == 1 then return 1 end
  redis.call('ZREM', KEYS[1], lease)
end
return 0
"""
)


def _nothing_runs_or_waits(r: redis.Redis) -> bool:
    """No batch lease is held anywhere and no batch task waits in the queue.

    One round trip whatever Redis holds besides: a SCAN for lease keys walked the whole
    keyspace (0.75 s a sweep with a million callback dedupe keys)."""
    pipe = r.pipeline(transaction=False)
    for key in store.queue_keys(store.SENDS_QUEUE):  # one list per priority
        pipe.llen(key)
    pipe.eval(_ANY_LEASE_HELD, 1, store.LEASES_ZSET)
    return not any(pipe.execute())


# A batch that parks itself for a retry notes until when (the latest of its campaign's):
# its task waits in a worker meanwhile, and the campaign is quiet but not stalled. On
# Redis's clock, as the sweep reads it: ARGV[1] is how many seconds from now.
_PARKED = """
local t = redis.call('TIME')
local parked = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
if parked > tonumber(redis.call('HGET', KEYS[1], 'parked_until') or '0') then
  redis.call('HSET', KEYS[1], 'parked_until', string.format('%.3f', parked))
end
"""


# A batch that ends without writing (deferred for want of a connection, handed on) notes
# its campaign alive, on Redis's clock as the ledger's writes do: a worker's clock half
# an hour ahead kept a campaign whose tasks were then lost from restarting that long.
_PROGRESS = """
redis.call('HSET', KEYS[1], 'progress_at', redis.call('TIME')[1])
"""


async def note_progress(r: aioredis.Redis, campaign_id: str) -> None:
    """The campaign is alive: a batch of it went back to the broker a moment ago."""
    await r.eval(_PROGRESS, 1, store.campaign_key(campaign_id))


def note_parked(pipe: Pipeline, campaign_id: str, until: float) -> None:
    """Adds to ``pipe``: the campaign has a batch parked until ``until`` (this host's
    clock: the wait from now is what is noted, on Redis's)."""
    pipe.eval(_PARKED, 1, store.campaign_key(campaign_id), repr(until - time.time()))
