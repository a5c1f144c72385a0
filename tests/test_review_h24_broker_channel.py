"""A task published on a broker channel that a lost Redis connection closed (review H24).

kombu closes a connection's channels when Redis breaks it, but a producer kept in a
worker process's pool keeps its closed channel, whose transport is gone: its next
publish read the URL of that transport and raised ``AttributeError``, no connection
error, so kombu did not reconnect and retry. Seen in a real worker after Redis's clients
were killed: ``dispatch.enqueue_campaign``'s retry (and so a batch's) was dropped,
``reject requeue=False: 'NoneType' object has no attribute 'client'``. Raised as the
connection error it is, the publish reconnects and goes out."""

from __future__ import annotations

import redis
from kombu import Connection, Producer

import dispatch.celery_app  # noqa: F401  (its guard on kombu's Redis channel)
from dispatch.redis_server import RedisServer

QUEUE = "h24-closed-channel"


def test_a_producer_whose_channel_was_closed_publishes_again(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with Connection(redis_server.url) as connection:
        producer = Producer(connection)
        producer.publish({"n": 1}, routing_key=QUEUE, retry=True)
        producer.channel.close()  # what a lost connection leaves a kept producer
        producer.publish({"n": 2}, routing_key=QUEUE, retry=True)
    try:
        assert redis_client.llen(QUEUE) == 2
    finally:
        redis_client.delete(QUEUE)
