"""The per-message ledger: claim before send, record after, counters and events atomically.

Every state change of a message goes through one Lua script that (1) checks the batch
lease, so a worker that lost its lease can never write, (2) moves the message's record,
(3) moves the campaign counters from the old state's bucket to the new one and (4) appends
the system event to ``dispatch:events``. Claims only succeed on a message that is still
queued or waiting for a retry, so a redelivered batch skips everything already sent.

:class:`LedgerWriter` coalesces the claims and records of all concurrent senders of a
batch into one script call per round trip (group commit): a claim still happens before
each send, but the round trips are shared.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
import redis.asyncio as aioredis

from dispatch import store
from dispatch.models import MessageState

# Counter buckets: every non-terminal state counts as "queued".
_APPLY = """
local ledger, counters, stream, lease, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, maxlen, provider = ARGV[1], ARGV[2], ARGV[4]
if token ~= '' and redis.call('GET', lease) ~= token then return '-' end
local terminal = {sent=1, failed=1, suppressed=1, cancelled=1, expired=1, unknown=1}
local function bucket(state)
  if state and terminal[state] then return state end
  return 'queued'
end
-- ARGV[3]: a JSON array of [op, seq, new_state, record, event]; records start with
-- {"s":"<state>" so the old state is read without decoding the whole record.
local out = {}
local tally = {}  -- outcomes by state for the service-wide metrics (one HINCRBY each)
for _, o in ipairs(cjson.decode(ARGV[3])) do
  local op, seq, new, rec, ev = o[1], tostring(o[2]), o[3], o[4], o[5]
  local cur = redis.call('HGET', ledger, seq)
  local old = nil
  if cur then old = string.match(cur, '^{"s":"(%a+)"') end
  if op == 'c' and old and old ~= 'retry' then
    out[#out+1] = '0'
  else
    redis.call('HSET', ledger, seq, rec)
    local ob, nb = bucket(old), bucket(new)
    if ob ~= nb then
      redis.call('HINCRBY', counters, ob, -1)
      redis.call('HINCRBY', counters, nb, 1)
    end
    if ev ~= '' then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', ev)
    end
    if new ~= 'claimed' then tally[new] = (tally[new] or 0) + 1 end
    out[#out+1] = '1'
  end
end
for state, count in pairs(tally) do
  redis.call('HINCRBY', stats, provider .. '|' .. state, count)
end
if KEYS[6] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[6], 'progress_at', t[1])
end
return table.concat(out)
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLostError(RuntimeError):
    """Another worker owns this batch now: stop writing at once."""


def record(
    state: MessageState,
    *,
    email: str,
    attempts: int = 0,
    error_class: str = "",
    detail: str = "",
    next_at: float = 0.0,
    provider_message_id: str = "",
) -> bytes:
    """A ledger record as stored (compact keys)."""
    data: dict[str, Any] = {"s": state.value, "e": email, "a": attempts, "t": round(time.time(), 3)}
    if error_class:
        data["c"] = error_class
    if detail:
        data["d"] = detail[:500]
    if next_at:
        data["n"] = next_at
    if provider_message_id:
        data["p"] = provider_message_id
    return orjson.dumps(data)


@lru_cache(maxsize=64)
def claim_record(attempts: int) -> bytes:
    """The record of a claimed message: only the state and the attempt (hot, cached)."""
    return orjson.dumps({"s": MessageState.CLAIMED.value, "a": attempts})


def parse_record(raw: str | bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored record (encoded or decoded) with readable keys; None for a queued message."""
    if raw is None:
        return None
    data: dict[str, Any] = raw if isinstance(raw, dict) else orjson.loads(raw)
    return {
        "state": data["s"],
        "email": data.get("e", ""),
        "attempts": data.get("a", 0),
        "error_class": data.get("c", ""),
        "detail": data.get("d", ""),
        "next_at": data.get("n", 0.0),
        "provider_message_id": data.get("p", ""),
        "updated_at": data.get("t", 0.0),
    }


def system_event(
    event: str,
    *,
    email: str,
    campaign_id: str,
    meta: str,
    provider: str,
    properties: dict[str, Any] | None = None,
    ts: float | None = None,
) -> bytes:
    """One entry of the ``dispatch:events`` stream (DESIGN §6), as JSON."""
    return orjson.dumps(
        {
            "event": event,
            "ts": ts if ts is not None else time.time(),
            "email": email,
            "campaign_id": campaign_id,
            "meta": meta,
            "provider": provider,
            "properties": properties or {},
        }
    )


class BatchLease:
    """Exclusive ownership of one batch, renewed while held (fencing for ledger writes)."""

    def __init__(
        self, client: aioredis.Redis, campaign_id: str, batch: int, ttl_ms: int = 60_000
    ) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self.key = store.batch_lease_key(campaign_id, batch)
        self.token = secrets.token_hex(12)
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        ok = await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if ok:
            self._renewer = asyncio.create_task(self._renew_forever())
        return bool(ok)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 4000)
            await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        await self.client.eval(_RELEASE, 1, self.key, self.token)


@dataclass
class _Batch:
    """Operations one caller submitted together, answered together."""

    ops: list[tuple[str, int, str, str, str]]
    future: asyncio.Future[list[bool]] = field(repr=False)


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
    ) -> None:
        self.client = client
        self.provider = provider
        self.keys = [
            store.ledger_key(campaign_id),
            store.counters_key(campaign_id),
            store.EVENTS_STREAM,
            store.batch_lease_key(campaign_id, batch),
            store.MESSAGE_STATS_HASH,
            store.campaign_key(campaign_id),  # its progress_at (for housekeeping)
        ]
        self.token = lease_token
        self._pending: list[_Batch] = []
        self._flusher: asyncio.Task[None] | None = None
        self._script = client.register_script(_APPLY)

    async def claim(self, seq: int, rec: bytes) -> bool:
        """Claim a queued (or retry-waiting) message; False if it is taken or done."""
        return (await self.claim_many([(seq, rec)]))[0]

    async def claim_many(self, claims: list[tuple[int, bytes]]) -> list[bool]:
        """Claim several messages in one round trip; one answer each, in order."""
        return await self._submit([("c", seq, rec, b"") for seq, rec in claims])

    async def put(self, seq: int, rec: bytes, event: bytes = b"") -> None:
        """Record a new state for a message, with its system event if any."""
        await self._submit([("f", seq, rec, event)])

    async def put_many(self, writes: list[tuple[int, bytes, bytes]]) -> None:
        """Record several states (``(seq, record, event)``) in one round trip."""
        await self._submit([("f", seq, rec, event) for seq, rec, event in writes])

    async def _submit(self, ops: list[tuple[str, int, bytes, bytes]]) -> list[bool]:
        """Raises the Redis error of the round trip, or :class:`LeaseLostError`."""
        if not ops:
            return []
        encoded = [
            (op, seq, _state_of(rec), rec.decode(), event.decode()) for op, seq, rec, event in ops
        ]
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Batch(encoded, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batches, self._pending = self._pending, []
            ops = [op for b in batches for op in b.ops]
            args: list[bytes | str | int] = [
                self.token,
                store.EVENTS_STREAM_MAXLEN,
                orjson.dumps(ops),
                self.provider or "unknown",
            ]
            try:
                result = await self._script(keys=self.keys, args=args)
            except Exception as exc:  # hand any Redis failure to every waiting caller
                for b in batches:
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            if result == "-":
                for b in batches:
                    if not b.future.done():
                        b.future.set_exception(LeaseLostError(self.keys[3]))
                continue
            offset = 0
            for b in batches:
                answers = [c == "1" for c in result[offset : offset + len(b.ops)]]
                offset += len(b.ops)
                if not b.future.done():
                    b.future.set_result(answers)


def _state_of(rec: bytes) -> str:
    """The state of an encoded record (``record`` always writes it first)."""
    if not rec.startswith(b'{"s":"'):
        raise ValueError("ledger records must start with their state")
    return rec[6 : rec.index(b'"', 6)].decode()
