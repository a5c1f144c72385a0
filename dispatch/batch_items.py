"""What a batch still has to send: its recipients and ledger, minus the suppressed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from dispatch import store
from dispatch.ledger import (
    NOTE_LEASE_HELD,
    BatchLease,
    LedgerWriter,
    Records,
    claim_record,
    opted_out_detail,
    parse_record,
    record,
)
from dispatch.models import CampaignContent, CampaignStatus, MessageState
from dispatch.recipient_pages import documents_of, page_span
from dispatch.settings import Settings
from dispatch.suppressions import suppression_key

# A batch's suppression hits and ledger records; its recipient documents come with a
# plain LRANGE of their pages in the same MULTI (through Lua, each would be copied in
# and out again). The address keys have pages of their own (recipient_pages), so they
# are checked against the suppression list and the category's opt-outs (DESIGN section
# 5: checked again right before sending) without decoding anything. Only the records
# that exist come back, as [seq, record, ...]: most of a first run has none. The hits
# come back as two lists: on the suppression list, and (only) opted out of the category,
# so that each message's record says which.
#
# ARGV: the batch's first and last seq, a lease token, the claim record, then the
# first and last page and the first seq's line in the first page.
#
# With a lease token (ARGV[3]) the script also claims every message that is still
# queued and not suppressed (record ARGV[4]), if the lease is still held and the
# campaign is running: a batch that goes out as one chunk is claimed here, before its
# send as always, without a claim round trip of its own. Claimed and queued share the
# counters' "queued" bucket: nothing else moves.
_LOAD_BATCH = r"""
local find, sub = string.find, string.sub
local pages = redis.call('LRANGE', KEYS[1], ARGV[5], ARGV[6])
local start, stop = tonumber(ARGV[1]), tonumber(ARGV[2])
local skip = tonumber(ARGV[7])
local keys = {}
for _, page in ipairs(pages) do
  local pos = 1
  while #keys <= stop - start do
    local nl = find(page, '\n', pos, true)
    if skip > 0 then
      skip = skip - 1
    else
      keys[#keys + 1] = sub(page, pos, (nl or #page + 1) - 1)
    end
    if not nl then break end
    pos = nl + 1
  end
end
if #keys == 0 then return {0, {}, {}, {}} end
-- The seqs as text, made once here: a number is written out as text again by each
-- command that takes it (two here; together about 0.2 us a message on this machine).
local seqs, format = {}, string.format
for i = 1, #keys do seqs[i] = format('%d', start + i - 1) end
local recs = redis.call('HMGET', KEYS[2], unpack(seqs))
local listed = redis.call('HMGET', KEYS[3], unpack(keys))
local opted = redis.call('SMISMEMBER', KEYS[4], unpack(keys))
local claim = ARGV[3] ~= '' and redis.call('GET', KEYS[5]) == ARGV[3]
  and redis.call('HGET', KEYS[6], 'status') == 'running'
local hits, opts, fields, found = {}, {}, {}, {}
for i = 1, #keys do
  if listed[i] then
    hits[#hits + 1] = start + i - 1
  elseif opted[i] == 1 then
    opts[#opts + 1] = start + i - 1
  elseif claim and not recs[i] then
    fields[#fields + 1] = seqs[i]
    fields[#fields + 1] = ARGV[4]
  end
  if recs[i] then
    found[#found + 1] = start + i - 1
    found[#found + 1] = recs[i]
  end
end
for first = 1, #fields, 2000 do
  redis.call('HSET', KEYS[2], unpack(fields, first, math.min(#fields, first + 1999)))
end
return {claim and 1 or 0, hits, found, opts}
"""

# The first round trip of a batch run: take the lease (noted in store.LEASES_ZSET), read
# the campaign and its provider's stored configuration (the key is built here from
# ARGV[4], the providers' key prefix, and the campaign's "provider" field: one Redis, no
# cluster slots). The
# content (a few KB to decode and validate) comes back only when its fingerprint is not
# the one the caller already holds (ARGV[3]): a campaign's content never changes.
_BEGIN = (
    r"""
local lease, leases, ttl = KEYS[1], KEYS[3], ARGV[2]
if not redis.call('SET', lease, ARGV[1], 'NX', 'PX', ttl) then return {0} end
"""
    + NOTE_LEASE_HELD
    + r"""
local f = redis.call('HMGET', KEYS[2], 'status', 'send_date', 'batch_size', 'fingerprint',
  'provider')
local content = false
if f[4] ~= ARGV[3] then content = redis.call('HGET', KEYS[2], 'content') end
local provider = false
if f[5] then provider = redis.call('GET', ARGV[4] .. f[5]) end
return {1, f[1], f[2], f[3], f[4], f[5], content, provider}
"""
)


@dataclass
class BatchStart:
    """What :func:`begin_batch` read (``acquired`` False: another worker holds the batch)."""

    acquired: bool
    status: str = ""
    send_date: str = ""
    batch_size: str = ""
    fingerprint: str = ""
    nickname: str = ""  # the campaign's provider
    content: str | None = None  # None: the caller's copy is current (or none is stored)
    provider: str | None = None  # the provider's stored configuration (None: gone)


async def begin_batch(
    r: aioredis.Redis, lease: BatchLease, campaign_id: str, fingerprint: str = ""
) -> BatchStart:
    """Take ``lease`` and read the campaign and its provider in one round trip;
    ``fingerprint``: that of the content the caller holds for this campaign, if any."""
    answer = await r.eval(
        _BEGIN,
        3,
        lease.key,
        store.campaign_key(campaign_id),
        store.LEASES_ZSET,
        lease.token,
        lease.ttl_ms,
        fingerprint,
        store.provider_key(""),
    )
    if not answer[0]:
        return BatchStart(False)
    lease.held()
    status, send_date, batch_size, stored, nickname, content, provider = (
        None if v is None else str(v) for v in answer[1:8]
    )
    return BatchStart(
        True,
        status or "",
        send_date or "",
        batch_size or "",
        stored or "",
        nickname or "",
        content,
        provider,
    )


@dataclass(slots=True)
class Item:
    seq: int
    email: str
    user_id: str
    vars: Mapping[str, Any]
    attempts: int = 0
    throttles: int = 0  # tries the provider throttled (they are not attempts)
    claimed: bool = False  # claimed by this run's load and not attempted yet
    attempted: bool = False  # handed to the provider by this run (or about to be)
    due: float = 0.0  # a retry loaded before its time (see unsettled): when it is due
    # Its last transient failure (a retry's), kept in its record if it ends unsent.
    error_class: str = ""
    detail: str = ""


@dataclass
class LoadedBatch:
    seqs: list[int]
    records: dict[int, str]  # the ledger records there are (a queued message has none)
    recipients: list[Any]  # documents (decoded)
    suppressed: set[int]  # seqs on the suppression list or opted out of the category
    claimed: bool = False  # every queued, unsuppressed message was claimed (claim_record(1))
    # The campaign's cc and bcc addresses on the suppression list, with their entries.
    suppressed_copies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Those of ``suppressed`` opted out of the category and not on the suppression list.
    opted_out: set[int] = field(default_factory=set)


async def load_batch(
    r: aioredis.Redis,
    campaign_id: str,
    start: int,
    size: int,
    category: str,
    lease: BatchLease | None = None,
    copies: Sequence[str] = (),
) -> LoadedBatch:
    """A batch's recipients, ledger records and suppression hits, in one round trip.

    With ``lease``, its queued messages that are not suppressed are claimed too, if the
    lease is held and the campaign is running (``claimed`` says whether they were).
    ``copies``: the campaign's cc and bcc; those suppressed since the campaign was
    created (a hard bounce, a complaint) come back in ``suppressed_copies``, checked
    with the recipients (nothing more is read for a campaign without them).
    """
    first, last, offset = page_span(start, size)
    pipe = r.pipeline(transaction=True)  # documents and keys from one moment
    pipe.lrange(store.recipients_key(campaign_id), first, last)
    pipe.eval(
        _LOAD_BATCH,
        6,
        store.address_keys_key(campaign_id),
        store.ledger_key(campaign_id),
        store.SUPPRESSIONS_HASH,
        store.optout_key(category),
        store.batch_lease_key(campaign_id, lease.batch if lease else -1),
        store.campaign_key(campaign_id),
        start,
        start + size - 1,
        lease.token if lease else "",
        claim_record(1),
        first,
        last,
        offset,
    )
    if copies:
        pipe.hmget(store.SUPPRESSIONS_HASH, [suppression_key(a) for a in copies])
    pages, (claimed, hits, found, opts), *entries = await pipe.execute()
    docs = documents_of(pages, offset, size) if pages else []
    return LoadedBatch(
        list(range(start, start + len(docs))),
        {int(found[i]): found[i + 1] for i in range(0, len(found), 2)},
        docs,
        set(hits).union(opts),
        bool(claimed),
        {a: orjson.loads(e) for a, e in zip(copies, entries[0], strict=True) if e}
        if entries
        else {},
        set(opts),
    )


async def drop_suppressed(
    writer: LedgerWriter,
    items: list[Item],
    suppressed_seqs: set[int],
    opted_out: set[int] | frozenset[int] = frozenset(),
    category: str = "",
) -> tuple[list[Item], int]:
    """Record the suppressed recipients among ``items`` (see :func:`load_batch`); returns
    the items still to send and how many were recorded suppressed (one that a cancel
    settled since the load stays ``cancelled``). Each record's detail says why: those of
    ``opted_out`` switched ``category`` off, the others are on the suppression list."""
    if not suppressed_seqs or not items:
        return items, 0
    kept = [item for item in items if item.seq not in suppressed_seqs]
    suppressed = [item for item in items if item.seq in suppressed_seqs]
    listed = record(MessageState.SUPPRESSED, detail="on the suppression list")
    opted = listed
    if opted_out:
        opted = record(MessageState.SUPPRESSED, detail=opted_out_detail(category))
    writes = [(i.seq, opted if i.seq in opted_out else listed, "") for i in suppressed]
    answers = await writer.put_unsettled_many(writes)
    return kept, sum(answers)


def unsettled(
    loaded: LoadedBatch, settings: Settings
) -> tuple[list[Item], list[tuple[int, bytes, str]], float | None]:
    """From the ledger: what to send now, stale claims to settle, and when to come back.

    A message still ``claimed`` was in flight in a worker that is gone (we hold the lease
    now): its outcome is lost and it is recorded ``unknown``, never resent. Messages the
    load claimed itself come back with ``claimed`` set. A retry due within
    ``inline_retry_seconds`` comes back with its time in ``due``: the run waits for it
    (the provider's ``Retry-After`` is not cut short), later ones set the time to come back.
    """
    items: list[Item] = []
    stale: list[tuple[int, bytes, str]] = []
    retry_at: float | None = None
    now = time.time()
    made = Records()
    fresh_claimed = loaded.claimed
    records = loaded.records
    for seq, recipient in zip(loaded.seqs, loaded.recipients, strict=True):
        item = Item(
            seq, recipient["email"], recipient.get("user_id", ""), recipient.get("vars") or {}
        )
        raw_rec = records.get(seq)
        if raw_rec is None:  # still queued: most of a batch on its first run
            item.claimed = fresh_claimed and seq not in loaded.suppressed
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
            item.throttles = rec["throttles"]
            item.error_class, item.detail = rec["error_class"], rec["detail"]
            next_at = rec["next_at"] or 0.0  # (none or null: due now)
            if next_at > now + settings.inline_retry_seconds:
                retry_at = min(retry_at or next_at, next_at)
            else:
                item.due = next_at
                items.append(item)
    return items, stale, retry_at


def unsent_record(made: Records, state: MessageState, item: Item) -> bytes:
    """The record of a message a cancel or the expiry ends unsent (``state``): what its
    tries said stays (attempts, throttled tries, its last error), as the settling of a
    whole campaign keeps it (``lifecycle._SETTLE_WINDOW``)."""
    return made.get(
        state,
        item.attempts,
        error_class=item.error_class,
        detail=item.detail,
        throttles=item.throttles,
    )


def terminal_state(status: str | None, content: CampaignContent) -> MessageState | None:
    """The state unsent messages take when the campaign will not send them any more."""
    if status == CampaignStatus.CANCELLED.value:
        return MessageState.CANCELLED
    if status == CampaignStatus.EXPIRED.value:
        return MessageState.EXPIRED
    if content.expires_at is not None and content.expires_at <= datetime.now(UTC):
        return MessageState.EXPIRED
    return None
