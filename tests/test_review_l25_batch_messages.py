"""Batches handed out in a block publish the message a lone ``apply_async`` does (review
L25): the queue is declared by the block's first publish only, yet workers (of this
version or the last) see the same task message, and the task-sent event the same
arguments. (Celery's ``argsrepr`` option, tried to spare its saferepr, also writes itself
into the message's properties: this test refused it.)"""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest
import redis
from kombu.transport import redis as kombu_redis

from dispatch import batch_enqueue, store

CAMPAIGN = "l25-same-message"
# (and reply_to: Celery's id of the publishing thread, the background enqueuer's own)
_PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to"}


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in _PER_MESSAGE}
    return value


def test_a_block_publishes_what_apply_async_does(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch.tasks import send_batch

    tasks: list[tuple[str, dict[str, Any]]] = []
    events: list[dict[str, Any]] = []
    put, put_fanout = kombu_redis.Channel._put, kombu_redis.Channel._put_fanout  # type: ignore[attr-defined]

    def kept_put(self: Any, queue: str, message: dict[str, Any], **kwargs: Any) -> Any:
        tasks.append((queue, copy.deepcopy(message)))
        return put(self, queue, message, **kwargs)

    def kept_fanout(self: Any, exchange: str, message: dict[str, Any], *a: Any, **k: Any) -> Any:
        events.append(copy.deepcopy(message))
        return put_fanout(self, exchange, message, *a, **k)

    monkeypatch.setattr(kombu_redis.Channel, "_put", kept_put)
    monkeypatch.setattr(kombu_redis.Channel, "_put_fanout", kept_fanout)
    for batch in (0, 5, 300):
        send_batch.apply_async(
            (CAMPAIGN, batch), queue=store.SENDS_QUEUE, priority=store.batch_priority(batch)
        )
    with batch_enqueue.batch_enqueuer() as send:
        for batch in (0, 5, 300):
            send(CAMPAIGN, batch)
    with batch_enqueue.background_enqueuer() as send:
        for batch in (0, 5, 300):
            send(CAMPAIGN, batch)

    assert len(tasks) == 9
    alone = [(queue, _without_ids(message)) for queue, message in tasks[:3]]
    assert [(q, _without_ids(m)) for q, m in tasks[3:6]] == alone
    assert [(q, _without_ids(m)) for q, m in tasks[6:]] == alone
    headers = tasks[4][1]["headers"]
    assert (headers["task"], headers["argsrepr"], headers["kwargsrepr"]) == (
        "dispatch.send_batch",
        repr((CAMPAIGN, 5)),
        "{}",
    )
    assert tasks[4][1]["properties"]["priority"] == store.batch_priority(5)

    sent = [orjson.loads(base64.b64decode(m["body"])) for m in events]
    assert len(sent) == 9
    fields = [(e.get("type"), e.get("name"), e.get("args"), e.get("kwargs")) for e in sent]
    assert fields[3:6] == fields[:3] and fields[6:] == fields[:3]
