"""A real Celery worker process for integration tests (``dispatch worker``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

FAST_ENV = {
    "DISPATCH_RETRY_BASE_SECONDS": "0.05",
    "DISPATCH_RETRY_MAX_SECONDS": "0.5",
    "DISPATCH_LEASE_TTL_MS": "1500",
    "DISPATCH_SLOT_WAIT_SECONDS": "1",
}


class WorkerProcess:
    """``dispatch worker`` in a child process, on the test Redis."""

    def __init__(
        self,
        redis_url: str,
        concurrency: int = 2,
        log_path: str | None = None,
        own_session: bool = False,
        **env: str,
    ) -> None:
        """``own_session``: for a worker the test stops (SIGSTOP): stopped in the tests'
        process group, it would have that group sent SIGHUP and SIGCONT by the kernel if
        the group were orphaned meanwhile (POSIX), which ends pytest."""
        self.env = {**os.environ, **FAST_ENV, "DISPATCH_REDIS_URL": redis_url, **env}
        self.concurrency = concurrency
        self.log_path = log_path  # its stderr (the log), appended to this file if given
        self.own_session = own_session
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [
            sys.executable,
            "-m",
            "dispatch.cli",
            "worker",
            "--loglevel",
            "WARNING",
            "--concurrency",
            str(self.concurrency),
        ]
        own = self.own_session
        if self.log_path is None:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=subprocess.DEVNULL, start_new_session=own
            )
        else:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=own
                )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll until ``predicate()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def batch_enqueuer(redis_url: str) -> Callable[[str, int], None]:
    """``dispatch.send_batch`` enqueued on the Redis at ``redis_url``, for a test that runs
    its own Redis and worker (never the session's queue: a task there is run by the
    session's worker).

    Sent by name through an app of its own: ``send_batch.apply_async`` read this process's
    own app's settings, whose broker URL (read before the session's Redis was set) started
    an embedded Redis and exported its URL for the rest of the session."""
    from celery import Celery

    from dispatch import store

    broker = Celery(broker=redis_url)
    broker.conf.broker_transport_options = dict(store.PRIORITY_OPTIONS)

    def enqueue(campaign_id: str, batch: int) -> None:
        broker.send_task(
            "dispatch.send_batch",
            (campaign_id, batch),
            queue=store.SENDS_QUEUE,
            priority=store.batch_priority(batch),
        )

    return enqueue


def wait_for_queues(r: Any) -> None:
    """Until a worker has declared its queues: a task published before would find no
    binding and be dropped."""
    wait_for(lambda: bool(r.exists("_kombu.binding.sends")), timeout=60)


def publish_raw_task(
    url: str, body: bytes, task: str = "dispatch.enqueue_campaign", queue: str = "default"
) -> str:
    """A protocol 2 task message whose body is ``body`` as it is, JSON by its content
    type (what a non-Python or buggy client may publish); its id."""
    from kombu import Connection, Producer

    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "ignore_result": False,
        "timelimit": [None, None],
    }
    with Connection(url) as conn:
        Producer(conn).publish(
            body,
            exchange=queue,
            routing_key=queue,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            declare=[],
        )
    return task_id
