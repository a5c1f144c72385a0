"""A real Celery worker on a real Redis: campaigns end to end, and a redelivered batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

from dispatch import batch_enqueue, campaign_reads, campaigns, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.tasks import enqueue_campaign, send_batch
from providers.smtp import SmtpTransport
from tests.helpers import (
    assert_each_sent_once,
    create_held,
    http_provider,
    recipients,
    smtp_provider,
)
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer
from tests.worker import FAST_ENV, WorkerProcess, batch_enqueuer, wait_for


def _completed(cid: str, r: redis.Redis) -> bool:
    return campaign_reads.get_status(cid, r).value == "completed"


def _send_through_the_worker(r: redis.Redis, body: dict[str, object]) -> None:
    """``dispatch.enqueue_campaign`` with the API's JSON; returns once it completed."""
    enqueue_campaign.delay({"subject": "Hello {{ name }}", **body})
    cid = str(body["id"])
    wait_for(lambda: r.exists(store.campaign_key(cid)) == 1)
    wait_for(lambda: _completed(cid, r), timeout=120)


def test_campaign_through_celery_task(
    redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """``dispatch.enqueue_campaign`` with the API's JSON: 2,500 recipients in 3 batches."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, max_connections=4)
        _send_through_the_worker(
            redis_client,
            {
                "id": "celery-1",
                "provider": "local",
                "html": "<p>{{ name }}: {{ offer }}</p>",
                "vars": {"offer": "free shipping"},
                "recipients": recipients(2500),
            },
        )
        counters = campaign_reads.get_counters("celery-1", redis_client)
        assert (counters["total"], counters["sent"], counters["queued"]) == (2500, 2500, 0)
        rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert len(rcpts) == 2500 and max(rcpts.values()) == 1
        metas = {m.message["X-CleverTap_META"] for m in smtp.messages}
        assert len(metas) == 2500


def test_starttls_with_certificate_checks_through_the_worker(
    redis_client: redis.Redis, celery_worker: WorkerProcess, trusted_cert: tuple[Path, Path]
) -> None:
    """Certificates checked, as by default in production, by the worker's processes with
    the TLS context their main process made before forking them (providers.tls). The
    server refuses mail before STARTTLS, so each delivery went over TLS; the second
    campaign's server has a certificate the worker does not trust: it pauses, unsent."""
    with SmtpTestServer(security="starttls", cert=trusted_cert) as smtp:
        smtp_provider(redis_client, smtp.port, security="starttls", max_connections=4)
        _send_through_the_worker(
            redis_client,
            {"id": "tls-1", "provider": "local", "html": "<p>{{ name }}</p>",
             "recipients": recipients(1500)},
        )  # fmt: skip
        counters = campaign_reads.get_counters("tls-1", redis_client)
        assert (counters["sent"], counters["failed"]) == (1500, 0)
        assert len({m.rcpt_tos[0] for m in smtp.messages}) == 1500
    with SmtpTestServer(security="starttls") as untrusted:
        smtp_provider(redis_client, untrusted.port, security="starttls")
        enqueue_campaign.delay(
            {"id": "tls-2", "provider": "local", "subject": "s", "html": "h",
             "recipients": recipients(5)}
        )  # fmt: skip
        wait_for(lambda: redis_client.hget(store.campaign_key("tls-2"), "status") == "paused")
        summary = campaign_reads.campaign_summary("tls-2", redis_client)
        assert "CERTIFICATE_VERIFY_FAILED" in summary["reason"]
        assert (summary["sent"], summary["failed"]) == (0, 0)
        assert untrusted.messages == []


def test_a_provider_without_a_free_connection_does_not_hold_up_the_others(
    redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Provider "held"'s only connection slot is taken elsewhere. Its three batches must
    not keep the worker's two processes waiting while another provider's campaign
    queues behind them: they go back to the broker, that campaign completes, and once
    the slot is free they send everything, once."""
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, nickname="held", max_connections=1)
        http_provider(redis_client, sink.url, nickname="free")
        slots = f"{store.PREFIX}:connections:held"
        redis_client.zadd(slots, {"another-worker": time.time() + 600})
        for cid, provider, n in (("waits-1", "held", 3000), ("goes-1", "free", 1000)):
            enqueue_campaign.delay(
                {"id": cid, "provider": provider, "subject": "s", "html": "h",
                 "recipients": recipients(n, domain=f"{cid}.example")}
            )  # fmt: skip
            wait_for(lambda cid=cid: redis_client.exists(store.campaign_key(cid)) == 1)  # type: ignore[misc]
        wait_for(lambda: _completed("goes-1", redis_client), timeout=60)
        assert campaign_reads.get_counters("waits-1", redis_client)["sent"] == 0
        redis_client.zrem(slots, "another-worker")
        wait_for(lambda: _completed("waits-1", redis_client), timeout=120)
        delivered = Counter(m["to"] for r in sink.requests for m in r.json()["msgs"])
    assert sum(1 for to in delivered if to.endswith("@waits-1.example")) == 3000
    assert sum(1 for to in delivered if to.endswith("@goes-1.example")) == 1000
    assert max(delivered.values()) == 1


def test_a_worker_process_sends_its_batches_on_one_kept_connection(
    redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Five HTTP batches through the worker's processes (two): a process's later batches
    go out on the connection its first one opened (dispatch.session_pool)."""
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, max_connections=4)
        _send_through_the_worker(
            redis_client,
            {"id": "celery-kept", "provider": "esp", "html": "<p>{{ name }}</p>",
             "recipients": recipients(5000)},
        )  # fmt: skip
        requests = sink.requests
    assert len(requests) == 5
    assert len({r.peer_port for r in requests}) <= celery_worker.concurrency
    assert campaign_reads.get_counters("celery-kept", redis_client)["sent"] == 5000


CRASHING_SENDER = """
import asyncio, sys
from dispatch import store
from dispatch.sending import run_batch
async def main():
    await run_batch(sys.argv[1], 0, r=store.async_client())
asyncio.run(main())
"""


def test_redelivered_half_sent_batch_sends_nothing_twice(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """A worker dies mid-batch (SIGKILL); the redelivered task finishes the rest.

    Every recipient reaches the SMTP server at most once; what was in flight at the
    crash is recorded ``unknown``, never resent.
    """
    with SmtpTestServer() as smtp:
        slow = lambda envelope: time.sleep(0.02)  # noqa: E731 (slow enough to kill mid-batch)
        smtp.handler.data_reply = slow  # type: ignore[assignment,return-value]
        smtp_provider(redis_client, smtp.port, max_connections=2)
        body = {
            "id": "crash-1",
            "provider": "local",
            "subject": "s",
            "html": "h",
            "recipients": recipients(200),
        }
        create_held(redis_client, body)  # its task is the crashing sender below
        env = {**os.environ, **FAST_ENV, "DISPATCH_REDIS_URL": redis_server.url}
        proc = subprocess.Popen([sys.executable, "-c", CRASHING_SENDER, "crash-1"], env=env)
        wait_for(lambda: len(smtp.messages) >= 60, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        half = len(smtp.messages)
        assert 60 <= half < 200
        claimed = [
            s
            for s, raw in redis_client.hgetall(store.ledger_key("crash-1")).items()
            if (parse_record(raw) or {}).get("state") == "claimed"
        ]
        # At most one pipelined chunk in flight per connection (2 connections).
        assert 1 <= len(claimed) <= 2 * SmtpTransport.chunk_size

        smtp.handler.data_reply = lambda envelope: None
        worker = WorkerProcess(redis_server.url, concurrency=1).start()
        try:
            send_batch.apply_async(("crash-1", 0), queue="sends")  # the redelivery
            wait_for(lambda: _completed("crash-1", redis_client), timeout=60)
        finally:
            worker.stop()
        counters = campaign_reads.get_counters("crash-1", redis_client)
        assert counters["queued"] == 0
        assert counters["sent"] + counters["unknown"] == 200
        assert counters["unknown"] == len(claimed)
        rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert max(rcpts.values()) == 1, "a recipient received the campaign twice"
        for seq in claimed:  # in flight at the crash: unknown, and not sent again after it
            rec = parse_record(redis_client.hget(store.ledger_key("crash-1"), seq))
            assert rec is not None and rec["state"] == "unknown"
        assert len(smtp.messages) >= counters["sent"]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _runs(app: object, task: str) -> int:
    """How many times the workers have run ``task`` (their own statistics)."""
    stats = app.control.inspect(timeout=2).stats() or {}  # type: ignore[attr-defined]
    return sum(int(s.get("total", {}).get(task, 0)) for s in stats.values())


def test_task_events_flow_once_a_monitor_turns_them_on(
    redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Workers send no task events by default (about 1 ms of the main process a task);
    Flower turns them on in every worker with ``enable_events``, as done here."""
    import threading

    from dispatch.celery_app import app

    seen: list[dict[str, object]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})

        def succeeded() -> list[object]:
            return [e["uuid"] for e in seen if e.get("type") == "task-succeeded"]

        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        listening.start()
        try:
            wait_for(lambda: any(e.get("type") == "worker-heartbeat" for e in seen), 30)
            quiet = app.send_task("dispatch.release_scheduled")
            wait_for(lambda: any(e.get("uuid") == quiet.id for e in seen), 30)  # task-sent
            wait_for(lambda: _runs(app, "dispatch.release_scheduled") >= 1, 30)
            time.sleep(0.5)  # an event it sent would have arrived by now
            assert quiet.id not in succeeded()
            app.control.enable_events()
            watched = app.send_task("dispatch.release_scheduled")
            wait_for(lambda: watched.id in succeeded(), 30)
        finally:
            receiver.should_stop = True
            listening.join(timeout=10)
            app.control.disable_events()


def test_batches_handed_out_in_one_block_leave_one_by_one(redis_client: redis.Redis) -> None:
    """``batch_enqueuer`` shares one producer, yet publishes each batch at once (a
    worker of another test may take them at once: the pushes are counted)."""

    def pushes() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0))

    before = pushes()
    with batch_enqueue.batch_enqueuer() as send:
        send("block-1", 0)
        assert pushes() == before + 1
        send("block-1", 1)
        assert pushes() == before + 2


def test_flower_shows_the_tasks_workers_run(
    redis_server: RedisServer, celery_worker: WorkerProcess
) -> None:
    """The Procfile's ``flower`` process, on the test Redis: it turns task events on in
    the workers (they send none by default) and lists what they ran."""
    import json
    import urllib.request

    from dispatch.celery_app import app
    from tests.smtp_server import free_port

    port = free_port()
    # Flower's HTTP API answers without credentials only when told to (its pages do).
    env = {**os.environ, "DISPATCH_REDIS_URL": redis_server.url, "FLOWER_UNAUTHENTICATED_API": "1"}
    cmd = [sys.executable, "-m", "celery", "-A", "dispatch.celery_app", "flower",
           f"--port={port}", "--address=127.0.0.1"]  # fmt: skip
    flower = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), timeout=60)

        def listed() -> dict[str, dict[str, object]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as r:
                tasks: dict[str, dict[str, object]] = json.loads(r.read())
            return tasks

        sent: list[str] = []

        def seen_succeeded() -> bool:
            # Flower turns events on shortly after it starts: send until one is listed.
            sent.append(app.send_task("dispatch.release_scheduled").id)
            tasks = listed()
            return any(tasks.get(i, {}).get("state") == "SUCCESS" for i in sent)

        wait_for(seen_succeeded, timeout=60, interval=1.0)
        task = next(t for i, t in listed().items() if i in sent and t["state"] == "SUCCESS")
        assert task["name"] == "dispatch.release_scheduled"
    finally:
        flower.terminate()
        flower.wait(timeout=20)
        app.control.disable_events()


def test_a_batch_whose_redis_connection_broke_runs_again(smtp: SmtpTestServer) -> None:
    """Redis restarts between campaigns: each worker process's pooled Redis connections
    are dead and its next batch fails on them. That batch runs again on a fresh
    connection and the campaign completes without beat's sweep (none runs here)."""
    from celery import Celery

    server = RedisServer(appendonly=True).start()
    worker = WorkerProcess(server.url, concurrency=1).start()
    broker = Celery(broker=server.url)
    r = redis.Redis.from_url(server.url, decode_responses=True)

    enqueue = batch_enqueuer(server.url)  # (never through this process's own app)

    def run_campaign(n: int) -> str:
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
        cid, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        return cid

    try:
        wait_for(lambda: bool(r.exists("_kombu.binding.sends")), timeout=60)
        smtp_provider(r, smtp.port, max_connections=2)
        first = run_campaign(10)  # the worker process now holds Redis connections
        wait_for(lambda: _completed(first, r), timeout=60)
        server.restart()  # a clean stop (the AOF is complete) and a start on the same data
        r = redis.Redis.from_url(server.url, decode_responses=True)
        # The worker's broker connection is back once it consumes: a ping task answers.
        wait_for(lambda: bool(broker.control.ping(timeout=0.5)), timeout=60, interval=0.5)
        second = run_campaign(10)
        wait_for(lambda: _completed(second, r), timeout=60, interval=0.5)
        # Sent, not lost with the batch (a message in flight on a dead connection may end
        # unknown), and nothing twice.
        received = [m.rcpt_tos[0] for m in smtp.messages[10:]]
        assert assert_each_sent_once(r, second, received) <= 4
    finally:
        worker.stop()
        r.close()
        broker.close()
        server.stop()


def test_a_batch_held_by_a_run_that_lets_go_goes_on_before_its_lease_would_expire(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """A resume re-enqueues a batch whose paused run still holds the lease for a moment.
    The new task finds it busy; once the lease is released it must go on within seconds,
    not when the 60 s lease would have expired (it used to wait lease_ttl + 1)."""
    from dispatch.celery_app import app

    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, batches = create_held(
            redis_client,
            {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(5)},
        )
        lease = store.batch_lease_key(cid, 0)
        redis_client.set(lease, "the-paused-run", px=60_000)
        worker = WorkerProcess(
            redis_server.url, concurrency=1, DISPATCH_LEASE_TTL_MS="60000"
        ).start()
        try:
            send_batch.apply_async(batches[0], queue="sends")
            wait_for(lambda: _runs(app, "dispatch.send_batch") >= 1, timeout=60)
            assert sink.requests == []  # busy: nothing sent while the other run holds it
            redis_client.delete(lease)  # the paused run lets go
            wait_for(lambda: _completed(cid, redis_client), timeout=30)
        finally:
            worker.stop()
        assert sorted(m["to"] for r in sink.requests for m in r.json()["msgs"]) == [
            f"user{i}@example.com" for i in range(5)
        ]
