"""The apply path of callbacks (review A8) against its form before: the same events give
the same Redis, key for key.

``effects._APPLY`` now takes one key and six arguments an event (its dedupe key; its group,
seq, suppression entry and entries), reads each campaign once a call and moves each
counter once a call, where it took five keys and six arguments an event and read and
moved them for each. The old script and the Python that fed it are kept here verbatim
(``OLD_APPLY``, ``_old_*``) as the reference: each seed builds two campaigns whose
messages are in every ledger state, a few hundred events of every kind (metas of other
recipients, other accounts, other seqs, no campaign; redeliveries within and across
chunks; messages whose outcome was lost or whose send is on the wire), applies them twice
(waiting for sends, then not) with each form from the same snapshot, and compares every
key, the streams' entries in order and the answers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis

from dispatch import effects, store
from dispatch.effects import (
    CHUNK,
    COUNTERS,
    MAX_SEQ,
    PROVEN_DETAIL,
    InboxEvent,
)
from dispatch.ledger import ct_source, system_event
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from providers.callbacks import EventType
from tests.callback_support import draft_campaign, save_providers

OLD_APPLY = """
local stream, supp, inbox, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local maxlen, ttl, batch, proven, defer = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local source = ARGV[6]
local applied, deferred = 0, 0
for i = 0, (#KEYS - 5) / 5 - 1 do
  local k, a = 5 + i * 5, 6 + i * 6
  local counter, seq = ARGV[a + 1], tonumber(ARGV[a + 2])
  local email, entry, ev1, ev2 = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local ours, old = false, nil
  if counter ~= '' and seq >= 0 and redis.call('EXISTS', KEYS[k + 2]) == 1 then
    ours = seq < tonumber(redis.call('HGET', KEYS[k + 3], 'total') or '0')
    if ours then old = redis.call('HGET', KEYS[k + 5], seq) end
  end
  if defer ~= '' and old and string.sub(old, 1, 14) == '{"s":"claimed"' then
    -- Its send is on the wire: its outcome is not written yet and may be "unknown",
    -- which this event would disprove. Applied when the batch comes again.
    deferred = deferred + 1
  elseif redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', ttl) then
    applied = applied + 1
    if ours then
      -- The provider took a message whose send's outcome was lost: it was sent (the
      -- ledger's own move, counters and per-provider tally with it).
      if old and string.sub(old, 1, 14) == '{"s":"unknown"' then
        local attempts = string.match(old, '"a":(%d+)') or '0'
        redis.call('HSET', KEYS[k + 5], seq, '{"s":"sent","a":' .. attempts .. proven)
        redis.call('HINCRBY', KEYS[k + 3], 'unknown', -1)
        redis.call('HINCRBY', KEYS[k + 3], 'sent', 1)
        local nickname = redis.call('HGET', KEYS[k + 2], 'provider') or 'unknown'
        redis.call('HINCRBY', stats, nickname .. '|sent', 1)
        -- and its Notification Sent, which an unknown outcome did not write: the
        -- event's first entry (every counted type has one) under that name, with the
        -- properties of a send. Its keys come in event_fields' order, and a string in it
        -- holds a quote only escaped: the first ',"ts":' and ',"properties":' are keys.
        local ts = string.find(ev1, ',"ts":', 1, true)
        local props = string.find(ev1, ',"properties":', 1, true)
        local sent = '{"event":"Notification Sent"' .. string.sub(ev1, ts, props) ..
          '"properties":' .. source .. '}'
        redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', sent)
      end
      if redis.call('SETBIT', KEYS[k + 4], seq, 1) == 0 then
        redis.call('HINCRBY', KEYS[k + 3], counter, 1)
      end
    end
    if email ~= '' then redis.call('HSETNX', supp, email, entry) end
    if ev1 ~= '' then redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', ev1) end
    if ev2 ~= '' then redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'json', ev2) end
  end
end
if batch ~= '' and deferred == 0 then
  redis.call('HDEL', inbox, batch)
  redis.call('ZREM', pending, batch)
end
return {applied, deferred}
"""


def _old_system_events(
    event: InboxEvent, *, provider: str, kind: str, received: float
) -> list[str]:
    """The ``dispatch:events`` entries of one callback event (DESIGN §6 table)."""
    description = event.description
    source = ct_source(kind)
    names: list[tuple[str, dict[str, Any]]] = {
        EventType.DELIVERED: [("Notification Delivered", {"CT Source": source})],
        EventType.HARD_BOUNCE: [
            ("Notification Failed", {"Error": description}),
            ("Channel Unsubscribed", {"Type": description}),
        ],
        EventType.SOFT_BOUNCE: [("Notification Failed", {"Error": description})],
        EventType.SPAM: [("Channel Unsubscribed", {"Type": description})],
        EventType.UNSUBSCRIBED: [("Channel Unsubscribed", {"Type": description})],
        EventType.CLICKED: [("Notification Clicked", {"URL": event.url} if event.url else {})],
    }.get(event.type, [])
    common: dict[str, Any] = {"Callback Type": event.type.value}
    if event.meta_mismatch:
        # DESIGN §6: the event applies to ``email``; the meta's recipient is kept beside it.
        common["Meta Email"] = event.meta_email
        common["Meta Email Mismatch"] = True
    return [
        system_event(
            name,
            email=event.email,
            campaign_id=event.campaign_id,
            meta=event.meta,
            provider=provider,
            properties={**properties, **common},
            ts=event.ts if event.ts is not None else received,
        )
        for name, properties in names
    ]


def _old_digest(dedupe: str) -> str:
    return hashlib.sha256(dedupe.encode()).hexdigest()[:32]


def _old_names_a_message(event: InboxEvent, account_id: str) -> bool:
    """The meta names a message of this account, for the event's own recipient."""
    return (
        bool(event.campaign_id)
        and event.account_id == account_id
        and event.seq is not None
        and 0 <= event.seq < MAX_SEQ
        and not event.meta_mismatch
    )


def _old_seq_holders(r: redis.Redis, events: Sequence[InboxEvent], account_id: str) -> list[bool]:
    """The old ``_seq_holders`` (unchanged but for taking what the old test named)."""
    named = [_old_names_a_message(event, account_id) for event in events]
    return effects._seq_holders(r, events, named)


def _old_event_args(
    event: InboxEvent,
    *,
    provider: str,
    kind: str,
    received: float,
    account_id: str,
    holds_seq: bool,
) -> tuple[list[str], list[str | int | bytes]]:
    counter = COUNTERS.get(event.type, "")
    # The meta's seq is its recipient's message. An event for another address (a forward,
    # one meta header for several SES recipients, a meta copied by mistake) says nothing
    # of that message: it moves no counter, and is still recorded and suppresses its own
    # address. Nor does a meta whose seq is another recipient's (``_seq_holders``).
    ours = holds_seq and _old_names_a_message(event, account_id)
    seq = event.seq if ours and event.seq is not None else -1
    campaign_id = event.campaign_id if ours else "-"
    keys = [
        store.callback_seen_key(provider, _old_digest(event.dedupe)),
        store.campaign_key(campaign_id),
        store.counters_key(campaign_id),
        store.callback_bits_key(campaign_id, counter or "none"),
        store.ledger_key(campaign_id),
    ]
    # unchanged, now a function of its own
    email, entry = effects.suppression_entry(event, provider=provider, received=received)
    entries = _old_system_events(event, provider=provider, kind=kind, received=received)
    entries += [""] * (2 - len(entries))
    return keys, [counter if ours else "", seq, email, entry, *entries]


def _old_apply(
    r: redis.Redis,
    events: Sequence[InboxEvent],
    *,
    provider: str,
    kind: str,
    received: float,
    batch_id: str,
    wait_for_sends: bool,
    sender_kind: str = "",
) -> tuple[int, int]:
    """``effects._apply`` before review A8."""
    settings = get_settings()
    script = r.register_script(OLD_APPLY)
    fixed = [
        store.EVENTS_STREAM,
        store.SUPPRESSIONS_HASH,
        store.CALLBACK_INBOX_HASH,
        store.CALLBACK_PENDING_ZSET,
        store.MESSAGE_STATS_HASH,
    ]
    proven = b"," + orjson.dumps({"t": round(received, 3), "d": PROVEN_DETAIL})[1:]
    sent_properties = orjson.dumps({"CT Source": ct_source(sender_kind or kind)})
    applied = deferred = 0
    starts = range(0, len(events), CHUNK) if events else range(1)
    for start in starts:
        chunk = events[start : start + CHUNK]
        last = start + CHUNK >= len(events)
        keys: list[str] = list(fixed)
        args: list[str | int | bytes] = [
            settings.events_maxlen,
            settings.callback_dedupe_ttl_seconds,
            batch_id if last and not deferred else "",
            proven,
            "1" if wait_for_sends else "",
            sent_properties,
        ]
        holders = _old_seq_holders(r, chunk, settings.account_id)
        for event, holds_seq in zip(chunk, holders, strict=True):
            event_keys, event_args = _old_event_args(
                event,
                provider=provider,
                kind=kind,
                received=received,
                account_id=settings.account_id,
                holds_seq=holds_seq,
            )
            keys += event_keys
            args += event_args
        new, waiting = script(keys=keys, args=args)
        applied += int(new)
        deferred += int(waiting)
    return applied, deferred


CAMPAIGNS = {"eqa": 40, "eqb": 700}  # eqb spans two pages of addresses
STATES = ("sent", "unknown", "claimed", "failed", None)
TYPES = list(EventType)
RECEIVED = 1_795_000_000.25


def _email(campaign_id: str, seq: int) -> str:
    return f"u{seq}.{campaign_id}@example.com"


def _prepare(r: redis.Redis, rng: random.Random) -> None:
    """Two campaigns whose messages are in every ledger state, an inbox batch."""
    save_providers(r)
    for campaign_id, size in CAMPAIGNS.items():
        draft_campaign(r, campaign_id, [_email(campaign_id, seq) for seq in range(size)])
        records = {}
        for seq in range(size):
            state = rng.choice(STATES)
            if state is not None:
                records[seq] = orjson.dumps({"s": state, "a": rng.randrange(1, 4), "t": 1.5})
        r.hset(store.ledger_key(campaign_id), mapping=records)
        r.hset(store.counters_key(campaign_id), mapping={"sent": 5, "unknown": 7})
    r.hset(store.CALLBACK_INBOX_HASH, "batch-1", "{}")
    r.zadd(store.CALLBACK_PENDING_ZSET, {"batch-1": 1.0})


def _events(rng: random.Random, count: int) -> list[InboxEvent]:
    """Events of every kind, right and wrong metas, redeliveries (a dedupe seen before)."""
    account_id = get_settings().account_id
    events = []
    for n in range(count):
        campaign_id = rng.choice([*CAMPAIGNS, *CAMPAIGNS, "nosuch", ""])
        size = CAMPAIGNS.get(campaign_id, 10)
        seq: int | None = rng.choice([rng.randrange(size)] * 6 + [size + 3, -1, MAX_SEQ, None])
        owner = _email(campaign_id, seq if seq is not None and seq >= 0 else 0)
        email = rng.choice([owner] * 4 + [owner.upper(), _email(campaign_id, 1)])
        meta_email = rng.choice([owner] * 5 + ["", "someone@else.example"])
        description = rng.choice(["", "mailbox unknown", 'say "no"\\', "boîte pleine"])
        events.append(
            InboxEvent(
                type=rng.choice(TYPES),
                provider_type=rng.choice(["bounce", "delivered", "x"]),
                email=email,
                meta=f"{meta_email}|{account_id}|{campaign_id}|{seq}" if campaign_id else "",
                campaign_id=campaign_id,
                account_id=rng.choice([account_id] * 8 + ["other"]),
                seq=seq,
                meta_email=meta_email,
                description=description,
                ts=rng.choice([None, 1_794_000_000.125, 1_794_000_001.0]),
                url=rng.choice(["", "https://example.com/a?b=1"]),
                dedupe=f"d{rng.randrange(int(count * 0.8))}" if n % 3 else f"e{n}",
                notes=(),
            )
        )
    return events


def _state(r: redis.Redis, raw: redis.Redis) -> dict[str, Any]:
    """Every dispatch key: its type and value (a stream's entries in order, without their
    ids) and whether it expires (``raw``: a client of bytes, for the bitmaps)."""
    state: dict[str, Any] = {}
    for key in sorted(r.scan_iter(match="dispatch:*", count=1000)):
        kind = r.type(key)
        value: Any
        if kind == "hash":
            value = r.hgetall(key)
        elif kind == "stream":
            value = [fields for _, fields in r.xrange(key)]
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        else:
            value = raw.get(key) if kind == "string" else None
        state[key] = (kind, value, r.pttl(key) > 0)
    return state


def _run(apply: Any, r: redis.Redis, raw: redis.Redis, events: list[InboxEvent], kind: str) -> Any:
    """Apply waiting for sends, then the same events again not waiting (their redelivery,
    and the deferred ones applied), then a tail alone; the answers and Redis after."""
    common = {"provider": "gen", "kind": kind, "received": RECEIVED}
    answers = [
        apply(events, batch_id="batch-1", wait_for_sends=True, **common),
        apply(events, batch_id="batch-1", wait_for_sends=False, sender_kind="http", **common),
        apply(events[-7:], batch_id="", wait_for_sends=False, **common),
    ]
    return answers, _state(r, raw)


SIZES = (640, 251, 250, 1, 640, 300, 17, 640)  # CHUNK is 250


@pytest.mark.parametrize("seed", range(len(SIZES)))
def test_the_apply_script_changes_redis_as_the_old_one_did(
    redis_server: RedisServer, redis_client: redis.Redis, seed: int
) -> None:
    rng = random.Random(seed)
    r = redis_client
    _prepare(r, rng)
    events = _events(rng, SIZES[seed])
    kind = rng.choice(["smtp", "sendgrid", "ses"])
    raw = redis.Redis.from_url(redis_server.url)  # DUMP's bytes
    snapshot = {k: raw.dump(k) for k in raw.scan_iter(match="dispatch:*", count=1000)}

    def old(chunk: list[InboxEvent], **kw: Any) -> tuple[int, int]:
        return _old_apply(r, chunk, **kw)

    def new(chunk: list[InboxEvent], **kw: Any) -> tuple[int, int]:
        applied, deferred, _ = effects._apply(chunk, client=r, **kw)  # (uncounted: P14)
        return applied, deferred

    before = _run(old, r, raw, events, kind)
    raw.delete(*raw.scan_iter(match="dispatch:*", count=1000))
    for key, dumped in snapshot.items():
        raw.restore(key, 0, dumped)
    after = _run(new, r, raw, events, kind)
    raw.close()
    assert after == before
    if len(events) < 250:
        return
    # The comparison covered every path: deferred sends, proven ones, counted events,
    # suppressions, mismatched metas, a batch removed from the inbox.
    answers, state = after
    assert answers[0][1] > 0 and answers[1][1] == 0
    entries = str(state[store.EVENTS_STREAM][1])
    assert "Notification Sent" in entries and "Meta Email Mismatch" in entries
    assert state[store.SUPPRESSIONS_HASH][1]
    assert any(k.endswith(":callbacks:delivered") for k in state)
    assert store.CALLBACK_INBOX_HASH not in state  # its one batch was removed
