"""What the README says of ``dispatch.enqueue_campaign`` sent by another service's app
(review R14): an app that routes its tasks elsewhere passes ``queue="celery"``, or the
task waits in a queue no dispatch worker reads; a task pickled with task protocol 1
(Celery 3's default) keeps even its id in the body the worker refuses to read, so no
result comes, and the worker goes on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from dispatch.redis_server import RedisServer
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess, wait_for_queues

TASK = "dispatch.enqueue_campaign"
CAMPAIGN: dict[str, Any] = {
    "provider": "r14",
    "subject": "Hello",
    "text": "Hi",
    "draft": True,
    "recipients": [{"email": "a@example.com"}],
}
OWN_QUEUE = "r14-billing"  # the caller's own default queue, which no dispatch worker reads


@pytest.fixture
def billing(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    """Another service's app on dispatch's Redis, its tasks routed to its own queue."""
    smtp_provider(redis_client, 2525, nickname="r14")
    wait_for_queues(redis_client)
    app = Celery("r14-billing", broker=redis_server.url, backend=redis_server.url)
    app.conf.task_default_queue = OWN_QUEUE
    yield app
    app.close()
    redis_client.delete(OWN_QUEUE, f"_kombu.binding.{OWN_QUEUE}")


def test_an_app_that_routes_its_tasks_elsewhere_passes_queue_celery(
    billing: Celery, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    stranded = billing.send_task(TASK, args=[{**CAMPAIGN, "id": "r14-stranded"}])
    sent = billing.send_task(TASK, args=[{**CAMPAIGN, "id": "r14-routed"}], queue="celery")
    assert sent.get(timeout=60) == "r14-routed"
    # The one sent to the app's own queue is still there, unread (it was published
    # before the other, which a worker has taken and answered).
    assert redis_client.llen(OWN_QUEUE) == 1
    assert billing.AsyncResult(stranded.id).state == "PENDING"
    assert not redis_client.exists("dispatch:campaign:r14-stranded")


def test_a_task_pickled_with_protocol_1_gets_no_result_and_the_worker_goes_on(
    billing: Celery,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    celery3 = Celery("r14-celery3", broker=redis_server.url, backend=redis_server.url)
    celery3.conf.update(task_protocol=1, task_serializer="pickle")
    try:
        pickled = celery3.send_task(TASK, args=[{**CAMPAIGN, "id": "r14-pickled"}])
    finally:
        celery3.close()
    # A JSON task behind it in the same queue: once it is answered, the worker's consumer
    # has dealt with the pickled one (it reads the queue's messages in order).
    after = billing.send_task(TASK, args=[{**CAMPAIGN, "id": "r14-after"}], queue="celery")
    assert after.get(timeout=60) == "r14-after"
    assert billing.AsyncResult(pickled.id).state == "PENDING"  # no result stored
    assert not redis_client.exists("dispatch:campaign:r14-pickled")
    assert celery_worker.proc is not None and celery_worker.proc.poll() is None
