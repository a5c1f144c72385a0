"""Notification Sent events made in Redis from a chunk's template (LedgerWriter.settle_sent_many)
are byte for byte what orjson writes in Python, and addresses or metas that JSON escapes
keep the Python path."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from dispatch import store
from dispatch.ledger import (
    LedgerWriter,
    claim_record,
    event_fields,
    event_template,
    needs_escaping,
    record,
)
from dispatch.models import MessageState

CID = "p25-template"

# Addresses as recipients give them: ASCII, UTF-8 (SMTPUTF8), and the characters orjson
# writes raw though some encoders escape them (DEL, U+2028, astral).
PLAIN = [
    "a@example.com",
    "üñí@exämple.com",
    "del\x7f@example.com",
    "line\u2028sep@example.com",
    "emoji😀@example.com",
    "sla/sh@example.com",
]
ESCAPED = ['"quoted"@example.com', "back\\slash@example.com", "tab\t@example.com", "\x01@x.y"]


def _event(email: str, meta: str) -> dict[str, object]:
    return event_fields(
        "Notification Sent",
        email=email,
        campaign_id=CID,
        meta=meta,
        provider="sink",
        properties={"CT Source": "Generic email"},
        ts=1795481574.125,
    )


def test_escaping_is_told_as_orjson_escapes() -> None:
    for text in PLAIN:
        assert not needs_escaping(text)
        assert orjson.dumps(text).decode() == f'"{text}"'
    for text in ESCAPED:
        assert needs_escaping(text)
        assert orjson.dumps(text).decode() != f'"{text}"'


def test_template_events_are_orjsons_text(redis_client: redis.Redis) -> None:
    metas = [f"{e}|1|{CID}|20260101|0|d|{i}|" for i, e in enumerate(PLAIN)]
    template = event_template(_event("", ""))
    assert template is not None
    sent = record(MessageState.SENT, attempts=1)
    redis_client.hset(store.counters_key(CID), mapping={"queued": len(PLAIN)})

    async def go() -> None:
        r = store.async_client()
        try:
            w = LedgerWriter(r, CID, provider="sink")
            claims = [(i, claim_record(1)) for i in range(len(PLAIN))]
            assert all(await w.claim_many(claims))
            writes = [(i, sent, e, m) for i, (e, m) in enumerate(zip(PLAIN, metas, strict=True))]
            await w.settle_sent_many(writes, template)
        finally:
            await r.aclose()

    asyncio.run(go())
    entries = redis_client.xrange(store.EVENTS_STREAM)
    got = [fields["json"] for _, fields in entries[-len(PLAIN) :]]
    want = [orjson.dumps(_event(e, m)).decode() for e, m in zip(PLAIN, metas, strict=True)]
    assert got == want
    assert redis_client.hget(store.counters_key(CID), "sent") == str(len(PLAIN))
    assert redis_client.hget(store.ledger_key(CID), "5") == sent.decode()


@pytest.mark.parametrize("campaign_id", ["c\ue000", "c\ue001"])
def test_no_template_when_a_field_holds_a_stand_in(campaign_id: str) -> None:
    event = _event("", "")
    event["campaign_id"] = campaign_id
    assert event_template(event) is None
