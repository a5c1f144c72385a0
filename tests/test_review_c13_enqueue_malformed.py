"""A ``dispatch.enqueue_campaign`` message whose arguments are not Celery's usual list and
mapping (review C13). Its monitor text (``tasks._BodyNotShown``) is made in the worker's
consumer, where an exception is an "Unrecoverable error" that ends the worker, and the
message, given back to its queue, ended the next worker too. Celery's handling of such a
message applies instead (the task fails or is dropped), and the worker goes on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from celery import Celery

from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, publish_raw_task, wait_for_queues

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _publish_raw(url: str, args: Any, kwargs: Any) -> str:
    """A protocol 2 task message for ``dispatch.enqueue_campaign`` with the body
    ``[args, kwargs, embed]`` as given (a non-Python client, a buggy one); its id."""
    return publish_raw_task(url, orjson.dumps([args, kwargs, EMBED]))


@pytest.fixture
def worker(own_redis: RedisServer) -> Iterator[WorkerProcess]:
    started = WorkerProcess(own_redis.url, concurrency=1).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(None, {}), ([{"id": "c13"}], ["not", "a", "mapping"]), ([], "body")],
    ids=["null-args", "list-kwargs", "text-kwargs"],
)
def test_an_odd_message_leaves_the_worker_taking_tasks(
    own_redis: RedisServer, worker: WorkerProcess, args: Any, kwargs: Any
) -> None:
    wait_for_queues(redis.Redis.from_url(own_redis.url))
    app = Celery(broker=own_redis.url, backend=own_redis.url)
    _publish_raw(own_redis.url, args, kwargs)
    # The worker still takes tasks: the next campaign is answered (refused: no subject).
    after = app.send_task("dispatch.enqueue_campaign", ({"id": "c13-next", "provider": "x"},))
    with pytest.raises(Exception, match="subject"):
        after.get(timeout=60)
    assert worker.proc is not None and worker.proc.poll() is None
