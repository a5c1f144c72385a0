"""Per-provider pace and rolling 24-hour quotas, shared by all workers through Redis (DESIGN §7)."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aioredis

from dispatch import faults, store
from providers.config import MIN_RATE_PER_SECOND, ProviderBase
from providers.errors import ConfigurationError

log = logging.getLogger(__name__)

# The daily quotas count a rolling 24 hours, as Gmail and SES count theirs (reference
# §3.3, §4): a quota of 2000 sends at most 2000 in any 24 hours, never 2000 before 00:00
# UTC and 2000 more after it (the provider then refuses the rest, and Gmail may block
# the account for a day). Each quota is a hash of per-minute buckets on Redis's clock
# (the minute a send's turn comes: its pace's wait included), with the fields ``sum``
# (every bucket's count) and ``from`` (the oldest minute still kept): a send counts from
# its minute until WINDOW_MINUTES after that minute ends, 24 hours and a minute (the
# minute more covers a send handed over somewhat after its turn), so any 24 hours the
# provider looks at hold at most the quota. Minutes that left are dropped as time goes
# on (amortized one a minute, a scan of the hash after a long idle): a call costs a few
# hash reads, whatever the sends of the 24 hours (but for the answer that a quota is used
# up, which reads when room frees from every minute's bucket: see _TAKE).
WINDOW_MINUTES = 24 * 60 + 1
# An older version's UTC-day counter (an upgrade: see ProviderLimiter._take) was given this
# TTL again at each grant it counted, so its TTL tells when its last send was counted.
OLD_DAY_COUNTER_TTL = 172800
_WINDOW = f"""
local span, old_ttl = {WINDOW_MINUTES}, {OLD_DAY_COUNTER_TTL}
local function minute(m) return string.format('%d', m) end
-- An older version's UTC-day counter: its count, and the minute its last send was counted
-- in (its TTL set again then), kept within lo..hi (the minutes of its day, up to now);
-- hi when its TTL is not one that version set (a key written by hand).
local function day_counter(old_key, lo, hi, now)
  local count = tonumber(redis.call('GET', old_key) or '0')
  local ttl = redis.call('TTL', old_key)
  if count <= 0 or ttl <= 0 or ttl > old_ttl then return count, hi end
  local last = math.floor((now - (old_ttl - ttl) + 1) / 60)  -- (+1: TTL is rounded)
  return count, math.min(hi, math.max(lo, last))
end
-- The count of KEYS[key] now, minutes that left the window dropped. A new window
-- takes in the counts of the UTC-day counters an older version kept (an upgrade: see
-- _take), each as of the minute its last send was counted: today's, and yesterday's
-- unless that minute left the window. (As of when it was last counted, not as of the
-- upgrade: a window made again after 24 hours without sends takes in nothing twice.)
local function counted(key, today_key, yesterday_key, now, midnight)
  local cur = math.floor(now / 60)
  local first = cur - span
  local from, sum = unpack(redis.call('HMGET', key, 'from', 'sum'))
  if not from then
    sum = 0
    local function take_in(old_key, lo, hi)
      local count, m = day_counter(old_key, lo, hi, now)
      if count > 0 and m >= first then
        redis.call('HINCRBY', key, minute(m), count)
        sum = sum + count
      end
    end
    take_in(yesterday_key, midnight - 1440, midnight - 1)
    take_in(today_key, midnight, cur)
    redis.call('HSET', key, 'from', minute(first), 'sum', sum)
    redis.call('EXPIRE', key, (span + 2) * 60)
    return sum
  end
  from, sum = tonumber(from), tonumber(sum)
  if from >= first then return sum end
  if first - from > span then  -- idle for longer than the window: read it whole
    local all = redis.call('HGETALL', key)
    sum = 0
    for i = 1, #all, 2 do
      local m = tonumber(all[i])
      if m and m < first then
        redis.call('HDEL', key, all[i])
      elseif m then
        sum = sum + tonumber(all[i + 1])
      end
    end
  else
    for m = from, first - 1 do
      local c = redis.call('HGET', key, minute(m))
      if c then
        sum = sum - tonumber(c)
        redis.call('HDEL', key, minute(m))
      end
    end
  end
  sum = math.max(sum, 0)
  redis.call('HSET', key, 'from', minute(first), 'sum', sum)
  return sum
end
-- When KEYS[key]'s count (used) falls to limit - need, its oldest minutes leaving the
-- window: a Unix time, or -1 when it never does (need is more than the limit).
local function frees(key, used, limit, need, now)
  local excess = used - (limit - need)
  if excess <= 0 then return now end
  if need > limit then return -1 end
  local all = redis.call('HGETALL', key)
  local minutes = {{}}
  for i = 1, #all, 2 do
    local m = tonumber(all[i])
    if m then minutes[#minutes + 1] = {{m, tonumber(all[i + 1])}} end
  end
  table.sort(minutes, function(a, b) return a[1] < b[1] end)
  for _, mc in ipairs(minutes) do
    excess = excess - mc[2]
    if excess <= 0 then return (mc[1] + span + 1) * 60 end
  end
  return -1
end
-- Why KEYS[key] cannot be booked in minute m (its bucket or sum not an integer: a hand
-- edit, a bug), or nil. Checked for both windows before either is booked: Redis keeps
-- what a script wrote before it raised, and a take refused at the second window's
-- HINCRBY had booked the first one's, no grant given: each retry used more of the quota.
local function unbookable(key, m)
  local values = redis.call('HMGET', key, minute(m), 'sum')
  for i, field in ipairs({{minute(m), 'sum'}}) do
    local v = values[i]
    if v and v ~= '0' and not (#v <= 18 and string.find(v, '^%-?[1-9]%d*$')) then
      return key .. ' ' .. field .. ' is ' .. v .. ', not an integer: nothing booked'
    end
  end
  return nil
end
local function book(key, m, count, now)
  redis.call('HINCRBY', key, minute(m), count)
  redis.call('HINCRBY', key, 'sum', count)
  local keep = math.ceil((m + span + 2) * 60 - now)
  if redis.call('TTL', key) < keep then redis.call('EXPIRE', key, keep) end
end
"""

# GCRA ("virtual scheduling"): KEYS[1] holds the time the provider is next free. Each
# call reserves sends after that point and answers how many and how long to wait first,
# so any number of workers together keep to rate_per_second. KEYS[2] counts the last 24
# hours' messages, KEYS[3] their recipients (to, cc and bcc: ARGV[4] per message; see
# _WINDOW). With ARGV[6] = 1 as many of the n as the quotas leave are granted, else all
# or none. KEYS[4] holds the grants still out (ARGV[7], a grant's token, scored by when
# it lapses: ARGV[8] seconds after its wait, for a worker that died holding it): until
# they are settled the quota is not known to be used up, since some may be given back.
# Answers {granted, wait, which stopped it (0 none, 1 the messages quota, 2 the
# recipients quota, 3 the horizon), grants still out, ms the provider is still held,
# when the quotas next leave room (none granted: a Unix time, -1 never), the count of
# the quota that stopped it, the minute the grant's sends are counted in}; none granted,
# the wait is until that room (-1 never). KEYS[5] is the provider's hold (a throttling
# reply, see _HOLD): no send is granted before it ends (read here, where every grant is
# already taken: no round trip of its own). ARGV[9] > 0, the caller's horizon: a send
# due further ahead is not reserved (a reservation is never given back, and one its
# caller cannot wait for pushes every later one back for nothing): the answer is none,
# and how long until it would be within the horizon. KEYS[6..9] and ARGV[10]: the
# UTC-day counters of an older version (messages today, yesterday; recipients today,
# yesterday) and the minute today began, read when a window is new (see _WINDOW).
# KEYS[10] holds the rate KEYS[1]'s reservations were made at: a provider saved again
# with a faster rate has the sends reserved ahead at the slower one (as many as its
# senders, each reserving its next send: one a minute and eight senders, eight minutes
# ahead) shortened to the new rate, rather than every sender waiting them out (its
# stopped batches' reservations, no longer used, kept the faster rate from taking
# effect for as long).
_TAKE = (
    _WINDOW
    + """
local n, rate, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local per, rquota, partial = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local horizon, midnight = tonumber(ARGV[9]), tonumber(ARGV[10])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cur = math.floor(now / 60)
local held = math.max(redis.call('PTTL', KEYS[5]), 0)
local granted, which, used, rused = n, 0, 0, 0
if quota > 0 then
  used = counted(KEYS[2], KEYS[6], KEYS[7], now, midnight)
  local left = quota - used
  if left < granted then granted, which = left, 1 end
end
if rquota > 0 then
  rused = counted(KEYS[3], KEYS[8], KEYS[9], now, midnight)
  local left = math.floor((rquota - rused) / per)
  if left < granted then granted, which = left, 2 end
end
if granted <= 0 or (granted < n and not partial) then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local out = redis.call('ZCARD', KEYS[4])
  -- A tracked caller asks again while grants are out (it polls): when room frees is not
  -- read for it (a scan of every minute's bucket, milliseconds with Redis blocked, at
  -- each poll of every sender).
  if ARGV[7] ~= '' and out > 0 then return {0, '-1', which, out, held, '', 0, 0} end
  local need, at = partial and 1 or n, now
  for _, q in ipairs({{KEYS[2], used, quota, 1}, {KEYS[3], rused, rquota, per}}) do
    if q[3] > 0 and at >= 0 then
      local free = frees(q[1], q[2], q[3], need * q[4], now)
      at = free < 0 and -1 or math.max(at, free)
    end
  end
  local wait = at < 0 and '-1' or tostring(at - now)
  local count = which == 2 and rused or used
  return {0, wait, which, out, held, tostring(at), count, 0}
end
local free = now + held / 1000
if rate > 0 then
  local booked = tonumber(redis.call('GET', KEYS[1]) or '0')
  local booked_at = tonumber(redis.call('GET', KEYS[10]) or '')
  if booked_at and booked_at > 0 and booked_at < rate and booked > now then
    booked = now + (booked - now) * booked_at / rate
  end
  free = math.max(booked, free)
end
local wait = free - now
if horizon > 0 and wait > horizon then
  return {0, tostring(wait - horizon), 3, 0, held, '', 0, 0}
end
-- Counted in the minute of their turn (a send that waits for the pace goes then).
local m = math.floor(free / 60)
for _, q in ipairs({{KEYS[2], quota}, {KEYS[3], rquota}}) do
  local bad = q[2] > 0 and unbookable(q[1], m)
  if bad then return redis.error_reply(bad) end
end
if quota > 0 then book(KEYS[2], m, granted, now) end
if rquota > 0 then book(KEYS[3], m, granted * per, now) end
if rate > 0 then
  local next_free = free + granted / rate
  -- Kept until the provider is next free (an hour at least): a slow pace's reservations
  -- reach further ahead than an hour, and a key gone before then lets a burst through.
  local keep = math.max(3600, math.ceil(next_free - now) + 60)
  redis.call('SET', KEYS[1], tostring(next_free), 'EX', keep)
  redis.call('SET', KEYS[10], ARGV[2], 'EX', keep)
end
if ARGV[7] ~= '' and (quota > 0 or rquota > 0) then
  redis.call('ZADD', KEYS[4], now + wait + tonumber(ARGV[8]), ARGV[7])
  redis.call('EXPIRE', KEYS[4], 172800)
end
return {granted, tostring(wait), which, 0, held, '', 0, m}
"""
)

# Messages counted against the quotas that did not go out are given back from the
# minute they were counted in (ARGV[3]; never below zero, nothing once that minute left
# the window, or the window was removed by hand); ARGV[4], a grant's token, is settled:
# no longer out (KEYS[3]). Both windows' bucket and sum are checked before either is
# written (not an integer: a hand edit, a bug): a refund that raised at the second had
# given back the first, the grant left out.
_REFUND = """
for i = 1, 2 do
  local values = redis.call('HMGET', KEYS[i], ARGV[3], 'sum')
  for j, field in ipairs({ARGV[3], 'sum'}) do
    local v = values[j]
    if v and v ~= '0' and not (#v <= 18 and string.find(v, '^%-?[1-9]%d*$')) then
      return redis.error_reply(KEYS[i] .. ' ' .. field .. ' is ' .. v
        .. ', not an integer: nothing given back')
    end
  end
end
for i = 1, 2 do
  local key = KEYS[i]
  local c = tonumber(redis.call('HGET', key, ARGV[3]) or '0')
  local back = math.min(tonumber(ARGV[i]), c)
  if back > 0 then
    if back == c then
      redis.call('HDEL', key, ARGV[3])
    else
      redis.call('HINCRBY', key, ARGV[3], -back)
    end
    local sum = tonumber(redis.call('HGET', key, 'sum') or '0')
    redis.call('HSET', key, 'sum', math.max(sum - back, 0))
  end
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return 0
"""

# How soon a sender asks again when the quota's last sends are out elsewhere.
QUOTA_POLL_SECONDS = 0.5

# A throttling reply holds the whole provider (DESIGN §7: every session of every worker),
# not only the session that got it: KEYS[1] exists, with PX, while the provider is held;
# _TAKE reads it. ARGV[1]: the reply's delay (ms), ARGV[2]: the longest hold. A throttle
# while held (a send that left before the hold) lengthens it to its own delay, never
# shortens it. Answers {ms held from now, 1 if this reply began the hold}.
_HOLD = """
local ms = math.floor(math.min(tonumber(ARGV[1]), tonumber(ARGV[2])))
local left = redis.call('PTTL', KEYS[1])
if ms <= 0 or ms <= left then return {math.max(left, 0), 0} end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return {ms, left <= 0 and 1 or 0}
"""
# A provider without pace or quotas takes no grant from Redis (nothing to reserve): its
# senders look at its hold at most this often, a process's sessions together (the hold
# this process set itself they know at once; one another worker set, within this time).
# So do senders that waited for their pace (the hold may have been set meanwhile), but
# every grant taken in the process tells what the hold was too: a busy pace peeks never.
HOLD_PEEK_SECONDS = 0.5
_BEYOND_HORIZON = 3  # (the pace script's answer: the send is due past the horizon)


@dataclass(frozen=True, slots=True)
class Hold:
    """A provider held after a throttling reply: for ``seconds`` from now; ``began``: by
    this reply (else it lengthened or kept a hold already in force)."""

    seconds: float
    began: bool


# nickname -> (monotonic time the provider's hold ends, when that was last read)
_seen_holds: dict[str, tuple[float, float]] = {}
# Past this many nicknames, those whose hold ended and that were not read for
# HOLD_PEEK_SECONDS go (they tell no more than no entry: Redis is asked at the next
# look): providers come and go for weeks, one per customer, and a process kept each.
_HOLDS_KEPT = 256


def _note_hold(nick: str, until: float, now: float) -> None:
    if nick not in _seen_holds and len(_seen_holds) >= _HOLDS_KEPT:
        for name, (ends, read) in list(_seen_holds.items()):
            if ends <= now and now - read >= HOLD_PEEK_SECONDS:
                del _seen_holds[name]
    _seen_holds[nick] = (until, now)


def chunk_limit(provider: ProviderBase, chunk_size: int) -> int:
    """How many messages one hand-over to ``provider`` may carry: the transport's
    ``chunk_size``, but no more than its pace allows in a second, so that a low
    ``rate_per_second`` sends one message at a time at an even pace instead of a whole
    chunk at once and then nothing for as long.

    And no more than keeps every second to the rate, as a provider counts it: chunks of n
    go n / rate seconds apart, so a second holds ceil(rate / n) of them; at 5 a second,
    chunks of 4 went 0.8 s apart, 8 messages in a second (a relay that allows 5 refuses
    the rest). n is the largest that puts no more than ceil(rate) messages in any second,
    as single sends do (at 5 a second one at a time, at 10 two, at 100 four)."""
    rate = provider.rate_per_second
    if rate <= 0:
        return chunk_size
    n = max(1, min(chunk_size, int(rate)))
    while n > 1 and n * math.ceil(rate / n) > math.ceil(rate):
        n -= 1
    return n


class QuotaExhaustedError(ConfigurationError):
    """The provider's daily quota (ours: ``daily_quota``, ``daily_recipient_quota``, over
    a rolling 24 hours) is used up: the campaign pauses, and resumes by itself at
    ``resumes_at`` (on Redis's clock, when the oldest sends counted leave the 24 hours:
    housekeeping), or waits for a person when None (no 24 hours would do)."""

    def __init__(self, detail: str, resumes_at: float | None = None) -> None:
        super().__init__(detail)
        self.resumes_at = resumes_at


@dataclass(frozen=True, slots=True)
class Grant:
    """Sends reserved by :meth:`ProviderLimiter.take_some`: ``count`` of them may go after
    ``wait`` seconds; ``minute`` is the minute (Unix time / 60, on Redis's clock) of the
    quotas' window they were counted in;
    ``token`` names a grant that is out until :meth:`ProviderLimiter.settle` (tracked);
    ``beyond``: none reserved, the next send is due past the caller's horizon (``wait``:
    until it would be within it)."""

    count: int
    wait: float
    minute: int = 0
    token: str = ""
    beyond: bool = False


class ProviderLimiter:
    """Reserves sends against a provider's ``rate_per_second``, ``daily_quota`` and
    ``daily_recipient_quota`` (``recipients_per_message``: to, cc and bcc of each).

    ``grant_ttl``: how long after its wait a tracked grant a worker never settled (it
    died) still counts as out (the batch lease's TTL, as for connection slots)."""

    def __init__(
        self,
        client: aioredis.Redis,
        provider: ProviderBase,
        recipients_per_message: int = 1,
        grant_ttl: float = 60.0,
    ) -> None:
        self.client = client
        self.provider = provider
        self.per_message = max(1, recipients_per_message)
        self.grant_ttl = grant_ttl
        self.quotas = bool(provider.daily_quota or provider.daily_recipient_quota)
        # A pace slower than one a day is refused on save; one stored before that check
        # is read as one a day (slower overflowed the pace script: every batch failed).
        rate = provider.rate_per_second
        self._rate = max(rate, MIN_RATE_PER_SECOND) if rate > 0 else 0.0
        self.active = bool(provider.rate_per_second or self.quotas)
        self._hold_key = f"{store.PREFIX}:hold:{provider.nickname}"

    async def take(self, n: int) -> float:
        """Reserve ``n`` sends (all or none); returns how many seconds to wait first.

        Raises :class:`QuotaExhaustedError` when the quotas' 24 hours would be exceeded.
        """
        return (await self._take(n, partial=False)).wait

    async def take_some(self, n: int, *, tracked: bool = False, horizon: float = 0.0) -> Grant:
        """Reserve up to ``n`` sends: as many as the quotas leave (so a quota is used to
        the last message), after the provider's pace and its hold (:meth:`hold`).

        ``horizon`` > 0: the caller waits no longer than that. Sends due later are not
        reserved (a reservation is never given back: one not used pushes every later one
        back), and the grant is of none, with the ``wait`` until they would be due within
        the horizon (others may book meanwhile: ask again then).

        Raises :class:`QuotaExhaustedError` when not one more may go within the last 24
        hours (with ``horizon`` > 0: nor will within the horizon; room that frees within
        it is a grant of none, to wait its ``wait`` and ask again). ``tracked``:
        the caller settles the grant (:meth:`settle`) once its sends went out or not;
        until then the grant counts as out, and a tracked call that finds the quotas
        taken while grants are out (some may be given back: the quota is not known to
        be used up yet) gets a grant of none, to wait its ``wait`` and ask again.
        """
        return await self._take(n, partial=True, tracked=tracked, horizon=horizon)

    async def refund(self, grant: Grant, n: int) -> None:
        """Give back ``n`` of ``grant``'s sends that did not go out (given back unsent,
        or refused by the provider): they do not count against the quotas."""
        if n > 0:
            await self._give_back(grant, n, "")

    async def settle(self, grant: Grant, n: int) -> None:
        """``grant`` is done: :meth:`refund` ``n`` of its sends, and it is no longer out."""
        if n > 0 or grant.token:
            await self._give_back(grant, n, grant.token)

    async def hold(self, seconds: float, longest: float) -> Hold:
        """A throttling reply asked to wait ``seconds``: hold the whole provider, every
        worker's sends, that long, at most ``longest``."""
        nick = self.provider.nickname
        ms, began = await self.client.eval(
            _HOLD, 1, self._hold_key, max(0, int(seconds * 1000)), max(0, int(longest * 1000))
        )
        now = time.monotonic()
        _note_hold(nick, now + int(ms) / 1000, now)
        return Hold(int(ms) / 1000, bool(int(began)))

    async def held(self) -> float:
        """Seconds the provider is still held, as this process knew it at most
        ``HOLD_PEEK_SECONDS`` ago (then Redis is asked: one round trip, for the process)."""
        nick = self.provider.nickname
        now = time.monotonic()
        until, read = _seen_holds.get(nick, (0.0, -HOLD_PEEK_SECONDS))
        if now - read >= HOLD_PEEK_SECONDS:
            # Marked read before the answer comes: the process's other sessions asking
            # meanwhile go by what was known (eight sessions peeked eight times at once).
            _note_hold(nick, until, now)
            ms = await self.client.pttl(self._hold_key)
            # (a hold this process set meanwhile is not lost: a hold only grows)
            until = max(now + max(0, int(ms)) / 1000, _seen_holds.get(nick, (0.0, 0.0))[0])
            _note_hold(nick, until, now)
        return max(0.0, until - now)

    def _saw_hold(self, ms: int) -> None:
        """The pace script read the hold: ``ms`` left (a hold only grows meanwhile)."""
        nick = self.provider.nickname
        now = time.monotonic()
        until = max(now + ms / 1000, _seen_holds.get(nick, (0.0, 0.0))[0])
        _note_hold(nick, until, now)

    async def _give_back(self, grant: Grant, n: int, token: str) -> None:
        if not self.quotas or not grant.minute:
            return
        keys = quota_keys(self.provider.nickname)
        await self.client.eval(
            _REFUND, len(keys), *keys, n, n * self.per_message, grant.minute, token
        )

    async def _take(
        self, n: int, *, partial: bool, tracked: bool = False, horizon: float = 0.0
    ) -> Grant:
        if not self.active:
            held = await self.held()
            if 0 < horizon < held:
                return Grant(0, held - horizon, beyond=True)
            return Grant(n, held)
        nick = self.provider.nickname
        # (An upgrade: the UTC-day counters an older version kept, on the host's clock as
        # it read them, taken into a new window once; they expire within two days.)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        old = [
            f"{store.PREFIX}:{name}:{nick}:{day:%Y%m%d}"
            for name in ("quota", "recipient-quota")
            for day in (today, today - timedelta(days=1))
        ]
        token = secrets.token_hex(8) if tracked and self.quotas else ""
        granted, wait, which, out, held, frees, used, minute = await self.client.eval(
            _TAKE,
            10,
            f"{store.PREFIX}:pace:{nick}",
            *quota_keys(nick),
            self._hold_key,
            *old,
            f"{store.PREFIX}:pace:{nick}:rate",
            n,
            self._rate,
            self.provider.daily_quota or 0,
            self.per_message,
            self.provider.daily_recipient_quota or 0,
            1 if partial else 0,
            token,
            self.grant_ttl,
            max(0.0, horizon),
            int(today.timestamp()) // 60,
        )
        self._saw_hold(int(held))
        if int(which) == _BEYOND_HORIZON:
            return Grant(0, float(wait), beyond=True)
        if int(granted) <= 0:
            if token and int(out):
                return Grant(0, QUOTA_POLL_SECONDS)
            room = float(wait)  # (seconds until the quotas leave room; < 0: never)
            if horizon > 0 and 0 <= room <= horizon:  # the caller waits that long: no pause
                return Grant(0, room)
            at = float(frees)
            detail = self._used_up(int(which), int(used), at)
            raise QuotaExhaustedError(detail, at if at >= 0 else None)
        return Grant(int(granted), float(wait), int(minute), token)

    def _used_up(self, which: int, used: int, at: float) -> str:
        """What is used up, and when it leaves room again (``at`` < 0: never; a person
        must act)."""
        nick = self.provider.nickname
        rquota = self.provider.daily_recipient_quota
        # Not in any 24 hours, whichever quota stopped it (the messages quota may be the
        # one used up first: that one frees, this one never does).
        if rquota and self.per_message > rquota:
            return (
                f"each message has {self.per_message} recipients (to, cc and bcc), more "
                f"than the daily recipient quota of {rquota} of provider {nick!r}: none "
                "can go on any day; raise the quota or send with fewer cc and bcc"
            )
        if which == 2:
            what = (
                f"daily recipient quota of {rquota} recipients (to, cc and bcc; "
                f"{self.per_message} a message)"
            )
            sent = f"{used} recipients"
        else:
            what = f"daily quota of {self.provider.daily_quota} messages"
            sent = f"{used} messages"
        if at < 0:  # more asked at once (all or none) than the quota holds
            return (
                f"{what} for provider {nick!r} holds fewer than were asked at once ({sent} "
                "in the last 24 hours): none can go on any day; ask for fewer at a time"
            )
        when = f"{datetime.fromtimestamp(at, UTC):%Y-%m-%d %H:%M} UTC"
        return (
            f"{what} for provider {nick!r} is used up ({sent} in the last 24 hours; the "
            f"campaign resumes by itself at {when}, when enough of them are 24 hours old)"
        )


def quota_keys(nickname: str) -> tuple[str, str, str]:
    """The keys of ``nickname``'s quotas: the windows of its messages and recipients
    (hashes, see ``_WINDOW``) and its grants still out."""
    return (
        f"{store.PREFIX}:quota:{nickname}:window",
        f"{store.PREFIX}:recipient-quota:{nickname}:window",
        f"{store.PREFIX}:quota-out:{nickname}:grants",
    )


# A connection slot is a member of a sorted set scored by its expiry; expired members
# (a worker that died) are dropped before counting. Holders renew while they work. A
# sender that finds no slot free flags the provider as wanted (KEYS[2], for a moment
# past its next poll): an idle session kept for reuse (dispatch.session_pool) then gives
# its slot up instead of keeping it from those who wait.
# The set itself expires SLOTS_KEY_SECONDS after a slot was last taken, renewed, parked
# or taken back (a deleted provider's set goes): a session that keeps its slot for hours
# (a slow pace, batch after batch in one process) never finds it gone under it.
# Expiries are read and written on Redis's clock (_NOW), never a worker's: a worker
# whose clock ran a minute ahead took every slot of the others for expired and opened
# connections past max_connections; one behind kept its dead slots the longer.
# A token still holding its slot takes it again (a session told its slot was lost while
# renewals only seemed to fail: answered too late, but done, then renewed on): counted
# against itself, it waited for a slot that its own renewals kept, as long as its run.
SLOTS_KEY_SECONDS = 3600
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""
_ACQUIRE = f"""{_NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3])
  and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('EXPIRE', KEYS[1], {SLOTS_KEY_SECONDS})
return 1
"""

# A held slot renewed (1) or found gone (0: it expired, perhaps to another worker).
_RENEW = f"""{_NOW}
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[1], {SLOTS_KEY_SECONDS})
return 1
"""
SLOT_POLL_SECONDS = 0.2
# A session whose slot no renewal kept for this part of its TTL is told it lost it (see
# ConnectionSlots.renew): before it may expire, and another sender take it.
LOST_AFTER = 5 / 6
WANTED_MS = 3 * int(SLOT_POLL_SECONDS * 1000)

# A slot whose sender is done, kept for the session's next batch with a short expiry
# (ARGV[1] seconds), unless someone waits for a slot or it has expired meanwhile: then it
# is given up (0).
_PARK = f"""{_NOW}
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 or not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], {SLOTS_KEY_SECONDS})
return 1
"""

# A kept session's slot taken back for a new batch: only if it has not expired meanwhile
# (another worker may hold it now) and nobody waits for a slot (the batch then queues for
# one like everybody else); otherwise it is given up and the session must go.
_RETAKE = f"""{_NOW}
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 and score and tonumber(score) > now then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], {SLOTS_KEY_SECONDS})
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 0
"""


class ConnectionSlots:
    """The provider's ``max_connections``, counted across every worker (DESIGN §7)."""

    def __init__(self, client: aioredis.Redis, provider: ProviderBase, ttl: float) -> None:
        """``ttl``: how long a dead worker's slot stays taken (the batch lease's TTL)."""
        self.client = client
        self.key = f"{store.PREFIX}:connections:{provider.nickname}"
        self.wanted_key = f"{self.key}:wanted"
        self.limit = provider.max_connections
        self.ttl = ttl

    async def acquire(self, token: str) -> bool:
        """Take a slot for ``token`` if one is free."""
        taken = await self.client.eval(
            _ACQUIRE, 2, self.key, self.wanted_key, self.ttl, self.limit, token, WANTED_MS
        )
        return bool(taken)

    async def hold(self, token: str, stop: Callable[[], bool]) -> bool:
        """Wait for a slot; False if ``stop()`` became true first."""
        while not await self.acquire(token):
            if stop():
                return False
            await asyncio.sleep(SLOT_POLL_SECONDS)
        return True

    async def renew(self, token: str, lost: Callable[[], None]) -> None:
        """Keep the slot while the session works (renewed three times a TTL). A slot
        found gone (this process stalled past the TTL and the slot expired, perhaps to
        another worker) calls ``lost``: the session must close before it sends again. A
        renewal that fails (a Redis restart; anything else is logged with its traceback)
        is tried again the next period; ``lost`` is called once none succeeded for
        :data:`LOST_AFTER` of a TTL, before the slot may expire (the session closes
        before another sender can take it), not after; a renewal is never waited for
        past that (redis-py retries a command that timed out for about a minute)."""
        renewed = time.monotonic()  # (when the last renewal that succeeded was sent)
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            lost_at = renewed + self.ttl * LOST_AFTER
            try:
                renewal = self.client.eval(_RENEW, 1, self.key, self.ttl, token)
                held = await asyncio.wait_for(renewal, max(lost_at - sent, self.ttl / 6))
            except (redis.RedisError, TimeoutError) as exc:
                log.warning(
                    "connection slot %s: renewal failed (%s); trying again", token,
                    str(exc) or "no answer in time",
                )  # fmt: skip
            except Exception:
                # Not Redis's: a bug. It ended the renewal without a word, the slot
                # expired under its open session and another sender took it.
                log.exception("connection slot %s: renewal failed; trying again", token)
                await faults.count(self.client, "error", faults.SLOT_RENEWAL)
            else:
                if not held:
                    lost()
                renewed = sent
                continue
            if time.monotonic() + self.ttl / 3 >= lost_at:  # (the next try comes too late)
                lost()
                renewed = time.monotonic()  # (the session takes a slot again: a TTL on)

    async def release(self, token: str) -> None:
        await self.client.zrem(self.key, token)

    async def park(self, token: str, seconds: float) -> bool:
        """Keep the slot of an idle session for ``seconds`` more (no renewal: it frees
        itself if the session is not used or closed by then); False, and the slot is
        given up, when another sender waits for one or it had expired."""
        kept = await self.client.eval(_PARK, 2, self.key, self.wanted_key, seconds, token)
        return bool(kept)

    async def retake(self, token: str) -> bool:
        """Hold a parked slot again (as :meth:`acquire` does); False, and the slot is
        given up, when it expired or another sender waits for one."""
        taken = await self.client.eval(_RETAKE, 2, self.key, self.wanted_key, self.ttl, token)
        return bool(taken)
