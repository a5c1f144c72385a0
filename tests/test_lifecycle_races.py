"""The lifecycle when operations land in an awkward order (DESIGN §5, §7): every recipient
still ends in one terminal state, counters add up, and nothing stays ``running`` for ever.

Each test forces one order that a live system hits now and then (a cancel between
retry-failed's read and its writes, a pause while a posted list is still being stored, a
worker dead after a batch expired its campaign): deterministic, no timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, lifecycle, recipient_append, store
from dispatch.ledger import LedgerWriter, parse_record, record
from dispatch.models import CampaignRequest, MessageState
from dispatch.settings import Settings, get_settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

TERMINAL = ("sent", "failed", "suppressed", "cancelled", "expired", "unknown")


def ledger_states(r: redis.Redis, campaign_id: str) -> Counter[str]:
    total = campaign_reads.campaign_summary(campaign_id, r)["total"]
    records = r.hgetall(store.ledger_key(campaign_id))
    return Counter(
        str((parse_record(records.get(str(seq))) or {"state": "queued"})["state"])
        for seq in range(total)
    )


def assert_settled(r: redis.Redis, campaign_id: str) -> dict[str, Any]:
    """Every message terminal, and the counters say what the ledger says."""
    summary = campaign_reads.campaign_summary(campaign_id, r)
    states = ledger_states(r, campaign_id)
    assert set(states) <= set(TERMINAL), states
    assert summary["queued"] == 0
    assert {s: summary[s] for s in TERMINAL} == {s: states[s] for s in TERMINAL}
    assert summary["total"] == sum(summary[s] for s in TERMINAL)
    return summary


def put(campaign_id: str, states: dict[int, MessageState]) -> None:
    async def go() -> None:
        client = store.async_client()
        writer = LedgerWriter(client, campaign_id)
        await writer.put_many(
            [(seq, record(state, attempts=1), "") for seq, state in states.items()]
        )
        await client.aclose()

    asyncio.run(go())


def test_a_cancel_that_lands_while_retry_failed_queues_messages_again_settles_them(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retry-failed read the campaign running, the cancel settled every unsent message,
    then retry-failed wrote its messages ``retry``: they stayed so in a cancelled campaign
    (counted queued for ever, never sent, never settled)."""
    smtp_provider(redis_client, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(20)}
    cid, _ = create_held(redis_client, body)
    put(cid, {seq: MessageState.FAILED for seq in range(5)})
    put(cid, {seq: MessageState.SENT for seq in range(5, 10)})
    requeue = lifecycle._requeue_failed

    async def cancel_first(*args: Any) -> None:
        # The cancel comes between retry-failed's status check and its writes.
        await asyncio.to_thread(
            lifecycle.cancel, cid, client=redis_client, enqueue=lambda c, b: None
        )
        await requeue(*args)

    monkeypatch.setattr(lifecycle, "_requeue_failed", cancel_first)
    enqueued: list[tuple[str, int]] = []
    report, summary = lifecycle.retry_failed(
        cid, client=redis_client, enqueue=lambda c, b: enqueued.append((c, b))
    )
    assert report.retried == 5 and enqueued == []
    assert summary["status"] == "cancelled"
    settled = assert_settled(redis_client, cid)
    assert (settled["sent"], settled["cancelled"], settled["failed"]) == (5, 15, 0)


class _WhileFilling:
    """Runs ``before[n]`` before the n-th chunk of a list is stored (RecipientAppender.add)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: dict[int, Any]) -> None:
        self.before = before
        self.calls = 0
        add = recipient_append.RecipientAppender.add

        def wrapped(appender: recipient_append.RecipientAppender, *args: Any, **kw: Any) -> Any:
            self.calls += 1
            if self.calls in self.before:
                self.before[self.calls]()
            return add(appender, *args, **kw)

        monkeypatch.setattr(recipient_append.RecipientAppender, "add", wrapped)


def test_a_campaign_paused_and_resumed_while_its_list_is_stored_sends_everyone_once(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign posted with a long list starts sending while the list is stored. A
    pause then made the storing fail (409 "can only be appended to a draft"): the rest
    of the list was lost and the campaign, marked as still being filled, never completed
    (housekeeping restarted it for ever). A resume meanwhile took it for one paused
    before it started."""
    smtp_provider(redis_client, smtp.port)
    size = get_settings().batch_size
    cid = "fill-paused"
    resumed: list[tuple[str, int]] = []

    def resume() -> None:
        started_at = redis_client.hget(store.campaign_key(cid), "started_at")
        lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: resumed.append((c, b)))
        # Resumed where it was, not started anew as if paused while scheduled (the filler
        # would find it ``scheduled`` meanwhile, and stop).
        assert redis_client.hget(store.campaign_key(cid), "started_at") == started_at

    pause = lambda: lifecycle.pause(cid, client=redis_client)  # noqa: E731
    hook = _WhileFilling(monkeypatch, {2: pause, 3: resume})
    batches: list[tuple[str, int]] = []
    n = 2 * size + size // 2
    body = {
        "id": cid,
        "provider": "local",
        "subject": "s",
        "html": "h",
        "recipients": recipients(n),
    }
    created, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body),
        client=redis_client,
        enqueue=lambda c, b: batches.append((c, b)),
    )
    assert created == cid and hook.calls == 3
    assert resumed == [(cid, 0), (cid, 1)]  # what was stored when it resumed
    assert campaign_reads.campaign_summary(cid, redis_client)["total"] == n
    run_batches(sorted(set(batches + resumed)), Settings(retry_base_seconds=0.05))
    summary = assert_settled(redis_client, cid)
    assert (summary["status"], summary["sent"]) == ("completed", n)
    received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(received) == n and max(received.values()) == 1


def test_a_campaign_cancelled_while_its_list_is_stored_is_created_cancelled(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creation answers with the campaign as it stands (cancelled), not a 409 about
    drafts, and stores no more of a list that will never be sent."""
    smtp_provider(redis_client, 2525)
    size = get_settings().batch_size
    cid = "fill-cancelled"
    cancel = lambda: lifecycle.cancel(cid, client=redis_client, enqueue=lambda c, b: None)  # noqa: E731
    _WhileFilling(monkeypatch, {2: cancel})
    body = {"id": cid, "provider": "local", "subject": "s", "html": "h",
            "recipients": recipients(3 * size)}  # fmt: skip
    assert campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=redis_client, enqueue=lambda c, b: None
    ) == (cid, True)
    summary = assert_settled(redis_client, cid)
    assert (summary["status"], summary["cancelled"]) == ("cancelled", size)
    assert not redis_client.hexists(store.campaign_key(cid), "appending")


def test_housekeeping_settles_a_campaign_a_batch_expired_whose_other_batches_died(
    redis_client: redis.Redis,
) -> None:
    """A batch that finds ``expires_at`` passed expires the campaign; its other batches
    settle their own messages when they run. Their tasks lost with a killed worker (one
    in the middle of a send), beat's expiry found the campaign expired already and did
    nothing: its messages stayed queued and claimed for ever."""
    smtp_provider(redis_client, 2525)
    size = get_settings().batch_size
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2 * size)}
    cid, _ = create_held(redis_client, body)
    put(cid, {0: MessageState.SENT, 1: MessageState.CLAIMED, size: MessageState.RETRY})

    async def a_batch_expires_it() -> None:
        client = store.async_client()
        await lifecycle.expire_now(client, cid)
        await client.aclose()

    asyncio.run(a_batch_expires_it())
    assert lifecycle.expire_due(now=2e9, client=redis_client) == []  # nothing for beat
    later = float(redis_client.hget(store.campaign_key(cid), "status_at") or 0) + 3600
    enqueued: list[tuple[str, int]] = []
    housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)), now=later)
    assert enqueued == [(cid, 0)]  # the batch holding the dead worker's claim
    assert redis_client.zscore(store.ACTIVE_ZSET, cid) is not None  # still watched
    run_batches(enqueued)
    summary = assert_settled(redis_client, cid)
    assert summary["status"] == "expired"
    assert (summary["sent"], summary["unknown"], summary["expired"]) == (1, 1, 2 * size - 2)
    housekeeping.sweep(redis_client, lambda c, b: None, now=later)
    assert redis_client.zscore(store.ACTIVE_ZSET, cid) is None  # done with it
