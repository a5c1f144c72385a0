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
# (a worker that died) are dropped before counting. Holders renew while they work.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""
SLOT_POLL_SECONDS = 0.2

# A kept session's slot (see dispatch.session_pool) taken back for a new batch: only if
# it has not expired meanwhile (then another worker may hold it; the session must go).
_RETAKE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if score and tonumber(score) > tonumber(ARGV[1]) then
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
        self.limit = provider.max_connections
        self.ttl = ttl

    async def acquire(self, token: str) -> bool:
        """Take a slot for ``token`` if one is free."""
        now = time.time()
        taken = await self.client.eval(
            _ACQUIRE, 1, self.key, now, now + self.ttl, self.limit, token
        )
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

    async def park(self, token: str, seconds: float) -> None:
        """Keep the slot of an idle session for ``seconds`` more (no renewal): it frees
        itself if the session is not used (or closed) by then."""
        await self.client.zadd(self.key, {token: time.time() + seconds}, xx=True)

    async def retake(self, token: str) -> bool:
        """Hold a parked slot again (as :meth:`acquire` does); False if it expired."""
        now = time.time()
        taken = await self.client.eval(_RETAKE, 1, self.key, now, now + self.ttl, token)
        return bool(taken)
