"""Review R3: a provider's daily recipient quota, cc and bcc copies sent in a
transaction of their own, and tracked quota grants, through real incidents: Redis
restarted, a pause and a resume while grants are out, one of two worker processes
killed (-9). Seeded (``CHAOS_SEED=N`` runs another).

What the SMTP server took is the truth: each day it received no more recipients (To,
Cc and Bcc together) than the quota, each To recipient at most once, each copy once and
only of a message its To recipient received; the ledger says ``sent`` of exactly what
arrived, and its counters match it.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, lifecycle, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import Received, SmtpTestServer
from tests.test_invariants import check_books
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

pytestmark = pytest.mark.integration

N, PER, DAY = 60, 3, 20  # recipients; To, Cc and Bcc a message; messages a day
COPIES = {"cc": ["boss@example.com"], "bcc": ["archive@example.com"]}


class _Stack:
    """A Redis with its append-only file, two worker processes, the test's SMTP server."""

    def __init__(self, server: RedisServer, smtp: SmtpTestServer) -> None:
        self.server, self.smtp = server, smtp
        self.r = redis.Redis.from_url(server.url, decode_responses=True)
        self.workers = [
            WorkerProcess(server.url, concurrency=2, DISPATCH_BATCH_SIZE="20").start()
            for _ in range(2)
        ]
        self.enqueue = batch_enqueuer(server.url)
        wait_for_queues(self.r)

    def own(self) -> list[Received]:
        """The To recipients' messages (the copies go to the Cc and Bcc)."""
        return [m for m in self.smtp.messages if m.rcpt_tos[0].startswith("user")]

    def restart_redis(self) -> None:
        self.server.restart()
        self.r = redis.Redis.from_url(self.server.url, decode_responses=True)
        wait_for_queues(self.r)

    def status(self, cid: str) -> str:
        for worker in self.workers:  # Celery may end a worker on a lost connection
            if worker.proc is not None and worker.proc.poll() is not None:
                worker.start()
        housekeeping.sweep(self.r, self.enqueue)  # as beat does
        return campaign_reads.get_status(cid, self.r).value

    def settled(self, cid: str) -> str:
        """Until the campaign is paused or completed with nothing claimed and no batch
        running; its status."""
        wait_for(lambda: self.status(cid) in ("paused", "completed"), timeout=120, interval=0.5)
        wait_for(lambda: not self.r.zrange(store.LEASES_ZSET, 0, -1), timeout=30)
        return self.status(cid)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.r.close()


@pytest.fixture
def stack(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Stack]:
    sweeping = Settings(lease_ttl_ms=int(FAST_ENV["DISPATCH_LEASE_TTL_MS"]), retry_max_seconds=0.5)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)
    with SmtpTestServer() as smtp:
        started = _Stack(own_redis, smtp)
        try:
            yield started
        finally:
            started.stop()


def test_copies_and_a_recipient_quota_through_a_redis_restart_a_pause_and_a_kill(
    stack: _Stack,
) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "2")))
    smtp = stack.smtp
    smtp.handler.pipelining = rng.random() < 0.5
    pause = rng.uniform(0.005, 0.03)
    smtp.handler.data_reply = lambda envelope: time.sleep(pause)  # type: ignore[assignment,func-returns-value]
    smtp_provider(
        stack.r,
        smtp.port,
        preference_center="system",  # a one-click link: the copies go on their own
        daily_recipient_quota=PER * DAY,
        rate_per_second=rng.choice([20.0, 40.0]),
        max_connections=rng.choice([2, 3]),
    )
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(N)}
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate({**body, **COPIES}), client=stack.r, enqueue=stack.enqueue
    )
    taken = rng.randint(3, 10)
    wait_for(lambda: len(stack.own()) >= taken, timeout=60, interval=0.01)
    stack.restart_redis()
    time.sleep(rng.uniform(0.2, 1.0))
    lifecycle.pause(cid, client=stack.r)  # grants out: paced senders hold them
    time.sleep(rng.uniform(0.2, 1.0))
    lifecycle.resume(cid, client=stack.r, enqueue=stack.enqueue)
    time.sleep(rng.uniform(0.1, 0.8))
    killed = stack.workers[rng.randrange(2)]
    assert killed.proc is not None
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait()
    killed.start()

    def rcpts() -> int:  # To, Cc and Bcc, as the server counted them
        return sum(len(m.rcpt_tos) for m in smtp.messages)

    rcpts_by_day, day_start = [], 0
    for _ in range(N // DAY + 2):  # the lost grants of the killed worker cost a day at most
        done = stack.settled(cid) == "completed"
        rcpts_by_day.append(rcpts() - day_start)
        if done:
            break
        assert "recipient quota" in str(campaign_reads.campaign_summary(cid, stack.r)["reason"])
        for key in stack.r.scan_iter(match=f"{store.PREFIX}:recipient-quota:local:*"):
            stack.r.delete(key)  # midnight UTC
        day_start = rcpts()
        lifecycle.resume(cid, client=stack.r, enqueue=stack.enqueue)
    assert stack.status(cid) == "completed", rcpts_by_day
    assert max(rcpts_by_day) <= PER * DAY, rcpts_by_day

    arrived = Counter(m.rcpt_tos[0] for m in stack.own())
    assert max(arrived.values()) == 1, [a for a, n in arrived.items() if n > 1]
    own_ids = {m.message["Message-ID"] for m in stack.own()}
    copies = [m for m in smtp.messages if not m.rcpt_tos[0].startswith("user")]
    assert all(m.rcpt_tos == [*COPIES["cc"], *COPIES["bcc"]] for m in copies)
    copy_ids = Counter(m.message["Message-ID"] for m in copies)
    assert max(copy_ids.values()) == 1 and set(copy_ids) <= own_ids
    summary = check_books(stack.r, cid)
    ledger = stack.r.hgetall(store.ledger_key(cid))
    for seq in range(N):
        rec = parse_record(ledger.get(str(seq)))
        assert rec is not None
        got = arrived[f"user{seq}@example.com"]
        if rec["state"] == "sent":
            assert got == 1, rec
        elif rec["state"] != "unknown":  # only a send whose outcome was lost may have gone
            assert got == 0, rec
    assert summary["sent"] + summary["unknown"] == N, summary
