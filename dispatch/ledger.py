"""The per-message ledger: claim before send, record after, counters and events atomically.

Every state change of a message goes through one Lua script that (1) checks the batch
lease, so a worker that lost its lease can never write, (2) moves the message's record,
(3) moves the campaign counters from the old state's bucket to the new one and (4) appends
the system event to ``dispatch:events``. Claims only succeed on a message that is still
queued or waiting for a retry, so a redelivered batch skips everything already sent, and
a claim to send only while the campaign has not ended (cancelled, expired).

:class:`LedgerWriter` coalesces the claims and records of all concurrent senders of a
batch into one script call per round trip (group commit): a claim still happens before
each send, but the round trips are shared.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import faults, store
from dispatch.models import MessageState
from dispatch.settings import get_settings

log = logging.getLogger(__name__)

# Counter buckets: every non-terminal state counts as "queued".
#
# ARGV[3] carries the operations in groups, one line each, of messages that take the same
# record (a chunk's messages mostly do):
#   "<op><E|N>\t<record>\t<seq>,<seq>,...[\t<event>\t<event>...]"
# op "c" claims, "f" records, "u" records only over a message not settled yet (queued,
# waiting for a retry, or claimed by the caller: never over a terminal record someone
# else wrote, such as a cancel's), "s" records the outcome of a message the caller
# claimed under this lease (its record is "claimed": nobody else writes a claimed
# message, so it is not read); op "g" gives back a claim the caller did not attempt
# (only while the record is still "claimed": safe to repeat after a lost answer; no
# outcome: the per-provider tally of /metrics does not count it); with "E" one event
# follows per seq ("" for none). Op "r" (retry-failed's) records only over a "failed"
# message never retried this way, marking it in the campaign's retried set (KEYS[7]:
# that writer has no category) in the same step. "c", "u", "g" and "r" answer '0' for a
# message they left as it was. Op "k" claims like "c", but its "E" slot holds the
# message's address key (not an event): an address on the suppression list (KEYS[7]) or
# opted out of the campaign's category (KEYS[8]) since the batch was loaded is recorded
# suppressed (record ARGV[5] or ARGV[6]) instead, answered '2'. JSON never holds a raw
# tab or newline, so everything splits with plain string searches, and each
# command runs once for the whole list (HMGET, HSET, HINCRBY) instead of once per
# message; only XADD is per message: one stream entry per event (DESIGN section 6).
# An "s" group may carry "T" instead: its events are one template's, filled per message:
#   "sT\t<record>\t<seqs>\t<head>\t<middle>\t<tail>\t<email>\t<meta>\t<email>\t<meta>..."
# each event is head .. email .. middle .. meta .. tail (LedgerWriter.settle_sent_many:
# about 90 bytes a message to send instead of 250, one JSON encoding a chunk in Python).
# Records start with {"s":"<state>" so a state is read without decoding the record.
# Moves a count after a script's records are written: Redis does not undo a script's
# writes when it raises, and an HINCRBY raises on a field that is not an integer (a hand
# edit, a bug) or a key of another type. Raising there lost every move and write after
# it (the campaign's other counters, its completion; in the shared per-provider tally,
# every campaign's) while the records stayed written, so a retry found nothing to do.
# Now only that field's move is lost, named in ``faults`` for the caller to log.
MOVE_COUNT = r"""
local faults = {}
local function move(key, field, by)
  local moved = redis.pcall('HINCRBY', key, field, by)
  if type(moved) == 'table' and moved.err then
    faults[#faults + 1] = key .. ' ' .. field .. ': ' .. moved.err
  end
end
"""

_APPLY = (
    MOVE_COUNT
    + r"""
local ledger, counters, stream, lease, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, maxlen, blob, provider = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if token ~= '' and redis.call('GET', lease) ~= token then return '-' end
local find, sub, match, gmatch = string.find, string.sub, string.match, string.gmatch
local PIECE = 2000  -- arguments per command: Lua's C stack holds a few thousand
local groups, seqs = {}, {}
local pos, size = 1, #blob
while pos <= size do
  local stop = (find(blob, '\n', pos, true) or size + 1) - 1
  local t1 = pos + 2
  local t2 = find(blob, '\t', t1 + 1, true)
  local t3 = find(blob, '\t', t2 + 1, true)
  if t3 and t3 > stop then t3 = nil end
  local g = {op = sub(blob, pos, pos), rec = sub(blob, t1 + 1, t2 - 1), first = #seqs + 1}
  for seq in gmatch(sub(blob, t2 + 1, (t3 or stop + 1) - 1), '%d+') do seqs[#seqs + 1] = seq end
  g.last = #seqs
  local mark = sub(blob, pos + 1, pos + 1)
  if mark == 'E' then g.events = t3 + 1; g.stop = stop end
  if mark == 'T' then
    local a = find(blob, '\t', t3 + 1, true)
    local b = find(blob, '\t', a + 1, true)
    local c = find(blob, '\t', b + 1, true)
    g.head, g.middle = sub(blob, t3 + 1, a - 1), sub(blob, a + 1, b - 1)
    g.tail = sub(blob, b + 1, c - 1)
    g.events = c + 1; g.stop = stop
  end
  groups[#groups + 1] = g
  pos = stop + 2
end
local need, at = {}, {}  -- the seqs whose current record is read (not "s" groups)
for _, g in ipairs(groups) do
  if g.op ~= 's' then
    for i = g.first, g.last do need[#need + 1] = seqs[i]; at[#at + 1] = i end
  end
end
-- What a group wrote is read again only by a later group that reads records (not "s"):
-- without one (a chunk's outcomes), "s" groups leave ``latest`` alone.
local track = #need > 0
local olds = {}
for first = 1, #need, PIECE do
  local part = redis.call('HMGET', ledger, unpack(need, first, math.min(#need, first + PIECE - 1)))
  for i = 1, #part do olds[at[first + i - 1]] = part[i] end
end
local terminal = {sent=1, failed=1, suppressed=1, cancelled=1, expired=1, unknown=1}
-- A claim to send is refused once the campaign has ended: a cancel (or the expiry)
-- answers before a worker has settled a big campaign's messages, and a batch that has
-- not seen the status yet must not send them meanwhile.
local ended = nil
local function has_ended()
  if ended == nil then
    local status = KEYS[6] and redis.call('HGET', KEYS[6], 'status')
    ended = status == 'cancelled' or status == 'expired'
  end
  return ended
end
local function bucket(state)
  if state and terminal[state] then return state end
  return 'queued'
end
local out, fields, delta, tally, latest, added = {}, {}, {}, {}, {}, false
for _, g in ipairs(groups) do
  local new = match(g.rec, '^{"s":"(%a+)"')
  local nb = bucket(new)
  if g.op == 's' then
    -- The caller's own claims (see above): nothing to read, one count per group.
    local rec, evpos, stop, nf = g.rec, g.events, g.stop, #fields
    local head, middle, tail = g.head, g.middle, g.tail
    for i = g.first, g.last do
      local seq = seqs[i]
      if track then latest[seq] = new end
      fields[nf + 1] = seq
      fields[nf + 2] = rec
      nf = nf + 2
      if head then  -- this message's email and meta, each up to the next tab
        local tab = find(blob, '\t', evpos, true)
        local tab2 = find(blob, '\t', tab + 1, true)
        if not tab2 or tab2 > stop then tab2 = stop + 1 end
        redis.call('XADD', stream, '*', 'json',
          head .. sub(blob, evpos, tab - 1) .. middle .. sub(blob, tab + 1, tab2 - 1) .. tail)
        added = true
        evpos = tab2 + 1
      elseif evpos then
        local tab = find(blob, '\t', evpos, true)
        if not tab or tab > stop then tab = stop + 1 end
        if tab > evpos then
          redis.call('XADD', stream, '*', 'json', sub(blob, evpos, tab - 1))
          added = true
        end
        evpos = tab + 1
      end
      out[i] = '1'
    end
    local count = g.last - g.first + 1
    if nb ~= 'queued' then
      delta['queued'] = (delta['queued'] or 0) - count
      delta[nb] = (delta[nb] or 0) + count
    end
    if new ~= 'claimed' then tally[new] = (tally[new] or 0) + count end
  else
    local op = g.op
    local evpos = g.events
    for i = g.first, g.last do
      local event = nil
      if evpos then  -- this message's event: up to the next tab (or the line's end)
        local tab = find(blob, '\t', evpos, true)
        if not tab or tab > g.stop then tab = g.stop + 1 end
        if tab > evpos then event = sub(blob, evpos, tab - 1) end
        evpos = tab + 1
      end
      local seq = seqs[i]
      local old = latest[seq]
      if old == nil then old = olds[i] and match(olds[i], '^{"s":"(%a+)"') or false end
      local refused = false
      local address = nil
      if op == 'k' then address = event; event = nil end
      if op == 'c' or op == 'k' then
        refused = (old and old ~= 'retry') or (new == 'claimed' and has_ended())
      elseif op == 'u' then
        refused = old and terminal[old]
      elseif op == 'r' then
        refused = old ~= 'failed' or redis.call('SADD', KEYS[7], seq) == 0
      elseif op == 'g' then
        refused = old ~= 'claimed'
      end
      local rec, state, sb, answer = g.rec, new, nb, '1'
      if not refused and address and KEYS[8] then
        if redis.call('HEXISTS', KEYS[7], address) == 1 then
          rec, answer = ARGV[5], '2'
        elseif redis.call('SISMEMBER', KEYS[8], address) == 1 then
          rec, answer = ARGV[6], '2'
        end
        if answer == '2' then state, sb = 'suppressed', 'suppressed' end
      end
      if refused then
        out[i] = '0'
      else
        latest[seq] = state
        fields[#fields + 1] = seq
        fields[#fields + 1] = rec
        local ob = bucket(old or nil)
        if ob ~= sb then
          delta[ob] = (delta[ob] or 0) - 1
          delta[sb] = (delta[sb] or 0) + 1
        end
        if event then
          redis.call('XADD', stream, '*', 'json', event)
          added = true
        end
        -- Counted once per outcome: a retry again is a new attempt, a cancelled message
        -- written cancelled again (by its batch after the cancel) is not.
        if op ~= 'g' and state ~= 'claimed' and (state ~= old or not terminal[state]) then
          tally[state] = (tally[state] or 0) + 1
        end
        out[i] = answer
      end
    end
  end
end
for first = 1, #fields, PIECE do
  redis.call('HSET', ledger, unpack(fields, first, math.min(#fields, first + PIECE - 1)))
end
-- Trimmed once per call rather than per XADD (fewer arguments per event).
if added then redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen) end
for name, change in pairs(delta) do
  if change ~= 0 then move(counters, name, change) end
end
for state, count in pairs(tally) do
  move(stats, provider .. '|' .. state, count)
end
if KEYS[6] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[6], 'progress_at', t[1])
  -- The write that settles a running campaign's last queued message completes it (as
  -- campaigns.finish_if_done does), in the same step: no round trip after each batch.
  if (delta['queued'] or 0) < 0 and redis.call('HGET', KEYS[6], 'status') == 'running'
      and redis.call('HEXISTS', KEYS[6], 'appending') == 0
      and (tonumber(redis.call('HGET', counters, 'queued') or '0') or 1) <= 0 then
    redis.call('HSET', KEYS[6], 'status', 'completed',
      'completed_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  end
end
-- one character per operation, then the faults (none in an answer's characters)
return table.concat(out) .. '\n' .. table.concat(faults, '\n')
"""
)

# A lease held: its entry in the registry of leases (store.LEASES_ZSET), scored by the
# lease's expiry on Redis's clock (the one its key expires by). The scripts that take and
# renew a lease end with it, with ``lease``, ``leases`` and ``ttl`` (ms) set.
NOTE_LEASE_HELD = """
local now = redis.call('TIME')
redis.call('ZADD', leases, now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ttl), lease)
"""

# KEYS: the lease, the registry; ARGV: the token, the TTL (ms).
_ACQUIRE = (
    """
local lease, leases, ttl = KEYS[1], KEYS[2], ARGV[2]
if not redis.call('SET', lease, ARGV[1], 'NX', 'PX', ttl) then return 0 end
"""
    + NOTE_LEASE_HELD
    + "return 1"
)

_RENEW = (
    """
local lease, leases, ttl = KEYS[1], KEYS[2], ARGV[2]
if redis.call('GET', lease) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', lease, ttl)
"""
    + NOTE_LEASE_HELD
    + "return 1"
)

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], KEYS[1])
return redis.call('DEL', KEYS[1])
"""


# The records of a range of seqs that exist (a queued message has none), as
# [seq, record, ...]: the seqs are made here, not sent (the asyncio client encodes each
# argument in Python: a thousand of them cost more than the work they carry).
_RECORDS_BETWEEN = r"""
local seqs = {}
for seq = tonumber(ARGV[1]), tonumber(ARGV[2]) - 1 do seqs[#seqs + 1] = seq end
if #seqs == 0 then return {} end
local recs = redis.call('HMGET', KEYS[1], unpack(seqs))
local found = {}
for i = 1, #seqs do
  if recs[i] then
    found[#found + 1] = seqs[i]
    found[#found + 1] = recs[i]
  end
end
return found
"""


async def records_between(
    r: aioredis.Redis, campaign_id: str, start: int, stop: int
) -> dict[int, str]:
    """The ledger records of seqs ``start`` .. ``stop - 1`` that exist, by seq (at most a
    few thousand seqs a call)."""
    found = await r.eval(_RECORDS_BETWEEN, 1, store.ledger_key(campaign_id), start, stop)
    return {int(found[i]): found[i + 1] for i in range(0, len(found), 2)}


class LeaseLostError(RuntimeError):
    """Another worker owns this batch now, or its lease lapsed: stop writing at once."""

    def __init__(self, key: str) -> None:
        # What a failed send_batch task shows: the lease's key alone said nothing of why.
        super().__init__(
            f"{key}: this batch run no longer holds its lease (it lapsed, not renewed "
            "within its TTL: a stalled process, or renewals that failed, logged; or "
            "another run holds the batch now): it stopped writing"
        )
        self.key = key

    def __reduce__(self) -> tuple[type[LeaseLostError], tuple[str]]:
        # Pickled (a task's result, a pool's report) and read back from its key, not its
        # text: built around its own text, the message said everything twice.
        return (type(self), (self.key,))


def record(
    state: MessageState,
    *,
    attempts: int = 0,
    error_class: str = "",
    detail: str = "",
    next_at: float = 0.0,
    provider_message_id: str = "",
    throttles: int = 0,
) -> bytes:
    """A ledger record as stored (compact keys)."""
    data: dict[str, Any] = {"s": state.value, "a": attempts, "t": round(time.time(), 3)}
    if throttles:
        data["h"] = throttles
    if error_class:
        data["c"] = error_class
    if detail:
        data["d"] = detail[:500]
    if next_at:
        data["n"] = next_at
    if provider_message_id:
        data["p"] = provider_message_id
    return orjson.dumps(data)


class Records:
    """Records made at one moment, shared by the messages that take the same one.

    The ledger sends one group per distinct record, so a chunk whose messages all went
    out travels as one record and a list of seqs.
    """

    def __init__(self) -> None:
        self._made: dict[tuple[Any, ...], bytes] = {}

    def get(self, state: MessageState, attempts: int = 0, **fields: Any) -> bytes:
        """:func:`record`'s result for these arguments, made once."""
        key = (state, attempts, *fields.items())
        rec = self._made.get(key)
        if rec is None:
            rec = self._made[key] = record(state, attempts=attempts, **fields)
        return rec


@lru_cache(maxsize=64)
def claim_record(attempts: int) -> bytes:
    """The record of a claimed message: only the state and the attempt (hot, cached)."""
    return orjson.dumps({"s": MessageState.CLAIMED.value, "a": attempts})


def opted_out_detail(category: str) -> str:
    """The detail of a message not sent because its recipient switched ``category`` off."""
    return f'opted out of category "{category}" in the preference center'


def parse_record(raw: str | bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored record (encoded or decoded) with readable keys; None for a queued message."""
    if raw is None:
        return None
    data: dict[str, Any] = raw if isinstance(raw, dict) else orjson.loads(raw)
    return {
        "state": data["s"],
        "attempts": data.get("a", 0),
        "throttles": data.get("h", 0),
        "error_class": data.get("c", ""),
        "detail": data.get("d", ""),
        "next_at": data.get("n", 0.0),
        "provider_message_id": data.get("p", ""),
        "updated_at": data.get("t", 0.0),
    }


# DESIGN §6 "CT Source": the generic kinds report "Generic email" (Generic SMTP seed);
# the named ESPs (gmail, ses, sendgrid) report their kind. The same in Sent and Delivered.
GENERIC_SOURCE = "Generic email"
GENERIC_SOURCE_KINDS = frozenset({"smtp", "http"})


def ct_source(kind: str) -> str:
    """The ``CT Source`` property of a provider kind's system events."""
    return GENERIC_SOURCE if kind in GENERIC_SOURCE_KINDS else kind


def event_fields(
    event: str,
    *,
    email: str,
    campaign_id: str,
    meta: str,
    provider: str,
    properties: dict[str, Any] | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    """One entry of the ``dispatch:events`` stream (DESIGN §6), before encoding.

    A sender that records many events of one kind fills ``email`` and ``meta`` in one
    such dict per event instead of building each anew.
    """
    return {
        "event": event,
        "ts": ts if ts is not None else time.time(),
        "email": email,
        "campaign_id": campaign_id,
        "meta": meta,
        "provider": provider,
        "properties": properties or {},
    }


def system_event(event: str, **fields: Any) -> str:
    """One entry of the ``dispatch:events`` stream (DESIGN §6), as JSON text; ``fields``
    are :func:`event_fields`'s.

    Text, not bytes: thousands of small orjson bytes kept alive (a batch's events) cost
    about 2.5 µs each to allocate on this machine; their str copies about 0.1 µs.
    """
    return orjson.dumps(event_fields(event, **fields)).decode()


class BatchLease:
    """Exclusive ownership of one batch, renewed while held (fencing for ledger writes)."""

    def __init__(
        self, client: aioredis.Redis, campaign_id: str, batch: int, ttl_ms: int = 60_000
    ) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self.batch = batch
        self.key = store.batch_lease_key(campaign_id, batch)
        self.token = secrets.token_hex(12)
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        ok = await self.client.eval(
            _ACQUIRE, 2, self.key, store.LEASES_ZSET, self.token, self.ttl_ms
        )
        if ok:
            self.held()
        return bool(ok)

    def held(self) -> None:
        """The lease was taken (here or by a script with this token): keep renewing it."""
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 4000)
            try:
                await self.client.eval(
                    _RENEW, 2, self.key, store.LEASES_ZSET, self.token, self.ttl_ms
                )
            except redis.RedisError as exc:  # Redis restarting: the next period tries again
                log.warning("lease %s: renewal failed (%s); trying again", self.key, exc)
            except Exception:
                # Not Redis's: a bug. It ended the renewal without a word: the lease
                # lapsed a TTL later, the run's next write was refused (LeaseLostError)
                # and the claims it held were left to be recorded unknown.
                log.exception("lease %s: renewal failed; trying again", self.key)
                await faults.count(self.client, "error", faults.LEASE_RENEWAL)

    async def release(self, also: Callable[[Pipeline], object] | None = None) -> None:
        """Give the lease up; ``also`` adds commands of the caller's to the same round
        trip (a batch's metrics: see dispatch.send_stats)."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        pipe = self.client.pipeline(transaction=False)
        pipe.eval(_RELEASE, 2, self.key, store.LEASES_ZSET, self.token)
        if also is not None:
            also(pipe)
        await pipe.execute()


@dataclass
class _Batch:
    """Operations one caller submitted together, answered together."""

    lines: list[bytes]  # encoded groups (see _APPLY)
    count: int  # operations in them: the answer has one character each
    future: asyncio.Future[str] = field(repr=False)


class LedgerWriter:
    """Applies claims and records for one campaign, batching concurrent calls.

    Everything pending when a round trip starts travels in it, as one JSON argument
    (thousands of separate arguments cost more to encode than the work they carry).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        campaign_id: str,
        lease_token: str = "",
        batch: int = -1,
        provider: str = "",
        category: str | None = None,
        *,
        retrying: bool = False,
    ) -> None:
        """``category``: the campaign's, for :meth:`claim_screened_many` (None: not used);
        ``retrying``: for :meth:`retry_once_many` (retry-failed's writer; no category)."""
        self.client = client
        self.provider = provider
        self.batch = batch
        self.keys = [
            store.ledger_key(campaign_id),
            store.counters_key(campaign_id),
            store.EVENTS_STREAM,
            store.batch_lease_key(campaign_id, batch),
            store.MESSAGE_STATS_HASH,
            store.campaign_key(campaign_id),  # its progress_at (for housekeeping)
        ]
        self.category = category
        if category is not None:  # what claim_screened_many checks
            self.keys += [store.SUPPRESSIONS_HASH, store.optout_key(category)]
        elif retrying:  # what retry_once_many marks
            self.keys.append(store.retried_key(campaign_id))
        self.token = lease_token
        self._pending: list[_Batch] = []
        self._flusher: asyncio.Task[None] | None = None
        self._script = client.register_script(_APPLY)

    async def claim(self, seq: int, rec: bytes) -> bool:
        """Claim a queued (or retry-waiting) message; False if it is taken or done."""
        return (await self.claim_many([(seq, rec)]))[0]

    async def claim_many(self, claims: Sequence[tuple[int, bytes]]) -> list[bool]:
        """Claim several messages (``(seq, record)``) in one round trip; one answer each."""
        return await self._submit(_lines(b"c", [(seq, rec, "") for seq, rec in claims]))

    async def claim_screened_many(self, claims: Sequence[tuple[int, bytes, str]]) -> list[str]:
        """Claim several messages (``(seq, record, address key)``) like :meth:`claim_many`,
        checking each address against the suppression list and the category's opt-outs
        at the claim (an entry added since the batch was loaded: a bounce, a complaint,
        an unsubscribe while a long batch sends): such a message is recorded
        ``suppressed`` instead. One answer each: "1" claimed, "0" taken or done, "2"
        suppressed. A key holding a tab or line break is not checked here (the load
        checked it). Needs the writer's ``category``."""
        if self.category is None:
            raise ValueError("claim_screened_many needs the writer's category")
        writes = [(seq, rec, "" if "\t" in key or "\n" in key else key) for seq, rec, key in claims]
        return list(await self._answers(_lines(b"k", writes)))

    async def put(self, seq: int, rec: bytes, event: str = "") -> None:
        """Record a new state for a message, with its system event if any."""
        await self.put_many([(seq, rec, event)])

    async def put_many(self, writes: Sequence[tuple[int, bytes, str]]) -> None:
        """Record several states (``(seq, record, event text)``) in one round trip."""
        await self._submit(_lines(b"f", writes))

    async def put_unsettled_many(self, writes: Sequence[tuple[int, bytes, str]]) -> list[bool]:
        """Like :meth:`put_many`, but only over messages not settled yet (queued, waiting
        for a retry, or claimed by this writer's caller): a terminal record someone else
        wrote meanwhile (a cancel's) stays. One answer each: False where it stayed."""
        return await self._submit(_lines(b"u", writes))

    async def retry_once_many(self, writes: Sequence[tuple[int, bytes, str]]) -> list[bool]:
        """Like :meth:`put_many`, but only over messages still ``failed`` that were never
        retried this way, each marked retried in the same step (so a failure in between
        cannot leave one marked and still failed). One answer each: False where it
        stayed. Needs a writer made with ``retrying``."""
        if len(self.keys) != 7:
            raise ValueError("retry_once_many needs a writer made with retrying=True")
        return await self._submit(_lines(b"r", writes))

    async def settle_many(self, writes: Sequence[tuple[int, bytes, str]]) -> None:
        """Like :meth:`put_many`, for messages this writer's caller claimed and sent (or
        tried to): their current record is known, so it is not read."""
        await self._submit(_lines(b"s", writes))

    async def settle_sent_many(
        self, writes: Sequence[tuple[int, bytes, str, str]], template: tuple[str, str, str]
    ) -> None:
        """Like :meth:`settle_many` for ``(seq, record, email, meta)``, each message's
        event made in Redis from ``template`` (:func:`event_template`: head, middle,
        tail): head, email, middle, meta, tail. No email or meta may need escaping in
        JSON (:func:`needs_escaping`): they go in as they are."""
        pairs = [(seq, rec, f"{email}\t{meta}") for seq, rec, email, meta in writes]
        await self._submit(_lines(b"s", pairs, "\t".join(template)))

    async def give_back_many(self, writes: Sequence[tuple[int, bytes, str]]) -> None:
        """Give back claims of this writer's caller that it did not attempt (a record
        waiting to be claimed again): written only over a record still ``claimed``, so
        giving back again after a lost answer changes nothing; no outcome, so /metrics
        does not count them."""
        await self._submit(_lines(b"g", writes))

    async def _submit(self, encoded: tuple[list[bytes], int]) -> list[bool]:
        """Raises the Redis error of the round trip, or :class:`LeaseLostError`."""
        return [c == "1" for c in await self._answers(encoded)]

    async def _answers(self, encoded: tuple[list[bytes], int]) -> str:
        """The script's answer to ``encoded``: one character per operation."""
        lines, count = encoded
        if not count:
            return ""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append(_Batch(lines, count, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batches, self._pending = self._pending, []
            args: list[bytes | str | int] = [
                self.token,
                get_settings().events_maxlen,
                b"\n".join(line for b in batches for line in b.lines),
                self.provider or "unknown",
            ]
            if self.category is not None:  # the records of claim_screened_many's refusals
                args += [
                    record(MessageState.SUPPRESSED, detail="on the suppression list"),
                    record(MessageState.SUPPRESSED, detail=opted_out_detail(self.category)),
                ]
            try:
                result = await self._script(keys=self.keys, args=args)
            except Exception as exc:  # hand any Redis failure to every waiting caller
                for b in batches:
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            result, _, faults = str(result).partition("\n")
            if faults:
                log.error("ledger write of %s moved no count of: %s", self.keys[0], faults)
            if result == "-":
                for b in batches:
                    if not b.future.done():
                        b.future.set_exception(LeaseLostError(self.keys[3]))
                continue
            offset = 0
            for b in batches:
                answers = str(result[offset : offset + b.count])
                offset += b.count
                if not b.future.done():
                    b.future.set_result(answers)


def _lines(
    op: bytes, writes: Sequence[tuple[int, bytes, str]], template: str = ""
) -> tuple[list[bytes], int]:
    """``_APPLY``'s lines for ``writes``: consecutive writes with one record are a group
    (``template``: their events are its, see LedgerWriter.settle_sent_many)."""
    lines: list[bytes] = []
    if writes:
        rec = writes[0][1]
        seqs: list[int] = []
        events: list[str] = []
        for seq, this, event in writes:
            if this is not rec and this != rec:
                lines.append(_group(op, rec, seqs, events, template))
                rec, seqs, events = this, [], []
            seqs.append(seq)
            events.append(event)
        lines.append(_group(op, rec, seqs, events, template))
    return lines, len(writes)


def _group(
    op: bytes, rec: bytes, seqs: Sequence[int], events: Sequence[str], template: str = ""
) -> bytes:
    """One line of ``_APPLY``'s argument: messages that take the same record."""
    if not rec.startswith(b'{"s":"'):
        raise ValueError("ledger records must start with their state")
    with_events = any(events)
    line = b"%s%s\t%s\t%s" % (
        op,
        b"T" if template else b"E" if with_events else b"N",
        rec,
        ",".join(map(str, seqs)).encode(),
    )
    if template:
        line += b"\t" + template.encode()
    if with_events:
        line += b"\t" + "\t".join(events).encode()
    return line


# What orjson escapes in a string (RFC 8259: the quote, the backslash, the controls);
# everything else it writes as it is (UTF-8).
_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def needs_escaping(text: str) -> bool:
    """Whether ``text`` in JSON is anything but itself between quotes."""
    return _ESCAPED.search(text) is not None


# Stand-ins for the email and the meta while a template is encoded (private use: no
# address nor meta holds them, checked).
_EMAIL_SLOT, _META_SLOT = "\ue000", "\ue001"


def event_template(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """``event`` (:func:`event_fields`) encoded around its email and meta: head, middle,
    tail, such that head + email + middle + meta + tail is its JSON text for any email and
    meta that need no escaping; None if the other fields hold the stand-ins."""
    text = orjson.dumps({**event, "email": _EMAIL_SLOT, "meta": _META_SLOT}).decode()
    if text.count(_EMAIL_SLOT) != 1 or text.count(_META_SLOT) != 1:
        return None
    head, rest = text.split(_EMAIL_SLOT)
    middle, tail = rest.split(_META_SLOT)
    return head, middle, tail
