"""Apply accepted callback events: dedupe, campaign counters, suppression, system events.

The gateway (:mod:`dispatch.callbacks`) stores each accepted request as one
:class:`InboxBatch` in ``dispatch:callbacks:inbox`` before it answers; the
``dispatch.process_callback`` task then calls :func:`apply_batch`. Every event is applied
by one Lua script, so for each event these happen together or not at all:

1. ``SET NX EX`` on its dedupe key (the provider's event id where it is stable, a content
   hash otherwise, :meth:`CallbackEvent.dedupe_key`); a redelivered event stops here;
2. the campaign counter of its type (DESIGN §5), counted once per message: a bitmap by
   ``seq`` per counter remembers which messages were counted (until the campaign's counts
   close, :mod:`dispatch.retention`: then no event moves them), and only a meta of this
   account whose ``seq`` is inside the campaign and whose recipient is the event's
   counts at all; a message the ledger calls ``unknown`` (its send's outcome was lost)
   becomes ``sent``, since the provider's event about it shows that it took it (the
   campaign's ``delivered`` would otherwise pass its ``sent``), with the ``Notification
   Sent`` its lost outcome did not write; an event about a message
   whose send is still on the wire waits for that send's outcome (:func:`apply_batch`);
3. the suppression entry (hard bounce, spam, unsubscribe; the first reason stands, but
   another replaces the person's own unsubscribe, which they may lift);
4. the system events of DESIGN §6 on ``dispatch:events``.

The last chunk of a batch also removes it from the inbox, so a batch is either still
there (and will be applied again, harmlessly) or fully applied.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from dispatch import provider_ids, reputation, store
from dispatch.ledger import MOVE_COUNT, ct_source, system_event
from dispatch.recipient_pages import PAGE, line_safe
from dispatch.retention import COUNTS_CLOSED_FIELD
from dispatch.settings import get_settings
from dispatch.suppressions import OWN_UNSUBSCRIBE_PATTERN, suppression_key
from providers.callbacks import CallbackEvent, EventType
from providers.meta import Meta, parse_meta

log = logging.getLogger(__name__)

# Events per script call: bounds how long one call holds Redis.
CHUNK = 250
# Campaign counter of each event type (DESIGN §5).
COUNTERS: dict[EventType, str] = {
    EventType.DELIVERED: "delivered",
    EventType.HARD_BOUNCE: "hard_bounced",
    EventType.SOFT_BOUNCE: "soft_bounced",
    EventType.SPAM: "spam",
    EventType.UNSUBSCRIBED: "unsubscribed",
    EventType.CLICKED: "clicked",
}
SUPPRESSING = frozenset({EventType.HARD_BOUNCE, EventType.SPAM, EventType.UNSUBSCRIBED})
GUARDED = frozenset({EventType.HARD_BOUNCE, EventType.SPAM})  # dispatch.reputation
# A meta's seq at or past this names no message: Redis refuses larger bitmap offsets
# (SETBIT) and list indexes (LINDEX, past 2**63) with an error that failed the whole batch,
# and no campaign holds this many recipients. A meta may carry any integer (providers.meta).
MAX_SEQ = 2**32
# How long an event about a message whose send is on the wire waits for its outcome
# (apply_batch); a send ends within its timeout, a crashed worker's claims are written
# unknown by housekeeping within minutes. After this the event is applied as it is.
IN_FLIGHT_WAIT_SECONDS = 3600.0
# The detail of a message whose send's outcome was lost until an event about it came.
PROVEN_DETAIL = "outcome unknown at send; a callback about it shows the provider took it"

_APPLY = (
    MOVE_COUNT
    + """
local stream, supp, inbox, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local maxlen, ttl, batch, proven, defer = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local source, n = ARGV[6], tonumber(ARGV[7])
local call, sub = redis.call, string.sub
-- The entry of the person's own unsubscribe (dispatch.preferences.own_unsubscribe): its
-- keys come in suppression_entry's order, and a quote inside a value is escaped.
local OWN_UNSUBSCRIBE = '"""
    + OWN_UNSUBSCRIBE_PATTERN
    + """'
-- A group is a campaign and one of its counters, with its keys after the events' and its
-- counter's name after their arguments, each followed by the name of a counter that also
-- counts the group's messages ('' for none: dispatch.reputation.NOT_ATTEMPTED). Its
-- campaign is read once (a call writes neither a campaign nor its total), and its
-- counters move once, after the loop. A campaign purged DISPATCH_RETENTION_DAYS ago
-- closed its counts (dispatch.retention): its bitmaps expired then, by this clock, and
-- its events move no counter.
local groups, order, sent_by, nicknames, bad = {}, {}, {}, {}, {}
-- Redis does not undo a script's writes when it raises: an HINCRBY refused after the
-- loop (a counter that is not an integer: a hand edit, a bug) lost the counts of every
-- group after it, its events already marked seen. A group whose counters cannot move
-- (or whose keys hold another type) is found before its first event is written: it
-- counts nothing (its total stays 0) and is named in the answer. nil when it can move.
local function integer(v)
  return not v or v == '0' or (#v <= 18 and string.find(v, '^%-?[1-9]%d*$') ~= nil)
end
local function unmovable(found)
  for key, kinds in pairs({[found.counters] = 'hash', [found.ledger] = 'hash',
                           [found.bits] = 'string'}) do
    local kind = call('TYPE', key).ok
    if kind ~= kinds and kind ~= 'none' then return key .. ' is a ' .. kind end
  end
  local fields = {'total', found.counter, 'unknown', 'sent'}
  if found.also ~= '' then fields[5] = found.also end
  local values = call('HMGET', found.counters, unpack(fields))
  if not tonumber(values[1] or '0') then return 'total is ' .. values[1] end
  for i = 2, #fields do
    if not integer(values[i]) then return fields[i] .. ' is ' .. values[i] end
  end
  found.total = tonumber(values[1] or '0')
  return nil
end
local function group(g)
  local found = groups[g]
  if found == nil then
    local k = 5 + n + (g - 1) * 4
    found = {campaign = KEYS[k + 1], counters = KEYS[k + 2], bits = KEYS[k + 3],
             ledger = KEYS[k + 4], counter = ARGV[6 + n * 6 + g * 2],
             also = ARGV[7 + n * 6 + g * 2], total = 0, counted = 0, proven = 0}
    -- A campaign is a hash: a meta whose campaign id names another of a campaign's keys
    -- (c1:recipients, a list) names no campaign (its HGET failed the batch, for ever).
    if call('TYPE', found.campaign).ok == 'hash' then
      found.bad = unmovable(found)
      if found.bad then
        bad[#bad + 1] = found.counters
        bad[#bad + 1] = found.bad
      else
        found.closes = tonumber(call('HGET', found.campaign, 'COUNTS_CLOSED') or '')
        if found.closes then
          local t = call('TIME')
          found.closed = tonumber(t[1]) + tonumber(t[2]) / 1000000 >= found.closes
        end
      end
    end
    groups[g] = found
    order[#order + 1] = found
  end
  return found
end
local applied, deferred, uncounted = 0, 0, 0
for i = 0, n - 1 do
  local a = 7 + i * 6
  local g, seq = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local email, entry, ev1, ev2 = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local grp, old, closed = nil, nil, false
  if g > 0 then
    grp = group(g)
    closed = grp.closed
    if seq < grp.total and not closed then old = call('HGET', grp.ledger, seq) else grp = nil end
  end
  if defer ~= '' and old and sub(old, 1, 14) == '{"s":"claimed"' then
    -- Its send is on the wire: its outcome is not written yet and may be "unknown",
    -- which this event would disprove. Applied when the batch comes again.
    deferred = deferred + 1
  elseif call('SET', KEYS[5 + i + 1], '1', 'NX', 'EX', ttl) then
    applied = applied + 1
    if closed then uncounted = uncounted + 1 end
    if grp then
      -- The provider took a message whose send's outcome was lost: it was sent (the
      -- ledger's own move, counters and per-provider tally with it).
      if old and sub(old, 1, 14) == '{"s":"unknown"' then
        local attempts = string.match(old, '"a":(%d+)') or '0'
        call('HSET', grp.ledger, seq, '{"s":"sent","a":' .. attempts .. proven)
        grp.proven = grp.proven + 1
        if grp.provider == nil then
          grp.provider = call('HGET', grp.campaign, 'provider') or 'unknown'
        end
        if sent_by[grp.provider] == nil then
          sent_by[grp.provider] = 0
          nicknames[#nicknames + 1] = grp.provider
        end
        sent_by[grp.provider] = sent_by[grp.provider] + 1
        -- and its Notification Sent, which an unknown outcome did not write: the
        -- event's first entry (every counted type has one) under that name, with the
        -- properties of a send. Its keys come in event_fields' order, and a string in it
        -- holds a quote only escaped: the first ',"ts":' and ',"properties":' are keys.
        local ts = string.find(ev1, ',"ts":', 1, true)
        local props = string.find(ev1, ',"properties":', 1, true)
        local sent = '{"event":"Notification Sent"' .. sub(ev1, ts, props) ..
          '"properties":' .. source .. '}'
        call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', sent)
      end
      if call('SETBIT', grp.bits, seq, 1) == 0 then grp.counted = grp.counted + 1 end
    end
    if email ~= '' and call('HSETNX', supp, email, entry) == 0
        and not string.find(entry, OWN_UNSUBSCRIBE) then
      -- A bounce, a complaint or a provider's unsubscribe report after the person's own
      -- unsubscribe (which the preference center lets them lift) replaces it: lifting it
      -- must not send to such an address.
      local held = call('HGET', supp, email)
      if held and string.find(held, OWN_UNSUBSCRIBE) then call('HSET', supp, email, entry) end
    end
    if ev1 ~= '' then call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', ev1) end
    if ev2 ~= '' then call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', ev2) end
  end
end
for _, grp in ipairs(order) do
  if grp.proven > 0 then
    call('HINCRBY', grp.counters, 'unknown', -grp.proven)
    call('HINCRBY', grp.counters, 'sent', grp.proven)
  end
  if grp.counted > 0 then
    call('HINCRBY', grp.counters, grp.counter, grp.counted)
    if grp.also ~= '' then call('HINCRBY', grp.counters, grp.also, grp.counted) end
    -- a counter that had not moved by the purge: its new bitmap goes when the others did
    if grp.closes then
      call('PEXPIREAT', grp.bits, string.format('%.0f', math.ceil(grp.closes * 1000)))
    end
  end
end
for _, nickname in ipairs(nicknames) do
  move(stats, nickname .. '|sent', sent_by[nickname])
end
if batch ~= '' and deferred == 0 then
  call('HDEL', inbox, batch)
  call('ZREM', pending, batch)
end
return {applied, deferred, uncounted, bad, faults}
"""
).replace("COUNTS_CLOSED", COUNTS_CLOSED_FIELD)


class InboxEvent(BaseModel):
    """What applying one event needs, as stored in the inbox (the raw item is not kept)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: EventType
    provider_type: str
    email: str
    meta: str = ""
    campaign_id: str = ""
    account_id: str = ""
    seq: int | None = None
    meta_email: str = ""
    description: str = ""
    ts: float | None = None  # the provider's time of the event
    url: str = ""
    not_attempted: bool = False  # CallbackEvent.not_attempted
    dedupe: str  # CallbackEvent.dedupe_key()
    notes: tuple[str, ...] = ()
    # Of an event without meta only: the provider's id of the message, which may name it
    # (dispatch.provider_ids).
    provider_message_id: str = ""

    @classmethod
    def from_event(cls, event: CallbackEvent) -> InboxEvent:
        """Keep what the effects need (see :func:`inbox_record`)."""
        return cls.model_validate(inbox_record(event))

    @property
    def meta_mismatch(self) -> bool:
        """The meta names another recipient than the event's ``email``.

        Compared as suppression keys: case and the spelling of the domain (Unicode or
        IDNA) do not make another recipient.
        """
        if not self.meta_email or self.meta_email == self.email:
            return False
        return suppression_key(self.meta_email) != suppression_key(self.email)


def inbox_record(event: CallbackEvent) -> dict[str, Any]:
    """An :class:`InboxEvent` of ``event`` as stored (JSON-ready): what the effects need;
    the campaign is the meta's when the meta parses.

    The gateway stores these without making the model (a pydantic model a callback event
    cost it about 10 µs); the worker validates them as :class:`InboxEvent` when it reads
    the batch.
    """
    fields = event.meta_fields
    record: dict[str, Any] = {
        "type": event.type.value,
        "provider_type": event.provider_type,
        "email": event.email,
        "meta": event.meta,
        "campaign_id": fields.campaign_id if fields else event.campaign_id,
        "account_id": fields.account_id if fields else "",
        "seq": fields.seq if fields else None,
        "meta_email": fields.email if fields else "",
        "description": event.description,
        "ts": event.timestamp.timestamp() if event.timestamp else None,
        "url": event.url,
        "dedupe": event.dedupe_key(),
        "notes": event.notes,
    }
    if not event.meta and event.provider_message_id:
        record["provider_message_id"] = event.provider_message_id
    if event.not_attempted:
        record["not_attempted"] = True
    return record


class InboxBatch(BaseModel):
    """The accepted events of one callback request, durable until applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    provider: str  # nickname
    kind: str
    received: float
    events: tuple[InboxEvent, ...]


# The dispatch:events entries of each event type (DESIGN §6 table): its names, each with
# the one property the type gives it ("URL" only when the provider gave one).
ENTRIES: dict[EventType, tuple[tuple[str, str], ...]] = {
    EventType.DELIVERED: (("Notification Delivered", "CT Source"),),
    EventType.HARD_BOUNCE: (("Notification Failed", "Error"), ("Channel Unsubscribed", "Type")),
    EventType.SOFT_BOUNCE: (("Notification Failed", "Error"),),
    EventType.SPAM: (("Channel Unsubscribed", "Type"),),
    EventType.UNSUBSCRIBED: (("Channel Unsubscribed", "Type"),),
    EventType.CLICKED: (("Notification Clicked", "URL"),),
}


def system_events(
    event: InboxEvent,
    *,
    provider: str,
    kind: str,
    received: float,
    mismatch: bool | None = None,
) -> list[str]:
    """The ``dispatch:events`` entries of one callback event (DESIGN §6 table).

    ``mismatch``: ``event.meta_mismatch`` when the caller has it already.
    """
    names = ENTRIES.get(event.type)
    if not names:
        return []
    common: dict[str, Any] = {"Callback Type": event.type.value}
    if event.meta_mismatch if mismatch is None else mismatch:
        # DESIGN §6: the event applies to ``email``; the meta's recipient is kept beside it.
        common["Meta Email"] = event.meta_email
        common["Meta Email Mismatch"] = True
    entries = []
    for name, prop in names:
        if prop == "CT Source":
            properties = {prop: ct_source(kind), **common}
        elif prop != "URL" or event.url:
            properties = {prop: event.url if prop == "URL" else event.description, **common}
        else:
            properties = common
        entries.append(
            system_event(
                name,
                email=event.email,
                campaign_id=event.campaign_id,
                meta=event.meta,
                provider=provider,
                properties=properties,
                ts=event.ts if event.ts is not None else received,
            )
        )
    return entries


def _attributed(r: redis.Redis, events: Sequence[InboxEvent], days: float) -> Sequence[InboxEvent]:
    """``events``, each that came without meta but with a provider id kept at send time
    (:mod:`dispatch.provider_ids`) given that message's meta: from then on it is applied
    as if the provider had echoed the meta, its checks included."""
    ids = [e.provider_message_id for e in events if not e.meta and e.provider_message_id]
    metas = provider_ids.lookup(r, ids, days) if ids else {}
    if not metas:
        return events
    found = []
    for event in events:
        meta = metas.get(event.provider_message_id) if not event.meta else None
        fields = _parsed(meta) if meta is not None else None
        if fields is not None:
            event = event.model_copy(
                update={"meta": meta, "campaign_id": fields.campaign_id, "seq": fields.seq,
                        "account_id": fields.account_id, "meta_email": fields.email}
            )  # fmt: skip
        found.append(event)
    log.info("%d callback events without meta matched by their provider's message id", len(metas))
    return found


def _parsed(meta: str) -> Meta | None:
    """A kept meta, parsed (as the worker wrote it, it parses; else None, logged)."""
    try:
        return parse_meta(meta)
    except ValueError as exc:
        log.warning("a kept provider id's meta %r does not parse: %s", meta, exc)
        return None


def _digest(dedupe: str) -> str:
    return hashlib.sha256(dedupe.encode()).hexdigest()[:32]


def _names_a_message(event: InboxEvent, account_id: str, mismatch: bool | None = None) -> bool:
    """The meta names a message of this account, for the event's own recipient.

    ``mismatch``: ``event.meta_mismatch`` when the caller has it already.
    """
    return (
        bool(event.campaign_id)
        and event.account_id == account_id
        and event.seq is not None
        and 0 <= event.seq < MAX_SEQ
        and not (event.meta_mismatch if mismatch is None else mismatch)
    )


def _seq_holders(r: redis.Redis, events: Sequence[InboxEvent], named: Sequence[bool]) -> list[bool]:
    """For each event whose meta names a message (``named``: :func:`_names_a_message`),
    whether its meta's ``seq`` is its recipient's message: the
    campaign's address at that seq is the meta's. A meta whose seq was altered (by a
    provider, a relay, a hand) names another recipient's message, which the event must
    not count or prove sent. Stored addresses never change (pages are only appended to),
    so reading them before the script is safe; a seq past the stored ones is left to the
    script, which does not count it."""
    wanted = [
        (event.campaign_id, event.seq // PAGE) if names and event.seq is not None else None
        for event, names in zip(events, named, strict=True)
    ]
    pages = sorted({w for w in wanted if w is not None})
    pipe = r.pipeline(transaction=False)
    for campaign_id, page in pages:
        pipe.lindex(store.address_keys_key(campaign_id), page)
    found: dict[tuple[str, int], list[str] | None] = {
        key: None
        if text is None
        else (text.decode() if isinstance(text, bytes) else text).split("\n")
        for key, text in zip(pages, pipe.execute() if pages else [], strict=True)
    }
    holders = []
    for event, key in zip(events, wanted, strict=True):
        if key is None or event.seq is None:
            holders.append(False)
            continue
        lines, at = found[key], event.seq % PAGE
        if lines is None:  # no such page: a seq the campaign does not have (or no campaign)
            holders.append(True)  # left to the script, which counts no such seq
            continue
        address = line_safe(suppression_key(event.meta_email or event.email))
        holders.append(at < len(lines) and lines[at] == address)
    return holders


def suppression_entry(event: InboxEvent, *, provider: str, received: float) -> tuple[str, str]:
    """The suppression list's address and entry (JSON) of ``event``; ("", "") for an event
    that does not suppress."""
    if event.type not in SUPPRESSING:
        return "", ""
    email = suppression_key(event.email)
    entry = orjson.dumps(
        {
            "email": email,
            "reason": event.type.value,
            "source": f"callback:{provider}:{event.provider_type}",
            "ts": received,
            "detail": event.description[:500],
            "campaign_id": event.campaign_id,
            "meta": event.meta,
        }
    ).decode()  # text: see ledger.system_event
    return email, entry


def _chunk_args(
    r: redis.Redis,
    events: Sequence[InboxEvent],
    *,
    provider: str,
    kind: str,
    received: float,
    account_id: str,
) -> tuple[list[str], list[str | int | bytes]]:
    """The keys and arguments of :data:`_APPLY` for ``events``, after its fixed ones: the
    number of events; each event's dedupe key, and its group (0: it counts nowhere),
    seq, suppression entry (address and JSON) and two ``dispatch:events`` entries ("":
    none); each group's four keys and its counter's name, then the name of the counter
    that also counts its messages ("" for none; :data:`reputation.NOT_ATTEMPTED`'s for a
    group of events the provider did not try).

    An event counts (its group: its campaign and counter) only when its meta's ``seq`` is
    its recipient's message. An event for another address (a forward, one meta header for
    several SES recipients, a meta copied by mistake) says nothing of that message: it
    moves no counter, and is still recorded and suppresses its own address. Nor does a
    meta whose seq is another recipient's (:func:`_seq_holders`).
    """
    mismatches = [event.meta_mismatch for event in events]
    named = [
        _names_a_message(event, account_id, mismatch)
        for event, mismatch in zip(events, mismatches, strict=True)
    ]
    holders = _seq_holders(r, events, named)
    seen: list[str] = []
    args: list[str | int | bytes] = [len(events)]
    groups: dict[tuple[str, str, str], int] = {}
    for event, mismatch, holds_seq in zip(events, mismatches, holders, strict=True):
        counter = COUNTERS.get(event.type, "")
        group, seq = 0, -1
        if counter and holds_seq and event.seq is not None:  # holds_seq: named a message
            also = reputation.NOT_ATTEMPTED.get(counter, "") if event.not_attempted else ""
            group = groups.setdefault((event.campaign_id, counter, also), len(groups) + 1)
            seq = event.seq
        seen.append(store.callback_seen_key(provider, _digest(event.dedupe)))
        email, entry = suppression_entry(event, provider=provider, received=received)
        entries = system_events(
            event, provider=provider, kind=kind, received=received, mismatch=mismatch
        )
        entries += [""] * (2 - len(entries))
        args += (group, seq, email, entry, *entries)
    keys = seen
    for campaign_id, counter, _ in groups:
        keys += (
            store.campaign_key(campaign_id),
            store.counters_key(campaign_id),
            store.callback_bits_key(campaign_id, counter),
            store.ledger_key(campaign_id),
        )
    for _, counter, also in groups:
        args += (counter, also)
    return keys, args


def apply_events(
    events: Sequence[InboxEvent],
    *,
    provider: str,
    kind: str,
    received: float | None = None,
    batch_id: str = "",
    sender_kind: str = "",
    client: redis.Redis | None = None,
) -> int:
    """Apply ``events`` of ``provider``; returns how many were new (not redeliveries).

    ``batch_id``, when given, is removed from the inbox by the same script call as the
    last events. ``sender_kind``: the kind of the provider that sent the messages, when
    ``kind`` is not (the ``CT Source`` of a ``Notification Sent`` an event proves).
    Raises ``redis.RedisError`` when Redis fails (nothing of the failed chunk is applied;
    earlier chunks are, and are recognised when applied again).
    """
    return _apply(
        events, provider=provider, kind=kind, received=received, batch_id=batch_id,
        wait_for_sends=False, client=client, sender_kind=sender_kind,
    )[0]  # fmt: skip


def _apply(
    events: Sequence[InboxEvent],
    *,
    provider: str,
    kind: str,
    received: float | None,
    batch_id: str,
    wait_for_sends: bool,
    client: redis.Redis | None,
    sender_kind: str = "",
) -> tuple[int, int, int]:
    """:func:`apply_events`; returns (new, deferred, uncounted). ``wait_for_sends``: an
    event about a message whose send is on the wire (``claimed``) is deferred, and then
    ``batch_id`` stays in the inbox, to be applied again. ``uncounted``: the new ones
    about a campaign whose counts had closed (applied, but no counter moved)."""
    r = client or store.sync_client()
    settings = get_settings()
    received = time.time() if received is None else received
    script = r.register_script(_APPLY)
    fixed = [
        store.EVENTS_STREAM,
        store.SUPPRESSIONS_HASH,
        store.CALLBACK_INBOX_HASH,
        store.CALLBACK_PENDING_ZSET,
        store.MESSAGE_STATS_HASH,
    ]
    # The rest of the record of a message an event shows was sent (see _APPLY), after
    # its state and attempts.
    proven = b"," + orjson.dumps({"t": round(received, 3), "d": PROVEN_DETAIL})[1:]
    # The properties of its Notification Sent, as the ledger writes them (dispatch.batch_outcomes).
    sent_properties = orjson.dumps({"CT Source": ct_source(sender_kind or kind)})
    applied = deferred = uncounted = 0
    starts = range(0, len(events), CHUNK) if events else range(1)
    for start in starts:
        chunk = events[start : start + CHUNK]
        last = start + CHUNK >= len(events)
        keys, args = _chunk_args(
            r, chunk, provider=provider, kind=kind, received=received,
            account_id=settings.account_id,
        )  # fmt: skip
        keys[:0] = fixed
        args[:0] = [
            settings.events_maxlen,
            settings.callback_dedupe_ttl_seconds,
            batch_id if last and not deferred else "",
            proven,
            "1" if wait_for_sends else "",
            sent_properties,
        ]
        new, waiting, closed, bad, faults = script(keys=keys, args=args)
        if faults:
            log.error("callback events moved no count of: %s", "; ".join(faults))
        for key, why in zip(bad[::2], bad[1::2], strict=True):
            log.error(
                "callback events of the campaign whose counters are %s moved no counter: %s",
                key, why,
            )  # fmt: skip
        applied += int(new)
        deferred += int(waiting)
        uncounted += int(closed)
    return applied, deferred, uncounted


def apply_batch(batch_id: str, client: redis.Redis | None = None) -> int | None:
    """Apply the inbox batch ``batch_id``; returns the number of new events.

    None when the batch is no longer in the inbox (already applied). A batch that cannot
    be read is moved to ``dispatch:callbacks:dead`` and logged. Raises
    ``redis.RedisError`` when Redis fails (the batch stays in the inbox).

    An event about a message whose send is still on the wire waits for that send's
    outcome (for :data:`IN_FLIGHT_WAIT_SECONDS` after the batch came): an ESP may report
    a delivery before the answer to our request, and when that answer is then lost the
    message is written ``unknown``, which the event disproves (see _APPLY). Such a batch
    stays in the inbox, its other events applied, and ``dispatch.recover_callbacks``
    hands it out again after ``DISPATCH_CALLBACK_RECOVERY_SECONDS``.
    """
    r = client or store.sync_client()
    raw = r.hget(store.CALLBACK_INBOX_HASH, batch_id)
    if raw is None:
        # Stored and applied each in one step with its pending entry: one left alone
        # (the batch deleted by hand) was handed out again by the recovery for ever.
        r.zrem(store.CALLBACK_PENDING_ZSET, batch_id)
        return None
    try:
        batch = InboxBatch.model_validate_json(raw)
    except ValidationError as exc:
        log.error("unreadable callback batch %s moved aside: %s", batch_id, exc)
        pipe = r.pipeline()
        pipe.hset(store.CALLBACK_DEAD_HASH, batch_id, raw)
        pipe.hdel(store.CALLBACK_INBOX_HASH, batch_id)
        pipe.zrem(store.CALLBACK_PENDING_ZSET, batch_id)
        pipe.execute()
        return 0
    # Events without meta, matched by their provider's message id, count as if they
    # carried it (and the reputation guard below sees their campaigns).
    events = _attributed(r, batch.events, get_settings().provider_id_days)
    applied, deferred, uncounted = _apply(
        events,
        provider=batch.provider,
        kind=batch.kind,
        received=batch.received,
        batch_id=batch.id,
        wait_for_sends=time.time() - batch.received < IN_FLIGHT_WAIT_SECONDS,
        client=r,
    )
    reputation.check(r, (e.campaign_id for e in events if e.type in GUARDED))
    log.info(
        "callback batch applied" if not deferred else
        "callback batch applied but for events whose message's send is on the wire",
        extra={"batch": batch.id, "provider": batch.provider, "events": len(batch.events),
               "applied": applied, "deferred": deferred, "uncounted": uncounted},
    )  # fmt: skip
    return applied


def lost_batches(grace: float, client: redis.Redis | None = None, limit: int = 1000) -> list[str]:
    """Inbox batches received more than ``grace`` seconds ago, not applied, and whose task
    no longer waits in the ``events`` queue.

    The queue is first in, first out, and a batch's score is the time its task was last
    enqueued: of the pending batches, the newest as many as the queue holds tasks may
    still have theirs waiting there, so only the older ones are handed out. During a
    backlog longer than ``grace`` each waiting batch was otherwise enqueued again every
    ``grace`` (the copies only read that the batch was gone, and lengthened the backlog).
    A lost batch newer than a waiting one is thus handed out once the queue has worked
    down to it, when its task would have run anyway.

    Their score is moved to now, so each is handed out again only once per ``grace``.
    Raises ``redis.RedisError``.
    """
    r = client or store.sync_client()
    pipe = r.pipeline(transaction=False)
    pipe.zcard(store.CALLBACK_PENDING_ZSET)
    for key in store.queue_keys(store.EVENTS_QUEUE):  # one list per priority
        pipe.llen(key)
    pending, *waiting = pipe.execute()
    count = min(limit, int(pending) - sum(waiting))
    if count <= 0:
        return []
    now = time.time()
    ids = [
        str(i) for i in r.zrangebyscore(store.CALLBACK_PENDING_ZSET, "-inf", now - grace, 0, count)
    ]
    if ids:
        r.zadd(store.CALLBACK_PENDING_ZSET, dict.fromkeys(ids, now), xx=True)
    return ids
