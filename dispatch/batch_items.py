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
from dispatch.suppressions import suppression_key

# A batch's recipients and ledger records as ONE JSON document: a thousand separate
# replies cost more to parse in Python than everything Redis does here.
_LOAD_BATCH = """
local docs = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
if #docs == 0 then return '{"docs":[],"recs":[]}' end
local seqs = {}
local start = tonumber(ARGV[1])
for i = 1, #docs do seqs[i] = start + i - 1 end
local recs = redis.call('HMGET', KEYS[2], unpack(seqs))
for i = 1, #docs do recs[i] = recs[i] or 'null' end
return '{"docs":[' .. table.concat(docs, ',') .. '],"recs":[' .. table.concat(recs, ',') .. ']}'
"""
# Positions (0-based) of the given address keys that are on the suppression list or
# opted out of this campaign's category in the preference center, as JSON.
_SUPPRESSED = """
local keys = cjson.decode(ARGV[1])
local listed = redis.call('HMGET', KEYS[1], unpack(keys))
local opted = redis.call('SMISMEMBER', KEYS[2], unpack(keys))
local hits = {}
for i = 1, #keys do
  if listed[i] or opted[i] == 1 then hits[#hits + 1] = i - 1 end
end
return '[' .. table.concat(hits, ',') .. ']'
"""


@dataclass(slots=True)
class Item:
    seq: int
    email: str
    user_id: str
    vars: Mapping[str, Any]
    attempts: int = 0


async def load_batch(
    r: aioredis.Redis, campaign_id: str, start: int, size: int
) -> tuple[list[int], list[Any], list[Any]]:
    """The seqs, ledger records and recipients of one batch, in one round trip."""
    loaded = orjson.loads(
        await r.eval(
            _LOAD_BATCH,
            2,
            store.recipients_key(campaign_id),
            store.ledger_key(campaign_id),
            start,
            start + size - 1,
        )
    )
    docs, records = loaded["docs"], loaded["recs"]
    return [start + i for i in range(len(docs))], records, docs


async def drop_suppressed(
    r: aioredis.Redis,
    writer: LedgerWriter,
    items: list[Item],
    category: str,
) -> tuple[list[Item], int]:
    """Record suppressed recipients (checked right before sending, DESIGN §5).

    Suppressed: on the suppression list, or opted out of ``category``. Returns the items
    still to send and how many were suppressed.
    """
    if not items:
        return items, 0
    keys = [suppression_key(item.email) for item in items]
    hit_at = set(
        orjson.loads(
            await r.eval(
                _SUPPRESSED,
                2,
                store.SUPPRESSIONS_HASH,
                store.optout_key(category),
                orjson.dumps(keys),
            )
        )
    )
    hits = [i in hit_at for i in range(len(items))]
    kept = [item for item, hit in zip(items, hits, strict=True) if not hit]
    suppressed = [item for item, hit in zip(items, hits, strict=True) if hit]
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
