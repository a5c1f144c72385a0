"""Review M2: nothing waits claimed, with a real worker killed (-9) while it waits.

DESIGN §5/§7: ``unknown`` only for a send whose outcome was really lost. A batch that
goes out as one chunk is claimed by its load; whatever of it is not on the wire must
not read as lost when its worker dies.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.helpers import http_provider, recipients, run_batches
from tests.http_sink import HttpSink, Reply
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


@pytest.fixture
def own_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A Redis of the test's own (a worker on it runs only this test's batches)."""
    server = RedisServer().start()
    monkeypatch.setenv("DISPATCH_REDIS_URL", server.url)
    get_settings.cache_clear()
    store.reset_clients()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, r
    finally:
        r.close()
        server.stop()
        monkeypatch.undo()
        get_settings.cache_clear()
        store.reset_clients()


N = 200  # recipients of a paced campaign (_paced_run)


def _batches_of_20(monkeypatch: pytest.MonkeyPatch, retry_max_seconds: float) -> None:
    """Batches of 20 (one chunk each) in this process and the worker's, and a
    housekeeping that sweeps on the test's time scale."""
    from dispatch import housekeeping
    from dispatch.settings import Settings

    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "20")
    get_settings.cache_clear()
    sweeping = Settings(lease_ttl_ms=1500, retry_max_seconds=retry_max_seconds)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)


def _paced_campaign(r: redis.Redis, redis_url: str, sink: HttpSink, n: int) -> str:
    """A campaign of ``n`` through a provider whose pace (20 a second) and one
    connection make its batches wait their turn; its id."""
    wait_for_queues(r)
    http_provider(r, sink.url, rate_per_second=20, max_connections=1, timeout=5)
    body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(n)}
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(redis_url)
    )
    return cid


@contextmanager
def _paced_run(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    r: redis.Redis,
    *,
    delay: float,
    retry_max_seconds: float = 0.5,
) -> Iterator[tuple[WorkerProcess, HttpSink, Callable[[str, int], None], str]]:
    """A worker of two processes sending a paced campaign of :data:`N` in batches of 20
    into a sink answering after ``delay``: the worker, the sink, an enqueuer, the id."""
    _batches_of_20(monkeypatch, retry_max_seconds)
    worker = WorkerProcess(redis_url, concurrency=2, DISPATCH_BATCH_SIZE="20").start()
    try:
        with HttpSink(Reply(200, delay=delay)) as sink:
            enqueue = batch_enqueuer(redis_url)
            yield worker, sink, enqueue, _paced_campaign(r, redis_url, sink, N)
    finally:
        worker.stop()


def _arrived(sink: HttpSink) -> Counter[str]:
    return Counter(m["to"] for req in sink.requests for m in req.json()["msgs"])


def _states(r: redis.Redis, cid: str, total: int) -> Counter[str]:
    ledger = r.hgetall(store.ledger_key(cid))
    out: Counter[str] = Counter()
    for seq in range(total):
        rec = parse_record(ledger.get(str(seq)))
        out[rec["state"] if rec else "queued"] += 1
    return out


@pytest.mark.integration
def test_the_rest_of_a_partial_grant_does_not_wait_claimed_while_the_granted_part_sends(
    own_stack: tuple[RedisServer, redis.Redis],
) -> None:
    """The day's quota leaves 10 of a 50-message one-chunk batch: the 10 go out (the
    ESP answers slowly) and the worker is killed meanwhile. Only those 10 may be
    ``unknown``: the 40 that waited for tomorrow's quota were never handed over."""
    server, r = own_stack
    worker = WorkerProcess(server.url, concurrency=1).start()
    try:
        with HttpSink(Reply(200, delay=30)) as sink:
            wait_for_queues(r)
            http_provider(r, sink.url, daily_quota=10, timeout=60)
            body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(50)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            wait_for(lambda: len(sink.requests) == 1, timeout=30)
            assert len(sink.requests[0].json()["msgs"]) == 10
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            # The dead worker's lease lapses (FAST_ENV's TTL); the batch runs again here.
            wait_for(lambda: not r.exists(store.batch_lease_key(cid, 0)), timeout=10)
            run_batches([(cid, 0)])
            states = _states(r, cid, 50)
            assert states["unknown"] == 10, states
            assert states["retry"] + states["queued"] == 40, states
            summary = campaign_reads.campaign_summary(cid, r)
            assert summary["status"] == "paused" and summary["queued"] == 40, summary
            assert len(sink.requests) == 1  # nothing more went out
    finally:
        worker.stop()


@pytest.mark.integration
def test_one_chunk_batches_waiting_for_pace_and_slots_through_kills_and_operators(
    own_stack: tuple[RedisServer, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 20 that go out as one chunk each (claimed by their load), a provider
    whose pace (20 a second) and one connection make them wait; the worker killed (-9)
    twice at seeded moments, the campaign paused and resumed: every address arrives at
    most once, what is ``sent`` arrived, what is neither ``sent`` nor ``unknown`` did not,
    and what is ``unknown`` was claimed by a killed run: on the wire, or about to be (a
    kill between a chunk's claim and the end of its request leaves it unknown, never
    resent, whether or not the provider got it: DESIGN §7's in-flight messages). So
    unknown messages that did not arrive are at most one chunk a kill."""
    import random
    import time

    from dispatch import housekeeping, lifecycle
    from tests.test_invariants import check_books

    server, r = own_stack
    rng = random.Random(int(__import__("os").environ.get("CHAOS_SEED", "5")))
    with _paced_run(monkeypatch, server.url, r, delay=0.2) as (worker, sink, enqueue, cid):

        def taken() -> int:
            return sum(len(req.json()["msgs"]) for req in sink.requests)

        for round_ in range(2):
            target = taken() + rng.randint(10, 50)
            wait_for(lambda t=target: taken() >= t, timeout=30)  # type: ignore[misc]
            time.sleep(rng.uniform(0.0, 0.6))
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            if round_ == 0:
                lifecycle.pause(cid, client=r)
            worker.start()
            if round_ == 0:
                time.sleep(rng.uniform(0.0, 1.0))
                lifecycle.resume(cid, client=r, enqueue=enqueue)

        def done() -> bool:
            housekeeping.sweep(r, enqueue)
            return campaign_reads.get_status(cid, r).value == "completed"

        wait_for(done, timeout=90, interval=0.5)
        arrived = _arrived(sink)
    summary = check_books(r, cid)
    assert max(arrived.values()) == 1, [a for a, c in arrived.items() if c > 1]
    ledger = r.hgetall(store.ledger_key(cid))
    lost_in_flight = 0
    for seq in range(N):
        rec = parse_record(ledger.get(str(seq)))
        assert rec is not None
        address = f"user{seq}@example.com"
        if rec["state"] == "sent":
            assert arrived[address] == 1, (seq, rec)
        elif rec["state"] == "unknown":
            lost_in_flight += 1 - arrived[address]
        else:
            assert arrived[address] == 0, (seq, rec)
    assert lost_in_flight <= 2 * 20, lost_in_flight  # two kills, a chunk of 20 each
    assert summary["sent"] + summary["unknown"] == N, summary


def test_a_batch_that_waits_for_the_pace_counts_no_retry_in_metrics(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two one-chunk batches of 20 through a provider paced at 20 a second: the second
    gives its load's claims back while it waits its turn. That is no retry: /metrics'
    ``dispatch_messages_total{outcome="retry"}`` counts scheduled retries only."""
    from tests.helpers import run_inline

    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "20")
    get_settings.cache_clear()
    try:
        with HttpSink() as sink:
            http_provider(redis_client, sink.url, rate_per_second=20)
            body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(40)}
            cid, _ = run_inline(redis_client, body)
        assert campaign_reads.campaign_summary(cid, redis_client)["sent"] == 40
        stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
        assert stats == {"esp|sent": "40"}, stats
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.integration
def test_a_cancel_while_one_chunk_batches_wait_for_pace_and_slots(
    own_stack: tuple[RedisServer, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while its batches wait their turn (claims given back, to be claimed
    again): nothing but a chunk already on the wire arrives after the cancel answered,
    every message ends sent or cancelled, none is left waiting, and the books balance."""
    from dispatch import housekeeping, lifecycle
    from tests.test_invariants import check_books

    server, r = own_stack
    with _paced_run(monkeypatch, server.url, r, delay=0.1) as (_, sink, enqueue, cid):
        wait_for(lambda: len(sink.requests) >= 3, timeout=30)
        lifecycle.cancel(cid, client=r, enqueue=enqueue)
        at_cancel = len(sink.requests)

        def settled() -> bool:
            housekeeping.sweep(r, enqueue)
            return int(r.hget(store.counters_key(cid), "queued") or 0) == 0

        wait_for(settled, timeout=30, interval=0.5)
        wait_for(lambda: not r.zrange(store.LEASES_ZSET, 0, -1), timeout=10)
        arrived = _arrived(sink)
        assert len(sink.requests) <= at_cancel + 1  # at most the one on the wire
    summary = check_books(r, cid)
    assert summary["status"] == "cancelled"
    assert summary["sent"] + summary["cancelled"] == N, summary
    assert summary["sent"] == sum(arrived.values()) and max(arrived.values()) == 1
    ledger = r.hgetall(store.ledger_key(cid))
    for seq in range(N):
        rec = parse_record(ledger.get(str(seq)))
        assert rec is not None
        assert (rec["state"] == "sent") == (arrived[f"user{seq}@example.com"] == 1)


@pytest.mark.integration
def test_one_chunk_batches_waiting_their_turn_through_a_redis_restart(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarts (its append-only file kept) while batches wait for the pace and
    the one connection: the campaign completes after the sweeps enqueue what the worker
    lost, every address arrives at most once, and only what arrived is sent or unknown."""
    from dispatch import housekeeping
    from tests.test_invariants import check_books

    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    run = _paced_run(monkeypatch, own_redis.url, r, delay=0.1, retry_max_seconds=600)
    try:
        with run as (worker, sink, enqueue, cid):
            housekeeping.sweep(r, enqueue)  # beat's sweeps saw this Redis
            wait_for(lambda: len(sink.requests) >= 3, timeout=30)
            own_redis.restart()
            r = redis.Redis.from_url(own_redis.url, decode_responses=True)
            wait_for_queues(r)

            def completed() -> bool:
                if worker.proc is not None and worker.proc.poll() is not None:
                    worker.start()  # Celery may end a worker on the lost connection
                housekeeping.sweep(r, enqueue)
                return campaign_reads.get_status(cid, r).value == "completed"

            wait_for(completed, timeout=60, interval=0.5)
            arrived = _arrived(sink)
        summary = check_books(r, cid)
        assert max(arrived.values()) == 1
        ledger = r.hgetall(store.ledger_key(cid))
        for seq in range(N):
            rec = parse_record(ledger.get(str(seq)))
            assert rec is not None and rec["state"] in ("sent", "unknown"), (seq, rec)
            assert arrived[f"user{seq}@example.com"] == 1, (seq, rec)
        assert summary["sent"] + summary["unknown"] == N
    finally:
        r.close()
