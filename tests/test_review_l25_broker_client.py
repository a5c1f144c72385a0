"""A broker channel's Redis client, built once per connection pool (review L25).

kombu's Redis transport built a new ``redis.Redis`` for each message a consumer took
unacknowledged and for each acknowledgement (about 100-150 us each with redis-py 8.1):
a worker's main process spent it twice a task. The channel now keeps one while its pool
lasts; acknowledgements still reach Redis, and a closed channel still raises the
connection error (review H24's guard) instead of using the client it kept."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

import dispatch.celery_app  # noqa: F401  (its patches of kombu's Redis channel)
from dispatch.redis_server import RedisServer

QUEUE = "l25-one-client"


def test_messages_taken_and_acknowledged_build_no_client_each(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[bool] = []
    create = kombu_redis.Channel._create_client  # type: ignore[attr-defined]

    def counted(self: kombu_redis.Channel, asynchronous: bool = False) -> Any:
        built.append(asynchronous)
        return create(self, asynchronous=asynchronous)

    monkeypatch.setattr(kombu_redis.Channel, "_create_client", counted)
    # Keys of its own: a session worker on this Redis keeps its unacknowledged tasks in
    # kombu's default "unacked" hash.
    options = {f"unacked{part}_key": f"{QUEUE}-unacked{part}" for part in ("", "_index", "_mutex")}
    with Connection(redis_server.url, transport_options=options) as connection:
        queue = connection.SimpleQueue(QUEUE)
        try:
            for n in range(5):
                queue.put({"n": n})
            unacked = queue.channel.qos.unacked_key
            for n in range(5):
                message = queue.get(timeout=5)
                assert message.payload == {"n": n}
                assert redis_client.hlen(unacked) == 1  # recorded as unacknowledged
                message.ack()
                assert redis_client.hlen(unacked) == 0  # and the ack reached Redis
        finally:
            queue.close()
            redis_client.delete(QUEUE)
    # (before: 22, one or more for each put, each message taken and each ack)
    assert built.count(False) <= 2  # the producer's channel's and the consumer's


def test_a_closed_channel_raises_rather_than_use_its_kept_client(
    redis_server: RedisServer,
) -> None:
    with Connection(redis_server.url) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again
            assert first.ping()
        channel.close()
        with pytest.raises(redis.ConnectionError), channel.conn_or_acquire():
            pass
