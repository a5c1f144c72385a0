"""Per-provider pace and daily quota, shared by every worker through Redis (DESIGN §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis

from dispatch import store
from providers.config import ProviderBase
from providers.errors import ConfigurationError

# GCRA ("virtual scheduling"): KEYS[1] holds the time the provider is next free. Each
# call reserves n sends after that point and answers how long to wait first, so any
# number of workers together keep to rate_per_second. KEYS[2] counts today's sends;
# past the quota nothing is reserved and -1 comes back.
_TAKE = """
local n, rate, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if quota > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + n > quota then return '-1' end
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], 172800)
end
if rate <= 0 then return '0' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local free = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
redis.call('SET', KEYS[1], tostring(free + n / rate), 'EX', 3600)
return tostring(free - now)
"""


class QuotaExhaustedError(ConfigurationError):
    """The provider's daily quota is used up: the campaign pauses until a person acts."""


class ProviderLimiter:
    """Reserves sends against a provider's ``rate_per_second`` and ``daily_quota``."""

    def __init__(self, client: aioredis.Redis, provider: ProviderBase) -> None:
        self.client = client
        self.provider = provider
        self.active = bool(provider.rate_per_second or provider.daily_quota)

    async def take(self, n: int) -> float:
        """Reserve ``n`` sends; returns how many seconds to wait before sending them.

        Raises :class:`QuotaExhaustedError` when today's quota would be exceeded.
        """
        if not self.active:
            return 0.0
        day = datetime.now(UTC).strftime("%Y%m%d")
        nick = self.provider.nickname
        answer = await self.client.eval(
            _TAKE,
            2,
            f"{store.PREFIX}:pace:{nick}",
            f"{store.PREFIX}:quota:{nick}:{day}",
            n,
            self.provider.rate_per_second,
            self.provider.daily_quota or 0,
        )
        wait = float(answer)
        if wait < 0:
            raise QuotaExhaustedError(
                f"daily quota of {self.provider.daily_quota} messages for provider "
                f"{nick!r} is used up (UTC day {day})"
            )
        return wait


# A connection slot is a member of a sorted set scored by its expiry; expired members
# (a worker that died) are dropped before counting. Holders renew while they work. A
# sender that finds no slot free flags the provider as wanted (KEYS[2], for a moment
# past its next poll): an idle session kept for reuse (dispatch.session_pool) then gives
# its slot up instead of keeping it from those who wait.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""
SLOT_POLL_SECONDS = 0.2
WANTED_MS = 3 * int(SLOT_POLL_SECONDS * 1000)

# A slot whose sender is done, kept for the session's next batch with a short expiry
# (ARGV[1]), unless someone waits for a slot or it has expired meanwhile: then it is
# given up (0).
_PARK = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 or not score
    or tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[3])
return 1
"""

# A kept session's slot taken back for a new batch: only if it has not expired meanwhile
# (another worker may hold it now) and nobody waits for a slot (the batch then queues for
# one like everybody else); otherwise it is given up and the session must go.
_RETAKE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 and score
    and tonumber(score) > tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[3])
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
        now = time.time()
        taken = await self.client.eval(
            _ACQUIRE, 2, self.key, self.wanted_key, now, now + self.ttl, self.limit, token,
            WANTED_MS,
        )  # fmt: skip
        return bool(taken)

    async def hold(self, token: str, stop: Callable[[], bool]) -> bool:
        """Wait for a slot; False if ``stop()`` became true first."""
        while not await self.acquire(token):
            if stop():
                return False
            await asyncio.sleep(SLOT_POLL_SECONDS)
        return True

    async def renew(self, token: str) -> None:
        """Keep the slot while the session works (call more often than the TTL)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.client.zadd(self.key, {token: time.time() + self.ttl}, xx=True)

    async def release(self, token: str) -> None:
        await self.client.zrem(self.key, token)

    async def park(self, token: str, seconds: float) -> bool:
        """Keep the slot of an idle session for ``seconds`` more (no renewal: it frees
        itself if the session is not used or closed by then); False, and the slot is
        given up, when another sender waits for one or it had expired."""
        now = time.time()
        kept = await self.client.eval(
            _PARK, 2, self.key, self.wanted_key, now + seconds, now, token
        )
        return bool(kept)

    async def retake(self, token: str) -> bool:
        """Hold a parked slot again (as :meth:`acquire` does); False, and the slot is
        given up, when it expired or another sender waits for one."""
        now = time.time()
        taken = await self.client.eval(
            _RETAKE, 2, self.key, self.wanted_key, now, now + self.ttl, token
        )
        return bool(taken)
