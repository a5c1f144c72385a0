"""A campaign after its creation: pause, resume, cancel, retry-failed, expiry, and its messages.

Status changes are atomic compare-and-set scripts, so two operators (or an operator and
beat) never both win. Message states only ever change through the ledger's script
(``dispatch.ledger.LedgerWriter``), which moves the campaign counters with them:

* **pause** sets ``paused``; running batches poll the status twice a second and stop taking
  messages. What they had not claimed stays queued (or ``retry``) in the ledger.
* **resume** sets ``running`` and hands every batch to the workers again; a batch skips what
  the ledger settled, and its lease keeps two workers off the same batch.
* **cancel** sets ``cancelled`` and settles every unsent message ``cancelled`` (before it
  answers, or for a big campaign by a worker right after: the ledger refuses a batch's
  claim once its campaign has ended, so nothing is sent meanwhile). Settling only takes
  a message that is still queued or waiting for a retry, so a message a worker is sending
  right now is never overwritten and ends ``sent`` (or failed) as it really did.
* **retry-failed** queues failed messages again, if their failure may pass (see
  :func:`is_retryable`), each message at most once; counters move failed -> queued.
* **expiry** (beat): once ``expires_at`` has passed, the unsent messages of a campaign that
  is not finished become ``expired``, and so does the campaign.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis

from dispatch import (
    batch_enqueue,
    beat_pass,
    campaign_reads,
    campaigns,
    incidents,
    reputation,
    retention,
    store,
)
from dispatch.batch_enqueue import EnqueueBatch
from dispatch.campaigns import CampaignStateError
from dispatch.ledger import MOVE_COUNT, LedgerWriter, Records, parse_record, records_between
from dispatch.models import CampaignStatus, MessageState
from dispatch.recipient_pages import (
    stored_count,
    stored_count_async,
)
from dispatch.settings import get_settings
from providers.errors import ErrorClass

WINDOW = 1000  # messages read per round trip when walking a campaign

_S = CampaignStatus
log = logging.getLogger(__name__)


# ARGV: the new status, its reason, then the statuses it may change from. With KEYS[2]
# (the active index) the campaign (ARGV[3]) joins it in the same step. A campaign already
# in the new status keeps its reason and ``status_at`` (a pause of a campaign the
# workers paused must not erase why they did).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'', 0} end
local first = KEYS[2] and 4 or 3
for i = first, #ARGV do
  if cur == ARGV[i] then
    local t = redis.call('TIME')
    -- Any move (a person's pause of a paused campaign too) ends a pause's own resume.
    redis.call('HDEL', KEYS[1], 'resume_at')
    if cur ~= ARGV[1] then
      redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2], 'status_at', t[1])
    end
    if KEYS[2] then redis.call('ZADD', KEYS[2], t[1], ARGV[3]) end
    return {cur, 1}
  end
end
return {cur, 0}
"""


def _transition(
    r: redis.Redis,
    campaign_id: str,
    to: CampaignStatus,
    allowed: Iterable[CampaignStatus],
    reason: str = "",
    *,
    watch: bool = False,
) -> CampaignStatus | None:
    """Set ``to`` if the status is one of ``allowed``; the status found, or None if not.
    ``watch``: the campaign joins the active index (housekeeping) with the change.

    Raises :class:`campaigns.CampaignNotFoundError`.
    """
    keys = [store.campaign_key(campaign_id), *([store.ACTIVE_ZSET] if watch else [])]
    found, changed = r.eval(
        _TRANSITION,
        len(keys),
        *keys,
        to.value,
        reason,
        *([campaign_id] if watch else []),
        *(s.value for s in allowed),
    )
    if not found:
        raise campaigns.CampaignNotFoundError(campaign_id)
    return CampaignStatus(str(found)) if int(changed) else None


EXPIRED_REASON = "expires_at passed"


async def expire_now(r: aioredis.Redis, campaign_id: str) -> None:
    """A batch found ``expires_at`` passed before beat did: the campaign is ``expired``
    from this moment (its unsent messages are settled by their batches and by beat's
    :func:`expire_due`), so that settling its last message never reads as ``completed``."""
    allowed = (_S.DRAFT, _S.SCHEDULED, _S.RUNNING, _S.PAUSED)
    key = store.campaign_key(campaign_id)
    await r.eval(_TRANSITION, 1, key, _S.EXPIRED.value, EXPIRED_REASON, *(s.value for s in allowed))


# A batch's pause of its running campaign, with its own resume time (ARGV[2], '' for none)
# set in the same step: apart, a person's pause landing between the two was overridden by
# the resume at midnight.
_PAUSE_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', 'paused', 'reason', ARGV[1], 'status_at', t[1])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'resume_at')
else
  redis.call('HSET', KEYS[1], 'resume_at', ARGV[2])
end
return 1
"""


async def pause_running(
    r: aioredis.Redis, campaign_id: str, reason: str, resume_at: float | None = None
) -> bool:
    """A batch met what a person must fix (credentials, a used-up quota): the campaign
    pauses with ``reason``, unless it is no longer running (a cancel that landed meanwhile
    stands); whether it paused. ``resume_at``: when housekeeping resumes it by itself
    (our own daily quota's room again, :func:`resume_by_itself`), unless someone moves it
    first."""
    key = store.campaign_key(campaign_id)
    at = "" if resume_at is None else repr(resume_at)
    return bool(int(await r.eval(_PAUSE_RUNNING, 1, key, reason, at)))


RESUME_AT_FIELD = "resume_at"  # a campaign's own resume, after its pause (see pause_running)

# Its own resume, taken once and as read (two sweeps at once, or a person who paused,
# resumed or cancelled it meanwhile: the field is gone or another): running again, in the
# active index, in one step with the checks. ARGV: the resume time as read, the id, the
# failure breaker's field (cleared in the same step: see _RESUME).
_RESUME_BY_ITSELF = """
if redis.call('HGET', KEYS[1], 'status') ~= 'paused' then return 0 end
if redis.call('HGET', KEYS[1], 'resume_at') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
redis.call('HDEL', KEYS[1], 'resume_at', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'reason', '', 'status_at', t[1])
redis.call('ZADD', KEYS[2], t[1], ARGV[2])
return 1
"""


def resume_by_itself(
    campaign_id: str, resume_at: str, *, client: redis.Redis, enqueue: EnqueueBatch | None = None
) -> bool:
    """Resume a campaign its own daily quota paused, at ``resume_at`` (as read: a person's
    move since stands); whether it resumed. Its batches are handed out after the status
    changed: one a person pauses meanwhile stops at once, sending nothing."""
    key = store.campaign_key(campaign_id)
    keys = (key, store.ACTIVE_ZSET)
    breaker = store.BREAKER_FIELD
    if not client.eval(_RESUME_BY_ITSELF, len(keys), *keys, resume_at, campaign_id, breaker):
        return False
    # (The reputation guard stays on: no person chose to send despite it.)
    _hand_out(client, campaign_id, enqueue)
    return True


def _refuse(campaign_id: str, operation: str, r: redis.Redis) -> CampaignStateError:
    status = campaign_reads.get_status(campaign_id, r)
    return CampaignStateError(
        f"campaign {campaign_id!r} is {status}: it cannot be {operation}", field="status"
    )


# -- pause / resume ----------------------------------------------------------------------


def pause(campaign_id: str, *, client: redis.Redis | None = None) -> dict[str, Any]:
    """Pause a running or scheduled campaign (a paused one stays paused); its summary.

    Sending stops within a second: running batches see the status and stop taking
    messages. Raises :class:`campaigns.CampaignNotFoundError`, :class:`CampaignStateError`.
    """
    r = client or store.sync_client()
    found = _transition(r, campaign_id, _S.PAUSED, (_S.RUNNING, _S.SCHEDULED, _S.PAUSED))
    if found is None:
        raise _refuse(campaign_id, "paused", r)
    if found is _S.SCHEDULED:
        r.zrem(store.SCHEDULED_ZSET, campaign_id)
    return campaign_reads.campaign_summary(campaign_id, r)


# Resume in one step: the status, whether the campaign ever started and the change are
# read and made together (apart, a pause landing between them let a resume set a campaign
# that never started ``running``, sending before its send_at). One paused before it
# started goes back to ``scheduled`` and into the schedule as due now, so that beat's
# release deals with it if the start that follows does not happen (it schedules it again
# for its send_at, starts it, or pauses it with the reason); one not started and already
# ``scheduled`` was resumed before (a repeat of the request, another client). A started
# one runs again and joins the active index (KEYS[3]), its failure breaker (ARGV[2])
# counting afresh from the same step: cleared a round trip later, a batch taken by a
# worker in between added its failures to the old count and paused it again at once.
# Returns {status found, outcome}: 'scheduled', 'waiting', 'running', or '' (refused).
_RESUME = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'', ''} end
local t = redis.call('TIME')
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  if cur == 'scheduled' then return {cur, 'waiting'} end
  if cur ~= 'paused' then return {cur, ''} end
  redis.call('HDEL', KEYS[1], 'resume_at')
  redis.call('HSET', KEYS[1], 'status', 'scheduled', 'reason', '', 'status_at', t[1])
  redis.call('ZADD', KEYS[2], t[1], ARGV[1])
  return {cur, 'scheduled'}
end
if cur ~= 'paused' and cur ~= 'running' then return {cur, ''} end
redis.call('HDEL', KEYS[1], 'resume_at', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'running', 'reason', '', 'status_at', t[1])
redis.call('ZADD', KEYS[3], t[1], ARGV[1])
return {cur, 'running'}
"""


def resume(
    campaign_id: str, *, client: redis.Redis | None = None, enqueue: EnqueueBatch | None = None
) -> dict[str, Any]:
    """Resume a paused campaign (or nudge a running one): every batch is handed out again.

    A campaign paused before it started goes back through ``start`` (and waits for its
    ``send_at`` if that is still ahead); resuming it again while it waits changes
    nothing. Raises :class:`campaigns.CampaignNotFoundError`, :class:`CampaignStateError`
    for a campaign that is not paused, running or waiting for its ``send_at``.
    """
    r = client or store.sync_client()
    key = store.campaign_key(campaign_id)
    # The guard stands down first: a callback batch applied between the two would
    # otherwise find the campaign running with the guard still on, and pause it again.
    reputation.stand_down(r, campaign_id)
    keys = (key, store.SCHEDULED_ZSET, store.ACTIVE_ZSET)
    found, outcome = r.eval(_RESUME, len(keys), *keys, campaign_id, store.BREAKER_FIELD)
    if not found:
        raise campaigns.CampaignNotFoundError(campaign_id)
    if outcome == "scheduled":
        with contextlib.suppress(CampaignStateError):  # started (or paused) meanwhile
            campaigns.start_campaign(campaign_id, client=r, enqueue=enqueue)
    if outcome != "running":
        if not outcome:
            raise CampaignStateError(
                f"campaign {campaign_id!r} is {found}: it cannot be resumed", field="status"
            )
        return campaign_reads.campaign_summary(campaign_id, r)
    _hand_out(r, campaign_id, enqueue)
    return campaign_reads.campaign_summary(campaign_id, r)


def _hand_out(r: redis.Redis, campaign_id: str, enqueue: EnqueueBatch | None) -> None:
    """Every batch of a campaign that runs again, handed out (each skips what was sent).
    (Its failure breaker was cleared with the status.)"""
    key = store.campaign_key(campaign_id)
    # Counted once running: a campaign create_campaign still fills has no ``batches``
    # yet, and the batches it stored while paused ran (and left) before this; those it
    # stores from now on it hands out itself.
    size = int(r.hget(key, "batch_size") or get_settings().batch_size)
    batches = max(
        campaign_reads.batch_count(campaign_id, r), math.ceil(stored_count(r, campaign_id) / size)
    )
    with batch_enqueue.batch_enqueuer(enqueue) as send:
        for batch in range(batches):
            send(campaign_id, batch)
    campaigns.finish_if_done(campaign_id, r)


# -- settling unsent messages (cancel, expiry) ---------------------------------------------


async def _provider_of(r: aioredis.Redis, campaign_id: str) -> str:
    """The campaign's provider nickname: what its messages' outcomes are counted under."""
    return str(await r.hget(store.campaign_key(campaign_id), "provider") or "")


# Messages a cancel (or beat's expiry) settles before it answers: a campaign with more
# recipients is handed to a worker (the ``dispatch.settle_ended`` task), so the answer
# never waits for millions of ledger writes (2.24 million took 23 s: past a proxy's
# timeout). Whatever the size, nothing is sent after the answer: the ledger refuses a
# batch's claim once its campaign has ended (dispatch.ledger).
INLINE_SETTLE_LIMIT = 20_000
SETTLE_WINDOW = 4000  # messages settled by one script call (a few ms of Redis's time)

# Settles the messages ARGV[1] .. ARGV[2] - 1 that are still queued (no record) or
# waiting for a retry as ARGV[3], at time ARGV[4], counted under provider ARGV[5], in one
# step: no record travels to the client and back. A queued message takes one record
# shared by all; one waiting for a retry keeps what its record says of its tries (its
# attempts, throttled tries, last error class and detail: why it had not gone out), only
# its state and time changing and its next attempt gone. Its record is rewritten as text
# (a quote inside a JSON string is escaped, so ',"t":' and ',"n":' are only ever keys),
# once per distinct record: messages that failed alike share one (ledger.Records). The
# counters move as the ledger's script moves them (dispatch.ledger._APPLY: queued ->
# the terminal state, once per message, and the provider's outcome tally), and the
# campaign's ``progress_at`` says someone is on it (housekeeping waits). A message a
# worker holds (``claimed``) is left to it; its seq comes back so that its batch is
# handed out again. Returns {settled, {claimed seq, ...}, {fault, ...}} (a count that
# could not move: ledger.MOVE_COUNT); {-1, {}, {}} for a campaign the retention purge
# emptied (dispatch.retention): every seq would read as queued.
_SETTLE_WINDOW = (
    MOVE_COUNT
    + r"""
local ledger, counters, stats, campaign = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HEXISTS', campaign, 'purged_at') == 1 then return {-1, {}, {}} end
local first, stop, state, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local match, find, sub = string.match, string.find, string.sub
local PIECE = 2000  -- arguments per command: Lua's C stack holds a few thousand
local fields, claimed, settled, made = {}, {}, 0, {}  -- made: the new record by the old
local head = '{"s":"' .. state .. '"'
local fresh = head .. ',"a":0,"t":' .. now .. '}'
local after = #'{"s":"retry"' + 1
local function ended(rec)  -- a retry's record, settled: plain searches (no patterns)
  local t = find(rec, ',"t":', after, true)
  if not t then return head .. sub(rec, after) end
  local rest = find(rec, '[,}]', t + 5)
  local n = find(rec, ',"n":', rest, true)
  if n then return head .. sub(rec, after, t - 1) .. ',"t":' .. now .. sub(rec, rest, n - 1)
    .. sub(rec, (find(rec, '[,}]', n + 5))) end
  return head .. sub(rec, after, t - 1) .. ',"t":' .. now .. sub(rec, rest)
end
for from = first, stop - 1, PIECE do
  local seqs = {}
  for seq = from, math.min(stop, from + PIECE) - 1 do seqs[#seqs + 1] = seq end
  local recs = redis.call('HMGET', ledger, unpack(seqs))
  for i = 1, #seqs do
    local rec = recs[i]
    local old = rec and match(rec, '^{"s":"(%a+)"')
    if old == 'claimed' then claimed[#claimed + 1] = seqs[i] end
    if not rec or old == 'retry' then
      local new = fresh
      if rec then
        new = made[rec]
        if not new then
          new = ended(rec)
          made[rec] = new
        end
      end
      settled = settled + 1
      fields[settled * 2 - 1] = seqs[i]
      fields[settled * 2] = new
    end
  end
end
for i = 1, #fields, PIECE do
  redis.call('HSET', ledger, unpack(fields, i, math.min(#fields, i + PIECE - 1)))
end
if settled > 0 then
  move(counters, 'queued', -settled)
  move(counters, state, settled)
  move(stats, ARGV[5] .. '|' .. state, settled)
end
redis.call('HSET', campaign, 'progress_at', redis.call('TIME')[1])
return {settled, claimed, faults}
"""
)

SettleLater = Callable[[str, CampaignStatus], None]


@dataclass
class _Settled:
    count: int = 0
    batches_with_claims: set[int] = field(default_factory=set)


def _settle(campaign_id: str, state: MessageState, r: redis.Redis) -> _Settled:
    """Give every message still queued or waiting for a retry the terminal ``state``,
    :data:`SETTLE_WINDOW` messages a round trip. Raises ``redis.RedisError`` (what it
    settled stays settled; running it again finishes the rest)."""
    key = store.campaign_key(campaign_id)
    batch_size, provider = r.hmget(key, ["batch_size", "provider"])
    per_batch = int(batch_size or get_settings().batch_size)
    keys = [
        store.ledger_key(campaign_id),
        store.counters_key(campaign_id),
        store.MESSAGE_STATS_HASH,
        key,
    ]
    script = r.register_script(_SETTLE_WINDOW)
    total = stored_count(r, campaign_id)
    out = _Settled()
    for start in range(0, total, SETTLE_WINDOW):
        stop = min(start + SETTLE_WINDOW, total)
        now = f"{time.time():.3f}"
        settled, claimed, faults = script(
            keys=keys, args=[start, stop, state.value, now, provider or "unknown"]
        )
        if faults:
            log.error("settling %s moved no count of: %s", campaign_id, "; ".join(faults))
        if int(settled) < 0:  # purged: nothing is left to settle
            break
        out.count += int(settled)
        out.batches_with_claims.update(int(seq) // per_batch for seq in claimed)
    return out


def _settle_in_a_worker(campaign_id: str, status: CampaignStatus) -> None:
    """Hand the settling of an ended campaign to the workers (``dispatch.settle_ended``)."""
    from dispatch.tasks import settle_ended as task

    task.apply_async((campaign_id, status.value))


def _end(
    campaign_id: str,
    status: CampaignStatus,
    reason: str,
    r: redis.Redis,
    enqueue: EnqueueBatch | None,
    settle_later: SettleLater | None,
) -> CampaignStatus | None:
    """Move a campaign that is not finished to ``status`` and settle its unsent messages:
    here, or for a campaign of more than :data:`INLINE_SETTLE_LIMIT` recipients by a
    worker right after (``settle_later``; None: the ``dispatch.settle_ended`` task).

    The campaign joins the active index in the same step as its status changes, so that
    housekeeping settles what a lost or interrupted settling left (a worker killed, Redis
    restarted). Batches that hold a message claimed by a worker are handed out again: a
    live worker records its outcome itself, and for a dead one the batch's next run
    records ``unknown``. Returns the status found, or None when the campaign was already
    finished.
    """
    found = _transition(
        r,
        campaign_id,
        status,
        (_S.DRAFT, _S.SCHEDULED, _S.RUNNING, _S.PAUSED),
        reason,
        watch=True,
    )
    if found is None:
        return None
    r.zrem(store.SCHEDULED_ZSET, campaign_id)
    if found is _S.DRAFT:  # nothing appends any more: its set of addresses is dead data
        r.unlink(store.addresses_key(campaign_id))
    if stored_count(r, campaign_id) > INLINE_SETTLE_LIMIT:
        (settle_later or _settle_in_a_worker)(campaign_id, status)
    else:
        settle_ended(campaign_id, status, r, enqueue)
    return found


def settle_ended(
    campaign_id: str, status: CampaignStatus, r: redis.Redis, enqueue: EnqueueBatch | None
) -> int:
    """Settle the unsent messages of a campaign that ended ``status`` (cancelled,
    expired) as it says, and hand out again the batches that hold a worker's claim (a
    live worker records its outcome, a dead one's ends ``unknown``); how many settled.

    Called by a cancel or the expiry (or, for a big campaign, the task they hand it
    to), and by housekeeping for an ended campaign whose messages are still unsent: a
    settling that was interrupted, a batch that found ``expires_at`` passed and expired
    the campaign (beat's expiry then finds nothing to do), the tasks of its other batches
    that died with their worker. Raises ``redis.RedisError``.
    """
    settled = _settle(campaign_id, MessageState(status.value), r)
    with batch_enqueue.batch_enqueuer(enqueue) as send:
        for batch in sorted(settled.batches_with_claims):
            send(campaign_id, batch)
    return settled.count


def cancel(
    campaign_id: str,
    *,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
    settle_later: SettleLater | None = None,
) -> dict[str, Any]:
    """Cancel a campaign: every message not sent yet ends ``cancelled``; its summary.

    Nothing is sent after it returns (a message on the wire ends as it really does). A
    campaign of more than :data:`INLINE_SETTLE_LIMIT` recipients answers at once, its
    summary still counting ``queued`` what a worker settles right after (see
    :func:`_end`). Cancelling a cancelled campaign changes nothing. Raises
    :class:`campaigns.CampaignNotFoundError`, :class:`CampaignStateError` when it has
    completed or expired.
    """
    r = client or store.sync_client()
    found = _end(campaign_id, _S.CANCELLED, "cancelled", r, enqueue, settle_later)
    if found is None and campaign_reads.get_status(campaign_id, r) is not _S.CANCELLED:
        raise _refuse(campaign_id, "cancelled", r)
    return campaign_reads.campaign_summary(campaign_id, r)


def _completed_by_expiry(campaign_id: str, r: redis.Redis) -> bool:
    """A running campaign's batches settle what they find unsent ``expired`` themselves
    once ``expires_at`` has passed (``batch_items.terminal_state``), and the ledger write
    that settles the last queued message completes the campaign. Such a campaign did not
    complete: it expired (DESIGN §5), and says so. Whether it was moved to ``expired``."""
    if int(campaign_reads.get_counters(campaign_id, r).get("expired", 0)) <= 0:
        return False
    moved = _transition(r, campaign_id, _S.EXPIRED, (_S.COMPLETED,), EXPIRED_REASON)
    return moved is not None


def expire_due(
    *,
    now: float | None = None,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
    settle_later: SettleLater | None = None,
) -> list[str]:
    """Expire every unfinished campaign whose ``expires_at`` has passed (beat); their ids
    (a big one's messages are settled by a worker right after, as for :func:`cancel`)."""
    r = client or store.sync_client()
    # On Redis's clock, whichever worker runs it (one whose clock ran ahead expired
    # campaigns that long early).
    due = r.zrangebyscore(store.EXPIRING_ZSET, 0, store.redis_time(r) if now is None else now)
    expired = []
    for member in due:
        campaign_id = str(member)
        # One it cannot read stays due (tried again at the next tick), the others expire.
        with beat_pass.skipped_on_error(log, "expiry", campaign_id, r):
            try:
                ended = _end(campaign_id, _S.EXPIRED, EXPIRED_REASON, r, enqueue, settle_later)
                if ended is not None or _completed_by_expiry(campaign_id, r):
                    expired.append(campaign_id)
                else:
                    status = r.hget(store.campaign_key(campaign_id), "status")
                    beat_pass.known_status(campaign_id, status)
            except campaigns.CampaignNotFoundError:
                pass
            r.zrem(store.EXPIRING_ZSET, campaign_id)
    return expired


# -- scheduled release -------------------------------------------------------------------

# A campaign still in the schedule that is not ``scheduled`` any more (started by another
# release, or left behind) leaves it; one a resume scheduled again meanwhile stays.
_UNSCHEDULE_IF_NOT_SCHEDULED = """
if redis.call('HGET', KEYS[1], 'status') == 'scheduled' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def release_due(
    *,
    now: float | None = None,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
) -> list[str]:
    """Start every scheduled campaign whose ``send_at`` has come (beat); the ids started.

    A campaign leaves the schedule only in the script that starts it
    (:func:`campaigns.start_campaign`), never before: a release that fails half-way (Redis
    restarted, the worker died) is done again at beat's next tick instead of leaving the
    campaign ``scheduled`` for ever, and two releases at once (two beat processes by
    mistake) start it once, the other finding it running. One that cannot start for
    another reason is paused with it (one a script of Redis's cannot read too). Raises the
    errors of Redis as a whole (``beat_pass.redis_wide``).
    """
    r = client or store.sync_client()
    # On Redis's clock, as start_campaign decides (campaigns.send_later): one worker
    # whose clock ran ahead released each campaign whose release it took that long early.
    due = r.zrangebyscore(store.SCHEDULED_ZSET, 0, store.redis_time(r) if now is None else now)
    started = []
    for member in due:
        campaign_id = str(member)
        # (What even its pause cannot deal with, a Redis error of its own, is logged and
        # tried again at the next tick; the campaigns due after it start.)
        with beat_pass.skipped_on_error(log, "scheduled release", campaign_id, r):
            try:
                campaigns.start_campaign(campaign_id, client=r, enqueue=enqueue)
                started.append(campaign_id)
            except campaigns.CampaignStateError:
                key = store.campaign_key(campaign_id)
                beat_pass.known_status(campaign_id, r.hget(key, "status"))
                r.eval(_UNSCHEDULE_IF_NOT_SCHEDULED, 2, key, store.SCHEDULED_ZSET, campaign_id)
            except campaigns.CampaignNotFoundError:  # gone
                r.zrem(store.SCHEDULED_ZSET, campaign_id)
            except Exception as exc:
                if beat_pass.redis_wide(exc):
                    raise  # Redis away: the next tick releases it
                # Neither retried at every tick nor allowed to hold up the campaigns due
                # after it: it waits, paused with the reason, for a person (resume starts
                # it). So does one whose data a script of Redis's could not read.
                log.exception("scheduled campaign %s not started", campaign_id)
                reason = f"could not start at send_at: {type(exc).__name__}: {exc}"[:500]
                if _transition(r, campaign_id, _S.PAUSED, (_S.SCHEDULED,), reason) is not None:
                    r.zrem(store.SCHEDULED_ZSET, campaign_id)
                    provider = str(r.hget(store.campaign_key(campaign_id), "provider") or "")
                    kind = incidents.PauseKind.START_FAILED
                    incidents.paused_sync(r, campaign_id, provider, kind, reason)
    return started


# -- retry-failed ------------------------------------------------------------------------

_SMTP_CODE = re.compile(r"\b([2-5])\d\d\b")
# Refusals of earlier versions' workers that this one sends (a worker not yet upgraded
# took a message of a newer API: README, Upgrading): retried despite their class.
_EARLIER_REFUSALS = re.compile(
    r".*: local part is not ASCII; it needs SMTPUTF8 \(RFC 6531\), which dispatch does not send"
    r"|no value for \$\$(UnsubscribeURL|PreferencesURL)(, \$\$(UnsubscribeURL|PreferencesURL))?"
    r" for this recipient"
)


# The server could not take the address (no SMTPUTF8, providers.smtp): not the address's
# fault, so a retry once the provider offers it (another server, an upgrade) may pass.
_WANTS_SMTPUTF8 = re.compile(r".* SMTPUTF8 \(RFC 6531\), which the server .* does not offer")


# A payload placeholder with no value (providers.placeholders): recipients and campaign
# vars are checked against the provider's placeholders when stored, so at send time it
# came with the provider saved again since (a person's change, undone by saving it
# again), not with the message's data.
_PROVIDER_PLACEHOLDER = re.compile(
    r"no value for \$\$\w+(, \$\$\w+)* for (this recipient|the campaign \(campaign level\))"
)


def is_retryable(error_class: str, detail: str) -> bool:
    """Whether a failed message may succeed if sent again.

    Not retried: ``Invalid message`` (the recipient's own data cannot be sent, DESIGN §2
    note in ``providers.errors``), and ``SMTP invalid email ID`` when the server refused
    the address for good (a 5xx reply). A recipient refused with a 4xx reply that ran out
    of attempts during an outage is retried, and so is one the server could not take for
    want of SMTPUTF8 (the provider may offer it now). Every other class (connection, timeout, the
    server or HTTP provider refusing the message) may pass once the provider is fixed.
    Retried whatever their class: what a worker of an earlier version refused and this
    one sends (:data:`_EARLIER_REFUSALS`), and a payload placeholder left without a value
    by a provider saved again after the messages were stored (:data:`_PROVIDER_PLACEHOLDER`).
    """
    if _EARLIER_REFUSALS.fullmatch(detail) or _PROVIDER_PLACEHOLDER.fullmatch(detail):
        return True
    if error_class == ErrorClass.INVALID_MESSAGE.value:
        return False
    if error_class == ErrorClass.INVALID_RECIPIENT.value:
        if _WANTS_SMTPUTF8.fullmatch(detail):
            return True
        match = _SMTP_CODE.search(detail)
        return match is not None and match.group(1) == "4"
    return True


@dataclass
class RetryReport:
    """What retry-failed did."""

    retried: int = 0
    skipped_not_retryable: int = 0
    skipped_already_retried: int = 0
    batches: set[int] = field(default_factory=set)


async def _requeue_failed(
    r: aioredis.Redis, campaign_id: str, batch_size: int, report: RetryReport
) -> None:
    """Queue the retryable failures again, a window of :data:`WINDOW` messages at a time
    in two round trips (read; mark retried and write, one step), whatever their count:
    each message its own command, a campaign with 900,000 failures took the API 52 s."""
    provider = await _provider_of(r, campaign_id)
    writer = LedgerWriter(r, campaign_id, provider=provider, retrying=True)
    total = await stored_count_async(r, campaign_id)
    for start in range(0, total, WINDOW):
        found = await records_between(r, campaign_id, start, min(start + WINDOW, total))
        failed: list[tuple[int, dict[str, Any]]] = []
        for seq, raw in sorted(found.items()):
            rec = parse_record(raw)
            if rec is None or rec["state"] != MessageState.FAILED.value:
                continue
            if not is_retryable(rec["error_class"], rec["detail"]):
                report.skipped_not_retryable += 1
                continue
            failed.append((seq, rec))
        if not failed:
            continue
        records = Records()  # messages that failed alike share one record (one group)
        # attempts start again: the message gets the normal retry policy once more.
        writes = [
            (
                seq,
                records.get(
                    MessageState.RETRY,
                    error_class=rec["error_class"],
                    detail=f"queued again by retry-failed after: {rec['detail']}",
                ),
                "",
            )
            for seq, rec in failed
        ]
        for (seq, _), first_time in zip(failed, await writer.retry_once_many(writes), strict=True):
            if not first_time:  # retried before (or no longer failed)
                report.skipped_already_retried += 1
                continue
            report.batches.add(seq // batch_size)
            report.retried += 1


def retry_failed(
    campaign_id: str, *, client: redis.Redis | None = None, enqueue: EnqueueBatch | None = None
) -> tuple[RetryReport, dict[str, Any]]:
    """Queue the campaign's retryable failed messages again, each at most once.

    A completed campaign runs again; a paused one stays paused (resume sends them).
    Returns the report and the campaign's summary. Raises
    :class:`campaigns.CampaignNotFoundError`, :class:`CampaignStateError` unless the
    campaign is running, paused or completed and its ``expires_at`` (if any) is ahead.
    """
    r = client or store.sync_client()
    status = campaign_reads.get_status(campaign_id, r)
    retention.ensure_not_purged(r, campaign_id)
    if status not in (_S.RUNNING, _S.PAUSED, _S.COMPLETED):
        raise _refuse(campaign_id, "retried", r)
    expires_at = campaign_reads.load_content(campaign_id, r).expires_at
    if expires_at is not None and expires_at <= datetime.now(UTC):
        # Queued again, they could only end ``expired``: their failures would be lost.
        raise CampaignStateError(
            f"campaign {campaign_id!r} expired at {expires_at.isoformat()}: "
            "its failed messages cannot be sent again",
            field="expires_at",
        )
    batch_size = int(
        r.hget(store.campaign_key(campaign_id), "batch_size") or get_settings().batch_size
    )
    report = RetryReport()

    async def go() -> None:
        client = store.async_client()
        try:
            await _requeue_failed(client, campaign_id, batch_size, report)
        finally:
            await client.aclose()

    asyncio.run(go())
    # A completed campaign with messages queued: an earlier retry-failed wrote them and
    # stopped before it set the campaign running (Redis failed, the process died). They
    # are marked retried, so this one finds none to queue: it finishes that one's work,
    # or they stay queued for ever (nothing sends a completed campaign's messages).
    stranded = (
        status is _S.COMPLETED and int(r.hget(store.counters_key(campaign_id), "queued") or 0) > 0
    )
    if report.retried or stranded:
        r.hdel(store.campaign_key(campaign_id), store.BREAKER_FIELD)  # counts afresh
        # Joins the active index in the same step: housekeeping restarts it if the
        # batches handed out below are lost.
        _transition(r, campaign_id, _S.RUNNING, (_S.COMPLETED, _S.RUNNING), watch=True)
        status = campaign_reads.get_status(campaign_id, r)
        if status is _S.RUNNING and stranded:
            _hand_out(r, campaign_id, enqueue)  # which batches hold them is not known
        elif status is _S.RUNNING:
            with batch_enqueue.batch_enqueuer(enqueue) as send:
                for batch in sorted(report.batches):
                    send(campaign_id, batch)
        elif status in (_S.CANCELLED, _S.EXPIRED):
            # A cancel (or the expiry) landed while they were queued again: it settled
            # what was unsent before these were written, so they end as it says.
            _settle(campaign_id, MessageState(status.value), r)
    return report, campaign_reads.campaign_summary(campaign_id, r)
