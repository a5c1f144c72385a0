"""``dispatch.enqueue_campaign`` messages the worker cannot read (review I14).

A task's body had no size cap: decoded whole in the worker's main process and again in
the pool process (a million recipients, a 70 MB body: about 1.1 GB more in each), a
huge one could get the worker killed, and the message, back in its queue, the next
worker too. A body that is not the JSON (or the UTF-8) it claims was logged and dropped,
its caller's ``.get()`` left waiting for its timeout."""

from __future__ import annotations

from unittest.mock import MagicMock

import orjson
import pytest
import redis
from celery import Celery
from celery.exceptions import InvalidTaskError
from kombu.exceptions import DecodeError
from kombu.message import Message

from dispatch import celery_app, tasks
from dispatch.api.body_limits import MAX_API_BODY_BYTES
from dispatch.redis_server import RedisServer
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess, publish_raw_task, wait_for_queues

TASK = "dispatch.enqueue_campaign"
CAMPAIGN = {
    "provider": "i14",
    "subject": "Hello",
    "text": "Hi",
    "draft": True,
    "recipients": [{"email": "alice@example.com", "vars": {"code": "SECRET-VAR"}}],
}


def _message(body: bytes) -> Message:
    return Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": TASK, "id": "t-i14"},
    )


def test_a_body_over_the_api_cap_is_refused_before_anything_decodes_it() -> None:
    handler = celery_app.guarded_strategy(tasks.enqueue_campaign, celery_app.app, MagicMock())
    # Not JSON: decoding it would raise DecodeError, not refuse it by its size.
    over = _message(b"x" * (MAX_API_BODY_BYTES + 1))
    with pytest.raises(InvalidTaskError) as refused:
        handler(over, None, MagicMock(), MagicMock(), [])
    assert str(refused.value) == (
        f"the message's body is {MAX_API_BODY_BYTES + 1} bytes, over the "
        f"{MAX_API_BODY_BYTES} bytes a task's body may be (not read)"
    )
    assert over._decoded_cache is None  # never decoded
    # One at the cap is read (and this one found undecodable).
    with pytest.raises(DecodeError):
        handler(_message(b"x" * MAX_API_BODY_BYTES), None, MagicMock(), MagicMock(), [])


def test_bodies_the_worker_cannot_read_are_answered_and_it_goes_on(
    redis_server: RedisServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    smtp_provider(redis_client, 2525, nickname="i14")
    wait_for_queues(redis_client)
    caller = Celery("i14-caller", broker=redis_server.url, backend=redis_server.url)
    task_body = orjson.dumps([[CAMPAIGN], {}, {}])
    sent = {
        "too large": publish_raw_task(
            redis_server.url, b" " * (MAX_API_BODY_BYTES + 1), queue="celery"
        ),
        "latin-1": publish_raw_task(
            redis_server.url, task_body.replace(b"Hello", b"H\xe9llo"), queue="celery"
        ),
        "not json": publish_raw_task(redis_server.url, task_body[:-1], queue="celery"),
    }
    try:
        answers = {}
        for kind, task_id in sent.items():
            with pytest.raises(Exception) as refused:
                caller.AsyncResult(task_id).get(timeout=30)
            assert type(refused.value).__name__ == "CampaignError", kind
            answers[kind] = str(refused.value)
        assert answers["too large"] == (
            f"body: {MAX_API_BODY_BYTES + 1} bytes, over the {MAX_API_BODY_BYTES} bytes "
            "(64 MiB) a task's body may be: create the campaign as a draft with the task "
            '("draft": true, no recipients) and append the recipients with '
            "POST /v1/campaigns/{id}/recipients (streamed, any size)"
        )
        assert answers["latin-1"].startswith(
            "body: cannot be decoded as its message says (application/json, utf-8): "
            "'utf-8' codec can't decode byte 0xe9"
        )
        assert answers["not json"].startswith(
            "body: cannot be decoded as its message says (application/json, utf-8): "
        )
        assert all("SECRET-VAR" not in answer for answer in answers.values())
        # Still taking tasks.
        after = caller.send_task(TASK, args=[{**CAMPAIGN, "id": "i14-after"}])
        assert after.get(timeout=30) == "i14-after"
        assert celery_worker.proc is not None and celery_worker.proc.poll() is None
    finally:
        caller.close()
