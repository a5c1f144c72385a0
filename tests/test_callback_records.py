"""The callback gateway's fast paths give what the models gave.

The gateway stores each accepted event as a plain record (no pydantic model: building one
cost about 10 µs an event), hashes events with orjson (the bytes ``json.dumps`` gave: a
redelivery across an upgrade must still be recognised), and checks a meta string in one
pass (a bad one is named by the full check). Each is held here against the slow form.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime

import pytest
import redis

from dispatch import callbacks, store
from dispatch.effects import InboxBatch, InboxEvent, inbox_record
from providers.callbacks.events import CallbackEvent, EventType
from providers.callbacks.generic import parse_generic
from providers.callbacks.sendgrid import parse_sendgrid
from providers.meta import META_FIELDS, _meta, build_meta, parse_meta
from tests.test_callback_gateway import sample


def _expected(event: CallbackEvent) -> InboxEvent:
    """The stored event, field by field as the gateway's model had it (validated)."""
    fields = event.meta_fields
    return InboxEvent(
        type=event.type,
        provider_type=event.provider_type,
        email=event.email,
        meta=event.meta,
        campaign_id=fields.campaign_id if fields else event.campaign_id,
        account_id=fields.account_id if fields else "",
        seq=fields.seq if fields else None,
        meta_email=fields.email if fields else "",
        description=event.description,
        ts=event.timestamp.timestamp() if event.timestamp else None,
        url=event.url,
        dedupe=event.dedupe_key(),
        notes=event.notes,
    )


def _generic_events() -> list[CallbackEvent]:
    meta = build_meta(email="ann@example.com", account_id="7", campaign_id="c1",
                      send_date="20261124", seq=3)  # fmt: skip
    big = "ann@example.com|7|c1|20261124|0|news|" + "9" * 30 + "|"
    body = {
        "version": "v2",
        "events": {
            "success": [
                {"type": "delivered", "email": "ann@example.com", "meta": meta,
                 "timestamp": 1795481574.25},
                {"type": "clicked", "email": "Ann@EXAMPLE.com", "meta": meta,
                 "url": "https://example.com/ü?a=1&b=\"2\""},
            ],
            "failed": [
                {"type": "hard_bounce", "email": "bob@example.com", "meta": meta,
                 "description": "550 5.1.1 «unknown»\tuser"},  # meta names another
                {"type": "soft_bounce", "email": "ann@example.com", "meta": big},
            ],
        },
    }  # fmt: skip
    legacy = {"event": "hardbounce", "data": [{"e": "cy@example.com", "ts": 1795481574}]}
    result = parse_generic(json.dumps(body)).events + parse_generic(json.dumps(legacy)).events
    assert len(result) == 5 and any(e.notes for e in result)
    return result


def test_a_stored_batch_reads_back_as_the_events_it_was_given(
    redis_client: redis.Redis,
) -> None:
    sendgrid = parse_sendgrid(json.dumps(sample("sendgrid-events.json")), tolerance=None).events
    events = _generic_events() + sendgrid
    assert {e.source for e in events} == {"generic", "sendgrid"}

    batch_id = callbacks.store_batch("gen", "smtp", [inbox_record(e) for e in events], redis_client)

    stored = InboxBatch.model_validate_json(
        redis_client.hget(store.CALLBACK_INBOX_HASH, batch_id)  # type: ignore[arg-type]
    )
    assert (stored.id, stored.provider, stored.kind) == (batch_id, "gen", "smtp")
    assert list(stored.events) == [_expected(e) for e in events]
    assert stored.events[3].seq == 10**30 - 1  # past 64 bits: stored all the same
    assert redis_client.zscore(store.CALLBACK_PENDING_ZSET, batch_id) == stored.received


def _old_content_hash(event: CallbackEvent) -> str:
    """CallbackEvent.content_hash as it was written with json.dumps."""
    parts = [
        event.source,
        event.type.value,
        event.provider_type,
        event.email.casefold(),
        event.meta,
        event.timestamp.isoformat() if event.timestamp else "",
        event.description,
        event.url,
        event.provider_message_id,
    ]
    encoded = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def test_content_hashes_are_the_ones_redeliveries_stored_before() -> None:
    rnd = random.Random(20261124)
    alphabet = [chr(i) for i in range(0x250)] + list("\u2028\u2029\ufeff\uffff😀€ßİ")
    checked = 0
    for _ in range(3000):
        text = ["".join(rnd.choices(alphabet, k=rnd.randint(0, 12))) for _ in range(5)]
        event = CallbackEvent(
            source="generic",
            type=rnd.choice([t for t in EventType if t is not EventType.OTHER]),
            provider_type=text[0],
            email=text[1] + "@example.com",
            meta=text[2],
            description=text[3],
            url=text[4],
            provider_message_id=text[0][::-1],
            timestamp=datetime.fromtimestamp(rnd.uniform(0, 2e9), tz=UTC)
            if rnd.random() < 0.5
            else None,
            raw={},
        )
        assert event.content_hash() == _old_content_hash(event), text
        checked += 1
    assert checked == 3000


def test_a_lone_surrogate_still_hashes() -> None:
    event = CallbackEvent(source="generic", type=EventType.DELIVERED, provider_type="x",
                          email="a@example.com", description="\ud800", raw={})  # fmt: skip
    assert event.content_hash() == _old_content_hash(event)


def _outcome(meta: str) -> object:
    try:
        return parse_meta(meta)
    except ValueError as exc:
        return str(exc)


def _full_check(meta: str) -> object:
    """What parse_meta gave before its one-pass check (every field checked in turn)."""
    if not meta.endswith("|"):
        return _outcome(meta)  # refused before the fields are looked at, as before
    parts = meta[:-1].split("|")
    if len(parts) != len(META_FIELDS):
        return _outcome(meta)
    try:
        return _meta(dict(zip(META_FIELDS, parts, strict=True)))
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("seed", range(4))
def test_the_one_pass_meta_check_agrees_with_the_full_one(seed: int) -> None:
    rnd = random.Random(seed)
    pieces = ["a", "b@", "@", "x@y.z", " ", "\u00a0", "\n", "\x7f", "\u2028", "\u0085", "-",
              "0", "7", "12", "20261124", "20260230", "2026112", "é", "", "\t", "1e3"]  # fmt: skip
    good = ["ann@example.com", "1", "c1", "20261124", "0", "news", "42"]
    kinds: dict[str, int] = {"parsed": 0, "refused": 0}
    for _ in range(4000):
        fields = list(good)
        for _ in range(rnd.randint(0, 3)):  # spoil a few fields, or none
            at = rnd.randrange(len(fields))
            fields[at] = "".join(rnd.choices(pieces, k=rnd.randint(0, 3)))
        meta = "|".join(fields) + "|"
        outcome = _outcome(meta)
        assert outcome == _full_check(meta), meta
        kinds["parsed" if not isinstance(outcome, str) else "refused"] += 1
    assert min(kinds.values()) > 500  # both ways were exercised
