"""``dispatch.enqueue_campaign`` sent compressed (Celery's ``compression="gzip"`` or
``task_compression``; review J23).

kombu decompresses a body as it builds the message, in the worker's main process, before
the cap on a task's body (64 MiB) is looked at: a 400 KB message took the worker's main
process from 97 MB to 918 MB before it was refused by its size, and a little more could
get it killed (the message, back in its queue, then kills the next worker). A body is now
decompressed no further than the cap; a campaign sent compressed within it runs as
before."""

from __future__ import annotations

import tracemalloc
import uuid
import zlib

import pytest
import redis
from celery import Celery
from kombu import Connection, Producer
from kombu.message import Message

from dispatch import celery_app
from dispatch.redis_server import RedisServer
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess, wait_for_queues

TASK = "dispatch.enqueue_campaign"
CAMPAIGN = {
    "provider": "j23",
    "subject": "Hello",
    "text": "Hi",
    "draft": True,
    "recipients": [{"email": "alice@example.com"}],
}


def _compressed_task_body(decompressed_bytes: int) -> bytes:
    """A protocol 2 body of a campaign whose html is that many spaces, zlib-compressed
    (kombu's ``gzip``) a MiB at a time: never held whole here."""
    stream = zlib.compressobj(9)
    parts = [stream.compress(b'[[{"provider": "j23", "subject": "Hi", "draft": true, "html": "')]
    parts += [stream.compress(b" " * 2**20) for _ in range(decompressed_bytes // 2**20)]
    parts += [stream.compress(b'"}], {}, {}]'), stream.flush()]
    return b"".join(parts)


def _message(body: bytes) -> Message:
    return Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": TASK, "id": "t-j23", "compression": "application/x-gzip"},
    )


def test_a_compressed_body_is_decompressed_no_further_than_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(celery_app, "MAX_TASK_BODY_BYTES", 2**20)
    bomb = _compressed_task_body(64 * 2**20)  # 64 MiB once decompressed, 64 KB as sent
    tracemalloc.start()
    try:
        message = _message(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # (the old code held the 64 MiB)
    assert message.body == bomb  # never decompressed whole
    assert len(message.errors) == 1
    refusal = message.errors[0][1]
    assert isinstance(refusal, celery_app.TaskBodyTooLargeError)
    assert str(refusal) == (
        f"the message's body is {len(bomb)} bytes compressed, once decompressed, over the "
        f"{2**20} bytes a task's body may be (not read)"
    )
    # Within the cap, the body is the one sent.
    small = zlib.compress(b'[["x"], {}, {}]')
    assert _message(small).body == b'[["x"], {}, {}]'
    assert _message(small[:-4]).errors  # truncated: refused as undecodable, as before


def test_a_compressed_campaign_runs_and_one_over_the_cap_is_refused_by_its_size(
    redis_server: RedisServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    smtp_provider(redis_client, 2525, nickname="j23")
    wait_for_queues(redis_client)
    caller = Celery("j23-caller", broker=redis_server.url, backend=redis_server.url)
    bomb = _compressed_task_body(celery_app.MAX_TASK_BODY_BYTES + 2**20)
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": TASK, "id": task_id, "root_id": task_id, "retries": 0}
    try:
        sent = caller.send_task(TASK, args=[{**CAMPAIGN, "id": "j23-gz"}], compression="gzip")
        assert sent.get(timeout=30) == "j23-gz"
        with Connection(redis_server.url) as conn:
            Producer(conn).publish(
                bomb,
                exchange="celery",
                routing_key="celery",
                headers={**headers, "compression": "application/x-gzip"},
                content_type="application/json",
                content_encoding="utf-8",
                declare=[],
            )
        with pytest.raises(Exception) as refused:
            caller.AsyncResult(task_id).get(timeout=30)
        assert type(refused.value).__name__ == "CampaignError"
        assert str(refused.value).startswith(
            f"body: {len(bomb)} bytes compressed, once decompressed, over the "
            f"{celery_app.MAX_TASK_BODY_BYTES} bytes (64 MiB) a task's body may be: "
            "create the campaign as a draft"
        )
        # Still taking tasks, compressed ones too.
        after = caller.send_task(TASK, args=[{**CAMPAIGN, "id": "j23-after"}], compression="bzip2")
        assert after.get(timeout=30) == "j23-after"
        assert redis_client.exists("dispatch:campaign:j23-gz", "dispatch:campaign:j23-after") == 2
    finally:
        caller.close()
