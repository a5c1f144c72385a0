"""Redis goes away under a running worker and comes back: the worker process lives on.

Each test runs its own Redis (append-only file, as the README asks for production) and
its own ``dispatch worker``, so that stopping Redis touches no other test.
"""

from __future__ import annotations

import subprocess

import pytest
import redis
from celery import Celery

from dispatch import campaign_reads, campaigns, housekeeping
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings
from tests.helpers import assert_each_sent_once, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

pytestmark = pytest.mark.integration


def test_a_worker_holding_batches_stays_up_when_redis_restarts(
    monkeypatch: pytest.MonkeyPatch, smtp: SmtpTestServer
) -> None:
    """Redis stops while the worker holds unacknowledged batch tasks. Closing the broken
    broker connection then made kombu try to give them back on a connection it had
    already let go of (AttributeError, not a connection error) and Celery ended the
    whole worker ("Unrecoverable error", exit status 0: a supervisor that restarts on
    failure only left no worker at all). Now it reconnects, the same process takes
    tasks again, and the campaign completes with every address sent once."""
    sweeping = Settings(lease_ttl_ms=int(FAST_ENV["DISPATCH_LEASE_TTL_MS"]), retry_max_seconds=600)
    monkeypatch.setattr(housekeeping, "get_settings", lambda: sweeping)
    server = RedisServer(appendonly=True).start()
    worker = WorkerProcess(server.url, concurrency=2).start()
    broker = Celery(broker=server.url)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        wait_for_queues(r)
        enqueue = batch_enqueuer(server.url)
        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=300)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3000)}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        wait_for(lambda: len(smtp.messages) >= 300, timeout=60)
        server.halt()
        # The worker meets the lost connection while Redis is away (it used to exit here).
        with pytest.raises(subprocess.TimeoutExpired):
            assert worker.proc is not None
            worker.proc.wait(timeout=5)
        server.start()
        r = redis.Redis.from_url(server.url, decode_responses=True)
        # The same process consumes again: it answers a ping sent through the broker.
        wait_for(lambda: bool(broker.control.ping(timeout=0.5)), timeout=60, interval=0.5)
        assert worker.proc.poll() is None

        def completed() -> bool:
            housekeeping.sweep(r, enqueue)  # as beat does every 30 s
            return campaign_reads.get_status(cid, r).value == "completed"

        wait_for(completed, timeout=60, interval=1.0)
        assert worker.proc.poll() is None
        unknown = assert_each_sent_once(r, cid, [m.rcpt_tos[0] for m in smtp.messages])
        assert unknown <= 8  # at most a chunk of 4 on the wire in each worker process
    finally:
        worker.stop()
        broker.close()
        r.close()
        server.stop()


def test_a_worker_waits_while_redis_is_out_of_memory(redis_client: redis.Redis) -> None:
    """maxmemory reached under noeviction (the policy the README asks for) refuses the
    broker's writes with an error reply, which Celery took for an unrecoverable error:
    the worker exited at start and on its next ack. Now it waits and then consumes."""
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url)
    r.config_set("maxmemory", "1")
    worker = WorkerProcess(server.url, concurrency=1).start()
    broker = Celery(broker=server.url)
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # it used to exit within a second
            assert worker.proc is not None
            worker.proc.wait(timeout=8)
        r.config_set("maxmemory", "0")
        wait_for(lambda: bool(broker.control.ping(timeout=0.5)), timeout=60, interval=0.5)
    finally:
        worker.stop()
        broker.close()
        r.close()
        server.stop()


_FAILING_WORKER = """
import sys
from celery import bootsteps
from dispatch import cli
from dispatch.celery_app import app

class Broken(bootsteps.StartStopStep):
    def start(self, worker):
        raise RuntimeError("broken on purpose")

app.steps["worker"].add(Broken)
sys.exit(cli.main(["worker", "--concurrency", "1", "--loglevel", "CRITICAL"]))
"""


def test_a_worker_that_celery_ends_exits_with_a_failure_status(redis_server: RedisServer) -> None:
    """Celery ends a worker on an unrecoverable error with status 1; ``dispatch worker``
    answered 0, so a supervisor that restarts on failure (systemd's
    ``Restart=on-failure``, compose's ``on-failure``) left the worker down."""
    import os
    import sys

    env = {**os.environ, "DISPATCH_REDIS_URL": redis_server.url}
    done = subprocess.run(
        [sys.executable, "-c", _FAILING_WORKER], env=env, capture_output=True, timeout=60
    )
    assert b"broken on purpose" in done.stderr
    assert done.returncode == 1
