"""What a batch still has to send: its recipients and ledger, minus the suppressed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from dispatch import store
from dispatch.ledger import LedgerWriter, Records, parse_record, record
from dispatch.models import CampaignContent, CampaignStatus, MessageState
from dispatch.settings import Settings

# A batch's recipients, ledger records and suppression hits as ONE JSON document: a
# thousand separate replies cost more to parse in Python than everything Redis does
# here, and one round trip waits once in Redis's queue. The recipients are stored as
# [<address key>, <document>] (campaigns.stored_recipient), so the address keys are read
# without decoding anything; they are checked against the suppression list and the
# category's opt-outs (DESIGN section 5: checked again right before sending).
_LOAD_BATCH = r"""
local docs = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
if #docs == 0 then return '{"docs":[],"recs":[],"hits":[]}' end
local seqs, keys = {}, {}
local start = tonumber(ARGV[1])
for i = 1, #docs do
  seqs[i] = start + i - 1
  -- An address with a quote or backslash has escapes here: it cannot be sent anyway.
  keys[i] = string.match(docs[i], '^%["(.-)",') or ''
end
local recs = redis.call('HMGET', KEYS[2], unpack(seqs))
local listed = redis.call('HMGET', KEYS[3], unpack(keys))
local opted = redis.call('SMISMEMBER', KEYS[4], unpack(keys))
local hits = {}
for i = 1, #docs do
  recs[i] = recs[i] or 'null'
  if listed[i] or opted[i] == 1 then hits[#hits + 1] = seqs[i] end
end
return '{"docs":[' .. table.concat(docs, ',') .. '],"recs":[' .. table.concat(recs, ',')
  .. '],"hits":[' .. table.concat(hits, ',') .. ']}'
"""


@dataclass(slots=True)
class Item:
    seq: int
    email: str
    user_id: str
    vars: Mapping[str, Any]
    attempts: int = 0


@dataclass
class LoadedBatch:
    seqs: list[int]
    records: list[Any]  # ledger records (decoded), None for a message still queued
    recipients: list[Any]  # documents (decoded)
    suppressed: set[int]  # seqs on the suppression list or opted out of the category


async def load_batch(
    r: aioredis.Redis, campaign_id: str, start: int, size: int, category: str
) -> LoadedBatch:
    """A batch's recipients, ledger records and suppression hits, in one round trip."""
    loaded = orjson.loads(
        await r.eval(
            _LOAD_BATCH,
            4,
            store.recipients_key(campaign_id),
            store.ledger_key(campaign_id),
            store.SUPPRESSIONS_HASH,
            store.optout_key(category),
            start,
            start + size - 1,
        )
    )
    docs = loaded["docs"]
    return LoadedBatch(
        [start + i for i in range(len(docs))],
        loaded["recs"],
        [doc[1] for doc in docs],
        set(loaded["hits"]),
    )


async def drop_suppressed(
    writer: LedgerWriter, items: list[Item], suppressed_seqs: set[int]
) -> tuple[list[Item], int]:
    """Record the suppressed recipients among ``items`` (see :func:`load_batch`); returns
    the items still to send and how many were suppressed."""
    if not suppressed_seqs or not items:
        return items, 0
    kept = [item for item in items if item.seq not in suppressed_seqs]
    suppressed = [item for item in items if item.seq in suppressed_seqs]
    rec = record(MessageState.SUPPRESSED, detail="on the suppression list")
    await writer.put_many([(i.seq, rec, "") for i in suppressed])
    return kept, len(suppressed)


def unsettled(
    seqs: list[int],
    records: list[Any],
    raw_recipients: list[Any],
    settings: Settings,
) -> tuple[list[Item], list[tuple[int, bytes, str]], float | None]:
    """From the ledger: what to send now, stale claims to settle, and when to come back.

    A message still ``claimed`` was in flight in a worker that is gone (we hold the lease
    now): its outcome is lost and it is recorded ``unknown``, never resent.
    """
    items: list[Item] = []
    stale: list[tuple[int, bytes, str]] = []
    retry_at: float | None = None
    now = time.time()
    made = Records()
    for seq, raw_rec, recipient in zip(seqs, records, raw_recipients, strict=True):
        item = Item(
            seq, recipient["email"], recipient.get("user_id", ""), recipient.get("vars") or {}
        )
        if raw_rec is None:  # still queued: most of a batch on its first run
            items.append(item)
            continue
        rec = parse_record(raw_rec)
        assert rec is not None
        if rec["state"] == MessageState.CLAIMED.value:
            lost = made.get(
                MessageState.UNKNOWN,
                rec["attempts"],
                detail="worker stopped during the send; outcome unknown",
            )
            stale.append((seq, lost, ""))
        elif rec["state"] == MessageState.RETRY.value:
            item.attempts = rec["attempts"]
            if rec["next_at"] > now + settings.inline_retry_seconds:
                retry_at = min(retry_at or rec["next_at"], rec["next_at"])
            else:
                items.append(item)
    return items, stale, retry_at


def terminal_state(status: str | None, content: CampaignContent) -> MessageState | None:
    """The state unsent messages take when the campaign will not send them any more."""
    if status == CampaignStatus.CANCELLED.value:
        return MessageState.CANCELLED
    if status == CampaignStatus.EXPIRED.value:
        return MessageState.EXPIRED
    if content.expires_at is not None and content.expires_at <= datetime.now(UTC):
        return MessageState.EXPIRED
    return None
