"""Beat's sweep on a busy, long-running service: what it asks of Redis does not grow with
the keys Redis holds besides (counted on the server, never timed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from dispatch import campaign_reads, campaigns, housekeeping, store
from dispatch.batch_items import begin_batch
from dispatch.ledger import BatchLease
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings, get_settings
from tests.helpers import assert_each_sent_once, create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

OTHER_KEYS = 20_000  # callback dedupe keys (a busy provider leaves millions)
PAUSED = 2_500  # paused campaigns nobody resumed yet

T = TypeVar("T")


def _commands(r: redis.Redis, call: Callable[[], object]) -> int:
    """How many commands Redis processed for ``call`` (the INFO that asks included)."""
    before = int(r.info("stats")["total_commands_processed"])
    call()
    return int(r.info("stats")["total_commands_processed"]) - before - 1


def _with_lease(url: str, act: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await act(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_whether_any_batch_runs_is_asked_without_walking_the_keyspace(
    own_redis: RedisServer,
) -> None:
    """The sweep asks whether a batch lease is held anywhere; it SCANned the whole
    keyspace for lease keys (0.75 s of Redis CPU a sweep with a million callback dedupe
    keys, shared with the sending)."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert housekeeping._nothing_runs_or_waits(r)
        alone = _commands(r, lambda: housekeeping._nothing_runs_or_waits(r))
        pipe = r.pipeline(transaction=False)
        for i in range(OTHER_KEYS):
            pipe.set(store.callback_seen_key("local", f"{i:040x}"), "1", ex=600)
        pipe.execute()
        assert housekeeping._nothing_runs_or_waits(r)
        assert _commands(r, lambda: housekeeping._nothing_runs_or_waits(r)) == alone
    finally:
        r.close()


def test_a_batch_counts_as_running_from_its_lease_taken_to_its_lease_released(
    own_redis: RedisServer,
) -> None:
    """Taken by a batch run (or BatchLease.acquire), renewed past its TTL, released: the
    sweep sees it held exactly meanwhile."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)

    async def run(client: aioredis.Redis) -> list[bool]:
        seen = []
        first = BatchLease(client, "a", 0, ttl_ms=300)
        assert (await begin_batch(client, first, "a")).acquired  # as a batch run takes it
        second = BatchLease(client, "b", 7, ttl_ms=300)
        assert await second.acquire()
        await asyncio.sleep(0.9)  # three TTLs: only the renewals keep them held
        seen.append(housekeeping._nothing_runs_or_waits(r))
        await first.release()
        seen.append(housekeeping._nothing_runs_or_waits(r))
        await second.release()
        seen.append(housekeeping._nothing_runs_or_waits(r))
        return seen

    try:
        assert _with_lease(own_redis.url, run) == [False, False, True]
        assert r.zcard(store.LEASES_ZSET) == 0
    finally:
        r.close()


def test_a_lease_whose_holder_died_does_not_count_for_ever(own_redis: RedisServer) -> None:
    """A worker killed -9 holding a lease never releases it: the lease key expires, and
    its entry in the registry of leases must stop counting too (else every quiet
    campaign would wait the long stall time for ever)."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)

    async def die_holding(client: aioredis.Redis) -> None:
        lease = BatchLease(client, "dead", 3, ttl_ms=400)
        assert await lease.acquire()
        # Killed: nothing renews it and nothing releases it.

    try:
        _with_lease(own_redis.url, die_holding)
        assert not housekeeping._nothing_runs_or_waits(r)  # within its TTL: it may run
        wait_for(lambda: not r.exists(store.batch_lease_key("dead", 3)), timeout=10)
        assert housekeeping._nothing_runs_or_waits(r)
        assert r.zcard(store.LEASES_ZSET) == 0
        # A lease key removed by hand (an operator's DEL) stops counting at once.
        _with_lease(own_redis.url, lambda c: BatchLease(c, "x", 0, ttl_ms=60_000).acquire())
        assert not housekeeping._nothing_runs_or_waits(r)
        r.delete(store.batch_lease_key("x", 0))
        assert housekeeping._nothing_runs_or_waits(r)
    finally:
        r.close()


class _RoundTrips:
    """Counts the round trips of a client: its commands, and its pipelines' executes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        command, execute = redis.Redis.execute_command, redis.client.Pipeline.execute

        def counted_command(client: redis.Redis, *args: Any, **options: Any) -> Any:
            self.count += 1
            return command(client, *args, **options)

        def counted_execute(pipe: redis.client.Pipeline, *args: Any, **options: Any) -> Any:
            self.count += 1
            return execute(pipe, *args, **options)

        monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
        monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)


def test_a_sweep_reads_its_campaigns_a_thousand_to_a_round_trip(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused campaigns stay watched until someone resumes or cancels them: after weeks
    they number thousands, and the sweep read each one in a round trip of its own."""
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(PAUSED):
            pipe.zadd(store.ACTIVE_ZSET, {f"paused-{i}": i})
            pipe.hset(store.campaign_key(f"paused-{i}"), mapping={"status": "paused"})
        pipe.execute()
        trips = _RoundTrips(monkeypatch)
        assert housekeeping.sweep(r, lambda c, b: None) == {
            "finished": [],
            "restarted": [],
            "resumed": [],
            "paused": [],
        }
        assert trips.count <= 20, trips.count
    finally:
        r.close()


def test_after_a_redis_restart_a_quiet_campaign_is_enqueued_again_once(
    own_redis: RedisServer,
) -> None:
    """A campaign running before Redis restarted is enqueued again after two lease TTLs
    of quiet although another batch runs, and only once: after that, its tasks may just
    wait behind the others, and the long stall time holds again."""
    quick = get_settings().lease_ttl_ms / 1000 * 2
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        smtp_provider(r, 2525)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
        cid, _ = create_held(r, body)
        started = float(r.hget(store.campaign_key(cid), "started_at") or 0)
        housekeeping.sweep(r, lambda c, b: None, now=started)  # beat saw this Redis
        own_redis.restart()
        r = redis.Redis.from_url(own_redis.url, decode_responses=True)
        _with_lease(own_redis.url, lambda c: BatchLease(c, "other", 0).acquire())

        def restarted(after: float) -> list[str]:
            again: list[tuple[str, int]] = []
            done = housekeeping.sweep(r, lambda c, b: again.append((c, b)), now=started + after)
            assert again == [(cid, 0)] * len(done["restarted"])
            return done["restarted"]

        assert restarted(1) == []  # its batch may still come (quiet for less than quick)
        assert restarted(quick + 1) == [cid]
        assert restarted(quick * 3) == []
        assert restarted(quick * 6) == []
    finally:
        r.close()


@pytest.mark.integration
def test_a_campaign_whose_tasks_redis_lost_goes_on_while_others_run(
    monkeypatch: pytest.MonkeyPatch, own_redis: RedisServer, smtp: SmtpTestServer
) -> None:
    """Redis restarts mid-campaign: the worker forgets the batch tasks it held. A busy
    service then has other batches running or queued, and the sweep waited its long
    stall time (twice DISPATCH_RETRY_MAX_SECONDS: 20 minutes by default) before it
    enqueued the campaign again. Now a campaign that ran before the restart goes on two
    lease TTLs after it went quiet, whatever else runs; every address gets one message."""
    lease_ttl_ms = int(FAST_ENV["DISPATCH_LEASE_TTL_MS"])
    sweeping = Settings(lease_ttl_ms=lease_ttl_ms, retry_max_seconds=600)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)
    worker = WorkerProcess(own_redis.url, concurrency=2).start()
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        wait_for_queues(r)
        enqueue = batch_enqueuer(own_redis.url)
        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=300)
        # Another service's campaign through a slow provider: one batch that sends for
        # minutes (its lease held), started after the restart.
        smtp_provider(r, smtp.port, "slow", max_connections=1, rate_per_second=2)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3000)}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        housekeeping.sweep(r, enqueue)  # beat's sweeps saw this Redis
        wait_for(lambda: len(smtp.messages) >= 300, timeout=60)
        own_redis.restart()  # a clean stop (the AOF is complete) and a start on its data
        r = redis.Redis.from_url(own_redis.url, decode_responses=True)
        wait_for_queues(r)
        other = {"provider": "slow", "subject": "s", "html": "h",
                 "recipients": recipients(1000, "other.example")}  # fmt: skip
        campaigns.create_campaign(CampaignRequest.model_validate(other), client=r, enqueue=enqueue)

        def completed() -> bool:
            if worker.proc is not None and worker.proc.poll() is not None:
                worker.start()  # Celery may end a worker on the lost connection
            housekeeping.sweep(r, enqueue)  # as beat does every 30 s
            return campaign_reads.get_status(cid, r).value == "completed"

        wait_for(completed, timeout=90, interval=1.0)
        received = [m.rcpt_tos[0] for m in smtp.messages if "other.example" not in m.rcpt_tos[0]]
        assert assert_each_sent_once(r, cid, received) <= 8  # a chunk of 4 a process
    finally:
        worker.stop()
        r.close()
