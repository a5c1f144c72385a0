"""What Redis keeps of a finished campaign, and for how long.

Redis holds everything in memory, so a campaign's per-message data cannot stay for ever:
a million recipients take about 210 MB (their documents, address keys and ledger
records; ``bench``-sized vars). ``DISPATCH_RETENTION_DAYS`` after a campaign finished
(``completed``, ``cancelled`` or ``expired``) and last changed, beat's purge removes that
data: the recipients, their address keys, the ledger and the retried set. What stays is
small and keeps the campaign answerable: its content (packed then: templates are most of
what stays for good), status and counters (reports and
``GET /v1/campaigns/{id}`` go on working, and re-posting its id is still recognised and
sends nothing), and, for ``DISPATCH_RETENTION_DAYS`` more, the bitmaps that count each
message's callback once (late callbacks still move the right counters, suppress and
publish their events).

The bitmaps (a bit per recipient, per callback counter that moved: up to 125 KB each for
a million recipients) would otherwise stay for ever. The purge gives them an expiry at
the time it records as the campaign's ``counts_closed_at``: its purge plus the retention
period. From then on a callback about the campaign still suppresses and publishes its
events, but moves no counter (its bitmap, which would tell a second callback about the
same message from a first, is gone: counting it could count twice). Redis's own clock
decides (``TIME`` in the callback's script), the clock the expiry follows. Campaigns purged
by an earlier version, which kept their bitmaps without expiry, are given theirs once
(:func:`_close_earlier_purges`).

After the purge the per-message outcomes and ``retry-failed`` answer 410 Gone, with the
time of the purge; ``purged_at`` in the campaign's summary says so too. Nothing writes the
removed keys again: a settling that comes after the purge stops (every message would read
as queued), and housekeeping stops watching the campaign.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis

from dispatch import beat_pass, campaign_reads, campaigns, store
from dispatch.models import CALLBACK_COUNTERS, CampaignStatus
from dispatch.settings import get_settings

FINISHED = (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.EXPIRED)
# When the campaign last changed: the latest of these fields of its hash.
_CHANGED_FIELDS = ("created_at", "started_at", "progress_at", "completed_at", "status_at")
_CANDIDATES_PER_ROUND_TRIP = 500
# The field of a purged campaign's hash: when its callbacks stop moving its counters
# (Unix seconds; absent: they never stop, as with a retention of 0).
COUNTS_CLOSED_FIELD = "counts_closed_at"
# The latest expiry a purge gives (Unix milliseconds, about the year 287,000): Redis takes
# none past 2**63 - 1, and the scripts' numbers are exact to 2**53.
_LATEST_EXPIRY_MS = 2.0**53

log = logging.getLogger(__name__)


class CampaignPurgedError(campaigns.CampaignError):
    """The campaign's per-message data was removed by the retention policy (HTTP 410)."""

    def __init__(self, campaign_id: str, purged_at: float) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(purged_at))
        super().__init__(
            f"campaign {campaign_id!r}: its per-message records were removed at {when}, "
            "DISPATCH_RETENTION_DAYS after it finished",
            "campaign_id",
        )
        self.purged_at = purged_at


def callback_bits_keys(campaign_id: str) -> list[str]:
    """The bitmaps that count each message's callback once, one per callback counter."""
    return [store.callback_bits_key(campaign_id, counter) for counter in CALLBACK_COUNTERS]


def _closing(purged: float, days: float) -> tuple[str, str]:
    """When a campaign purged at ``purged`` closes its counts: the hash's value and the
    bitmaps' expiry (Unix milliseconds); ("", "") for a retention of 0 (never), and for
    one too long for a Redis expiry (never either: Redis refused it, in the purge's
    script after its deletions and at every pass for earlier purges)."""
    closes = purged + days * 86400
    if days <= 0 or not closes * 1000 < _LATEST_EXPIRY_MS:
        return "", ""
    return repr(closes), str(math.ceil(closes * 1000))


def per_message_keys(campaign_id: str) -> list[str]:
    """The keys that grow with the campaign's recipients (what a purge removes)."""
    return [
        store.recipients_key(campaign_id),
        store.address_keys_key(campaign_id),
        store.addresses_key(campaign_id),
        store.ledger_key(campaign_id),
        store.retried_key(campaign_id),
    ]


# Atomic with the status and the time of the last change: a campaign that is not
# finished, or that changed since the cutoff (retry-failed queued a message again after
# the campaign was chosen, before it moved it back to running), keeps its data.
# UNLINK frees the large values in Redis's background thread. A finished campaign
# leaves the index of campaigns to expire too (an expires_at years ahead kept it there
# for as long).
# The callback bitmaps expire when the counts close (PEXPIREAT on an absent one does
# nothing: a bitmap made later is given it by dispatch.effects).
# KEYS: the campaign, the index of kept campaigns, the expiring index, the callback
# bitmaps, the per-message keys. ARGV: the time of the purge, the cutoff ("" for none),
# the campaign's id, when the counts close and in milliseconds ("" for never), the
# finished statuses.
_PURGE = (
    """
if redis.call('HEXISTS', KEYS[1], 'purged_at') == 1 then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status')
local finished = false
for i = 6, #ARGV do if status == ARGV[i] then finished = true end end
if not finished then return 0 end
if ARGV[2] ~= '' then
  local cutoff = tonumber(ARGV[2])
  for _, at in ipairs(redis.call('HMGET', KEYS[1], CHANGED_FIELDS)) do
    if (tonumber(at) or 0) > cutoff then return 0 end
  end
end
redis.call('UNLINK', unpack(KEYS, 4 + BITMAPS))
redis.call('HSET', KEYS[1], 'purged_at', ARGV[1])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'COUNTS_CLOSED', ARGV[4])
  for i = 4, 3 + BITMAPS do redis.call('PEXPIREAT', KEYS[i], ARGV[5]) end
end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return 1
""".replace("CHANGED_FIELDS", ", ".join(f"'{name}'" for name in _CHANGED_FIELDS))
    .replace("BITMAPS", str(len(CALLBACK_COUNTERS)))
    .replace("COUNTS_CLOSED", COUNTS_CLOSED_FIELD)
)


def purge(
    r: redis.Redis,
    campaign_id: str,
    now: float | None = None,
    cutoff: float | None = None,
    retention_days: float | None = None,
) -> bool:
    """Remove a finished campaign's per-message data now, and pack its content (what
    stays of it for good); whether it did. ``cutoff``: only if it has not changed since
    then. Its counts close ``retention_days`` (``DISPATCH_RETENTION_DAYS``) later; with
    0, never."""
    key = store.campaign_key(campaign_id)
    keys = [key, store.KEPT_ZSET, store.EXPIRING_ZSET, *callback_bits_keys(campaign_id)]
    keys += per_message_keys(campaign_id)
    at = time.time() if now is None else now
    days = get_settings().retention_days if retention_days is None else retention_days
    closes = _closing(at, days)
    since = "" if cutoff is None else repr(cutoff)
    statuses = (s.value for s in FINISHED)
    if not r.eval(_PURGE, len(keys), *keys, repr(at), since, campaign_id, *closes, *statuses):
        return False
    raw = r.hget(key, "content")  # (a content never changes once stored)
    packed = None if raw is None else campaign_reads.pack_content(str(raw))
    if packed is not None:
        r.hset(key, "content", packed)
    return True


def purged_at(r: redis.Redis, campaign_id: str) -> float | None:
    raw = r.hget(store.campaign_key(campaign_id), "purged_at")
    return None if raw is None else float(raw)


def ensure_not_purged(r: redis.Redis, campaign_id: str) -> None:
    """Raises :class:`CampaignPurgedError` when the campaign's messages were purged."""
    when = purged_at(r, campaign_id)
    if when is not None:
        raise CampaignPurgedError(campaign_id, when)


def purge_due(
    r: redis.Redis, now: float | None = None, retention_days: float | None = None
) -> list[str]:
    """Purge every finished campaign that has not changed for the retention period (beat);
    the ids purged. A retention of 0 keeps everything."""
    now = time.time() if now is None else now
    days = get_settings().retention_days if retention_days is None else retention_days
    if days <= 0:
        return []
    cutoff = now - days * 86400
    _index_kept(r)
    _close_earlier_purges(r, days)
    # Only a campaign created before the cutoff can have stopped changing before it; and
    # only those still kept are read (not every purged campaign, run after run).
    candidates = [str(c) for c in r.zrangebyscore(store.KEPT_ZSET, "-inf", cutoff)]
    names = ["status", "purged_at", *_CHANGED_FIELDS]
    purged = []
    for start in range(0, len(candidates), _CANDIDATES_PER_ROUND_TRIP):
        chunk = candidates[start : start + _CANDIDATES_PER_ROUND_TRIP]
        pipe = r.pipeline(transaction=False)
        for campaign_id in chunk:
            pipe.hmget(store.campaign_key(campaign_id), names)
        # (An error is given to its campaign, not raised: a campaign's key holding
        # another type is skipped below like an unreadable field.)
        read = pipe.execute(raise_on_error=False)
        for campaign_id, fields in zip(chunk, read, strict=True):
            with beat_pass.skipped_on_error(log, "retention purge", campaign_id, r):
                if _purge_due(r, campaign_id, fields, now, cutoff, days):
                    purged.append(campaign_id)
    return purged


def _purge_due(
    r: redis.Redis,
    campaign_id: str,
    fields: list[str | None] | Exception,
    now: float,
    cutoff: float,
    days: float,
) -> bool:
    """Purge one candidate of :func:`purge_due` (its ``fields`` as read) if it is due;
    whether it was purged. Raises what it cannot read."""
    if isinstance(fields, Exception):
        raise fields
    status, was_purged, *changed = fields
    if status is None or was_purged is not None:  # gone, or purged: out of the index
        r.zrem(store.KEPT_ZSET, campaign_id)
        return False
    if status not in {s.value for s in FINISHED}:
        return False
    if max(float(c or 0) for c in changed) > cutoff:
        return False
    return purge(r, campaign_id, now, cutoff, days)


def _index_kept(r: redis.Redis) -> None:
    """Once per Redis: the campaigns created before the index existed, unless purged,
    go into it (new ones enter it when they are created)."""
    if r.exists(store.KEPT_INDEXED):
        return
    start = 0
    while True:
        scored: Any = r.zrange(store.CAMPAIGNS_ZSET, start, start + 999, withscores=True)
        chunk = [(str(member), float(score)) for member, score in scored]
        if not chunk:
            break
        pipe = r.pipeline(transaction=False)
        for member, _ in chunk:
            pipe.hexists(store.campaign_key(member), "purged_at")
        # One whose key holds another type (written by hand) raised here, before the
        # index was marked done: every purge failed, at every pass. It is indexed, and
        # the purge skips and reports it as it does any campaign it cannot read.
        purged = pipe.execute(raise_on_error=False)
        kept = {
            m: score for (m, score), gone in zip(chunk, purged, strict=True) if gone is not True
        }
        if kept:
            r.zadd(store.KEPT_ZSET, kept)
        start += len(chunk)
    r.set(store.KEPT_INDEXED, "1")


def _close_earlier_purges(r: redis.Redis, days: float) -> None:
    """Once per Redis: the campaigns an earlier version purged, which kept their callback
    bitmaps for ever, close their counts ``days`` after their purge (at once when that
    is past), as a purge now does."""
    if r.exists(store.COUNTS_CLOSING_INDEXED):
        return
    start = 0
    while True:
        chunk = [str(member) for member in r.zrange(store.CAMPAIGNS_ZSET, start, start + 999)]
        if not chunk:
            break
        pipe = r.pipeline(transaction=False)
        for member in chunk:
            pipe.hmget(store.campaign_key(member), ["purged_at", COUNTS_CLOSED_FIELD])
        read = pipe.execute(raise_on_error=False)
        pipe = r.pipeline(transaction=False)
        for member, fields in zip(chunk, read, strict=True):
            with beat_pass.skipped_on_error(log, "retention purge", member, r):
                if isinstance(fields, Exception):
                    raise fields
                purged, closed = fields
                if purged is None or closed is not None:
                    continue
                closes, ms = _closing(float(purged), days)
                if not closes:
                    continue
                pipe.hsetnx(store.campaign_key(member), COUNTS_CLOSED_FIELD, closes)
                for bits in callback_bits_keys(member):
                    pipe.pexpireat(bits, int(ms))
        pipe.execute()
        start += len(chunk)
    r.set(store.COUNTS_CLOSING_INDEXED, "1")
