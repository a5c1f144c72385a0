"""What another service's app must know of Celery's own options when it sends
``dispatch.enqueue_campaign`` (review H25): its callbacks (``link``, ``link_error``) are
sent by dispatch's worker, routed by dispatch's routes, so they reach the caller only
through a queue they name (one naming none was discarded by a dispatch worker as an
unregistered task, which the README did not say); and a campaign is scheduled with
``send_at``, not the task's ``countdown``/``eta`` (held past the visibility timeout, the
task is handed out again and again, each copy holding the body in the worker)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from dispatch.redis_server import RedisServer
from tests import test_review_r14_celery_readme as r14
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess, wait_for, wait_for_queues

TASK = "dispatch.enqueue_campaign"
CAMPAIGN: dict[str, Any] = {**r14.CAMPAIGN, "provider": "h25"}  # a draft of one recipient
OWN_QUEUE = "h25-billing"  # the caller's own queue, which no dispatch worker reads
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def billing(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    """Another service's app on dispatch's Redis (Celery's defaults otherwise)."""
    smtp_provider(redis_client, 2525, nickname="h25")
    wait_for_queues(redis_client)
    app = Celery("h25-billing", broker=redis_server.url, backend=redis_server.url)
    yield app
    app.close()
    redis_client.delete(OWN_QUEUE, f"_kombu.binding.{OWN_QUEUE}")


def _queued(r: redis.Redis, queue: str) -> dict[str, list[Any]]:
    """The tasks waiting in ``queue``: task name -> its positional arguments."""
    found = {}
    for raw in r.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found[message["headers"]["task"]] = body[0]
    return found


def test_callbacks_reach_the_caller_through_the_queue_they_name(
    billing: Celery, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    done = billing.send_task(
        TASK,
        args=[{**CAMPAIGN, "id": "h25-linked"}],
        link=billing.signature("h25.recorded", queue=OWN_QUEUE),
    )
    refused = billing.send_task(
        TASK,
        args=[{**CAMPAIGN, "id": "h25-refused", "provider": "h25-none"}],
        link_error=billing.signature("h25.refused", queue=OWN_QUEUE),
    )
    assert done.get(timeout=60) == "h25-linked"
    with pytest.raises(Exception, match="provider 'h25-none' does not exist"):
        refused.get(timeout=60)
    # (an errback is sent once the refusal is stored: it may come a moment after .get())
    wait_for(lambda: redis_client.llen(OWN_QUEUE) == 2, timeout=30)
    assert _queued(redis_client, OWN_QUEUE) == {
        "h25.recorded": ["h25-linked"],  # link: the campaign's id
        "h25.refused": [refused.id],  # link_error: the task's id
    }
    # What the README tells the caller, with the two pitfalls it did not name.
    text = " ".join(README.read_text().split())
    assert 'other.signature("billing.recorded", queue="billing")' in text
    assert (
        "Schedule a campaign with `send_at` in the body, not with the task's `countdown` or `eta`"
        in text
    )
