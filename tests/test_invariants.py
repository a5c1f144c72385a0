"""The books balance: a campaign's counters, its ledger and /metrics tell one story.

``total`` is the sum of ``queued`` and the terminal states, each message is in exactly one
state matching them, the per-provider message totals match, and what callbacks count
(``delivered``, bounces, ...) never passes what was sent.
"""

from __future__ import annotations

from collections import Counter

import redis

from dispatch import campaigns, store
from dispatch.effects import InboxEvent, apply_events
from dispatch.ledger import parse_record
from dispatch.settings import Settings, get_settings
from providers.callbacks import EventType
from tests.helpers import http_provider, recipients, run_inline
from tests.http_sink import HttpSink, Reply

TERMINAL = ("sent", "failed", "suppressed", "cancelled", "expired", "unknown")
FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=10.0)


def check_books(r: redis.Redis, campaign_id: str) -> dict[str, int]:
    """Counters against the ledger, message by message; the campaign's summary."""
    summary = campaigns.campaign_summary(campaign_id, r)
    ledger = r.hgetall(store.ledger_key(campaign_id))
    states: Counter[str] = Counter()
    for seq in range(summary["total"]):
        rec = parse_record(ledger.get(str(seq)))
        states[rec["state"] if rec else "queued"] += 1
    assert set(ledger) <= {str(seq) for seq in range(summary["total"])}
    assert summary["total"] == sum(summary[s] for s in ("queued", *TERMINAL)), summary
    assert {s: summary[s] for s in ("queued", *TERMINAL)} == {
        s: states[s] for s in ("queued", *TERMINAL)
    }
    return summary


def _event(kind: EventType, meta: str, n: int) -> InboxEvent:
    fields = meta.split("|")
    return InboxEvent(
        type=kind,
        provider_type=kind.value,
        email=fields[0],
        meta=meta,
        campaign_id=fields[2],
        account_id=fields[1],
        seq=int(fields[6]),
        meta_email=fields[0],
        dedupe=f"{kind.value}-{meta}-{n}",
    )


def test_a_callback_about_a_message_whose_outcome_was_lost_makes_it_sent(
    redis_client: redis.Redis,
) -> None:
    # The ESP takes the batch but answers after the client's timeout: the messages end
    # ``unknown`` (they may have gone out: never resent). Then its delivery events come.
    with HttpSink(Reply(200, delay=0.6)) as sink:
        http_provider(redis_client, sink.url, timeout=0.2)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(4)}
        cid, _ = run_inline(redis_client, body, FAST)
        metas = [m["mid"] for req in sink.requests for m in req.json()["msgs"]]
    before = check_books(redis_client, cid)
    assert (before["unknown"], before["sent"]) == (4, 0)
    assert len(metas) == 4 and get_settings().account_id == "1"

    events = [_event(EventType.DELIVERED, meta, 0) for meta in metas[:3]]
    events += [_event(EventType.DELIVERED, metas[0], 1)]  # another event id, same message
    events += [_event(EventType.CLICKED, metas[0], 0), _event(EventType.SOFT_BOUNCE, metas[1], 0)]
    apply_events(events, provider="esp", kind="http", client=redis_client)

    after = check_books(redis_client, cid)
    assert (after["sent"], after["unknown"]) == (3, 1)
    assert (after["delivered"], after["clicked"], after["soft_bounced"]) == (3, 1, 1)
    for name in ("delivered", "clicked", "soft_bounced", "hard_bounced", "spam"):
        assert after[name] <= after["sent"]
    rec = parse_record(redis_client.hget(store.ledger_key(cid), "0"))
    assert rec is not None and rec["state"] == "sent" and rec["attempts"] == 1
    assert "callback" in rec["detail"]
    # /metrics' per-provider totals still match the campaign's.
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert int(stats["esp|sent"]) == after["sent"]


def test_a_callback_does_not_revive_a_failed_message(redis_client: redis.Redis) -> None:
    with HttpSink(Reply(400, b"bad sender")) as sink:
        http_provider(redis_client, sink.url)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(2)}
        cid, _ = run_inline(redis_client, body, FAST)
        metas = [m["mid"] for req in sink.requests for m in req.json()["msgs"]]
    apply_events(
        [_event(EventType.HARD_BOUNCE, metas[0], 0)], provider="esp", kind="http",
        client=redis_client,
    )  # fmt: skip
    after = check_books(redis_client, cid)
    assert (after["failed"], after["sent"], after["unknown"]) == (2, 0, 0)
