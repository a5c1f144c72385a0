"""The books balance: a campaign's counters, its ledger and /metrics tell one story.

``total`` is the sum of ``queued`` and the terminal states, each message is in exactly one
state matching them, the per-provider message totals match, and what callbacks count
(``delivered``, bounces, ...) never passes what was sent.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections import Counter

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, lifecycle, store
from dispatch.effects import InboxEvent, apply_events
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings, get_settings
from providers.callbacks import EventType
from tests.chaos_smtp import ChaosSmtpServer
from tests.helpers import http_provider, recipients, run_inline, smtp_provider
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

TERMINAL = ("sent", "failed", "suppressed", "cancelled", "expired", "unknown")
FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=10.0)


def check_books(r: redis.Redis, campaign_id: str) -> dict[str, int]:
    """Counters against the ledger, message by message; the campaign's summary."""
    summary = campaign_reads.campaign_summary(campaign_id, r)
    ledger = r.hgetall(store.ledger_key(campaign_id))
    states: Counter[str] = Counter()
    for seq in range(summary["total"]):
        rec = parse_record(ledger.get(str(seq)))
        # A message waiting to be sent again (a claim given back unsent, a retry) counts
        # as queued; a claim left behind does not.
        states["queued" if rec is None or rec["state"] == "retry" else rec["state"]] += 1
    assert set(ledger) <= {str(seq) for seq in range(summary["total"])}
    assert summary["total"] == sum(summary[s] for s in ("queued", *TERMINAL)), summary
    assert {s: summary[s] for s in ("queued", *TERMINAL)} == {
        s: states[s] for s in ("queued", *TERMINAL)
    }, (summary, states)
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


@pytest.mark.integration
def test_books_balance_through_chaos_operators_and_a_killed_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two campaigns through a real worker, a misbehaving SMTP server and an HTTP ESP that
    answers late now and then; paused, resumed, one cancelled half-way, failures retried,
    the worker killed (-9) and another started, callbacks (some repeated, some about
    messages whose outcome was lost) applied: then every counter matches the ledger, each
    address arrived at most once, and /metrics' totals and callback counters agree."""
    lease_ttl_ms = int(FAST_ENV["DISPATCH_LEASE_TTL_MS"])
    sweeping = Settings(lease_ttl_ms=lease_ttl_ms, retry_max_seconds=0.5)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)
    seed = int(os.environ.get("CHAOS_SEED", "11"))
    rng = random.Random(seed)
    server = RedisServer().start()
    # lifecycle's own clients (the settle of a cancel) must reach this Redis too.
    monkeypatch.setenv("DISPATCH_REDIS_URL", server.url)
    get_settings.cache_clear()
    store.reset_clients()
    smtp = ChaosSmtpServer(seed=seed, rate=0.06, stall=1.0).start()
    late = Reply(200, delay=0.5)
    worker = WorkerProcess(server.url, concurrency=2).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    ids: list[str] = []
    enqueue = batch_enqueuer(server.url)
    cancel: list[dict[str, object] | Exception] = []  # its summary, or what it raised
    numbers = itertools.count(1)

    def cancel_half_way(request: RecordedRequest) -> None:
        """The HTTP campaign is cancelled while its 15th request (of 30) waits for its
        answer, which the script then gives: it cannot have ended first. (Cancelled by
        the test after the kill, it had once completed before, on a busy machine that
        slowed the SMTP side the kill waits for: "it cannot be cancelled".)"""
        if next(numbers) == 15:
            try:
                cancel.append(lifecycle.cancel(ids[1], client=r, enqueue=enqueue))
            except Exception as exc:  # (in the sink's thread: told to the test)
                cancel.append(exc)

    try:
        with HttpSink(answer=cancel_half_way) as sink:
            sink.script(*[late if rng.random() < 0.2 else Reply() for _ in range(200)])
            wait_for_queues(r)
            smtp_provider(  # stalls outlast both waits (see test_chaos)
                r, smtp.port, max_connections=2, rate_per_second=200, timeout=0.4,
                data_timeout=0.4,
            )  # fmt: skip
            http_provider(r, sink.url, batch_size=10, timeout=0.3, rate_per_second=200)
            for provider, n, domain in (("local", 300, "s.example"), ("esp", 300, "h.example")):
                body = {"provider": provider, "subject": "s", "html": "h",
                        "recipients": recipients(n, domain)}  # fmt: skip
                cid, _ = campaigns.create_campaign(
                    CampaignRequest.model_validate(body), client=r, enqueue=enqueue
                )
                ids.append(cid)
            retried = 0
            wait_for(lambda: len(smtp.chaos.accepted) >= 60, timeout=60)
            lifecycle.pause(ids[0], client=r)
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            worker.start()
            lifecycle.resume(ids[0], client=r, enqueue=enqueue)

            def http_cancelled() -> bool:
                housekeeping.sweep(r, enqueue)  # as beat does: the killed worker's batches
                return bool(cancel)

            wait_for(http_cancelled, timeout=60, interval=0.5)
            assert not isinstance(cancel[0], Exception), cancel

            def ended() -> bool:
                housekeeping.sweep(r, enqueue)
                return all(
                    campaign_reads.get_status(cid, r).value in ("completed", "cancelled")
                    for cid in ids
                )

            wait_for(ended, timeout=60, interval=0.5)
            report, _ = lifecycle.retry_failed(ids[0], client=r, enqueue=enqueue)
            retried += report.retried
            wait_for(ended, timeout=60, interval=0.5)
            http_metas = [m["mid"] for req in sink.requests for m in req.json()["msgs"]]
        taken = Counter(smtp.chaos.accepted) + Counter(smtp.chaos.ambiguous)
        http_taken = Counter(meta.split("|")[0] for meta in http_metas)
        # Each address at most once; callbacks about what the providers took, repeated
        # and shuffled, the late HTTP answers' messages among them.
        assert max(taken.values()) == 1 and max(http_taken.values()) == 1
        smtp_metas = [
            f"{a}|1|{ids[0]}|{r.hget(store.campaign_key(ids[0]), 'send_date')}|0|default|"
            f"{a.split('@')[0].removeprefix('user')}|"
            for a in taken
        ]
        events = [
            _event(rng.choice(list(EventType)), meta, rng.randint(0, 1))
            for meta in smtp_metas + http_metas
            for _ in range(2)
        ]
        rng.shuffle(events)
        apply_events(events[: len(events) // 2], provider="local", kind="smtp", client=r)
        apply_events(events[len(events) // 2 :], provider="local", kind="smtp", client=r)

        totals: Counter[str] = Counter()
        for cid, got in ((ids[0], taken), (ids[1], http_taken)):
            summary = check_books(r, cid)
            assert summary["queued"] == 0
            for seq in range(summary["total"]):
                rec = parse_record(r.hget(store.ledger_key(cid), str(seq)))
                address = f"user{seq}@{'s' if cid == ids[0] else 'h'}.example"
                assert rec is not None
                if rec["state"] == "sent":
                    assert got[address] == 1, (cid, seq, rec)
                elif rec["state"] != "unknown":
                    assert got[address] == 0, (cid, seq, rec)
            for name in ("delivered", "soft_bounced", "hard_bounced", "spam", "clicked"):
                assert summary[name] <= summary["sent"], (name, summary)
            totals.update({s: summary[s] for s in TERMINAL})
        stats = {k: int(v) for k, v in r.hgetall(store.MESSAGE_STATS_HASH).items()}
        by_outcome: Counter[str] = Counter()
        for key, value in stats.items():
            by_outcome[key.rpartition("|")[2]] += value
        for state in ("sent", "cancelled", "suppressed", "expired"):
            assert by_outcome[state] == totals[state], (state, stats, totals)
        assert by_outcome["failed"] == totals["failed"] + retried
        assert by_outcome["unknown"] >= totals["unknown"]
        assert summary["cancelled"] > 0 and totals["sent"] > 300
    finally:
        worker.stop()
        r.close()
        server.stop()
        smtp.stop()
        monkeypatch.undo()
        get_settings.cache_clear()
        store.reset_clients()
