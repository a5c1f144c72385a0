"""Task messages whose body a hand-made client got wrong (review E14), as another
service's code that knows only the broker URL may publish them.

A protocol 2 body that is not ``[args, kwargs, embed]`` (the campaign itself as the
body, ``null``, two items) raised ``ValueError`` or ``TypeError`` in the worker's
consumer, where Celery unpacks it: "Unrecoverable error", the worker ended, and the
message, back in its queue, ended the next worker too. And a body that is not the UTF-8
it claims was logged whole, inside the repr of its ``UnicodeDecodeError``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from kombu.exceptions import DecodeError

from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, publish_raw_task, wait_for_queues

CAMPAIGN = {
    "provider": "local",
    "subject": "Hello",
    "text": "Hi",
    "recipients": [{"email": "alice@example.com", "vars": {"code": "SECRET-VAR"}}],
}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _publish(url: str, body: bytes, task: str = "dispatch.enqueue_campaign") -> str:
    """A task message with ``body`` as it is, in Celery's default queue; its id."""
    return publish_raw_task(url, body, task, queue="celery")


def test_a_body_of_another_shape_is_refused_and_the_worker_goes_on(
    own_redis: RedisServer,
) -> None:
    worker = WorkerProcess(own_redis.url, concurrency=1).start()
    app = Celery(broker=own_redis.url, backend=own_redis.url)
    try:
        wait_for_queues(redis.Redis.from_url(own_redis.url))
        _refused_and_answered(own_redis.url, app)
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        app.close()
        worker.stop()


def _refused_and_answered(url: str, app: Celery) -> None:
    bodies: dict[str, Any] = {
        "an object without 'args'": CAMPAIGN,
        "null": None,
        "a string": "the campaign as text",
        "an array of 2 items": [[CAMPAIGN], {}],
        "an array whose third item (embed) is not an object": [[CAMPAIGN], {}, [1]],
    }
    # Another task's message, with no caller to answer: the worker must survive it too.
    _publish(url, orjson.dumps({"campaign_id": "x"}), task="dispatch.send_batch")
    sent = {shape: _publish(url, orjson.dumps(body)) for shape, body in bodies.items()}
    for shape, task_id in sent.items():
        with pytest.raises(Exception) as refused:
            app.AsyncResult(task_id).get(timeout=30)
        assert type(refused.value).__name__ == "CampaignError", shape
        assert str(refused.value).startswith(
            f"body: not a task message Celery can run: the message's body is {shape}, "
        ), str(refused.value)
    # Still taking tasks: the next campaign is answered (refused: no such provider).
    after = app.send_task("dispatch.enqueue_campaign", args=[{**CAMPAIGN, "id": "e14-after"}])
    with pytest.raises(Exception, match=r"^provider: provider 'local' does not exist"):
        after.get(timeout=30)


def test_a_body_that_is_not_its_utf8_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    from celery.worker.consumer.consumer import Consumer

    import dispatch.celery_app  # noqa: F401  (what the worker imports)

    body = orjson.dumps([[CAMPAIGN], {}, EMBED]).replace(b"Hello", b"H\xe9llo")  # Latin-1

    class Undecodable:
        content_type, content_encoding = "application/json", "utf-8"

        def __init__(self) -> None:
            self.body = body
            self.headers = {"task": "dispatch.enqueue_campaign", "id": "t-utf8"}
            self.acked = False

        def ack(self) -> None:
            self.acked = True

    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        error = DecodeError(exc)  # as kombu raises it
    message = Undecodable()
    with caplog.at_level("CRITICAL", logger="celery.worker.consumer.consumer"):
        Consumer.on_decode_error(None, message, error)  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Can't decode message body" in logged and "t-utf8" in logged
    assert "alice@example.com" not in logged and "SECRET-VAR" not in logged
    assert "can't decode byte 0xe9" in logged  # what is wrong, and where
    assert message.acked
