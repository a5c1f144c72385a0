"""Beat's tasks expire unrun: while no worker runs, beat still sends about 22 a minute,
and a weekend's worth (about 60,000, 1.5 KB each) stayed in Redis, to be run one by one
ahead of the campaigns enqueued when the workers came back (review V5's report).

Each schedule entry is sent by Celery's own beat scheduler to a real Redis broker, and
the message on the queue is read back."""

from __future__ import annotations

import time
from datetime import datetime

import orjson
import redis
from celery.beat import Scheduler

from dispatch.celery_app import BEAT_TASK_EXPIRES, app
from dispatch.redis_server import RedisServer


def test_every_beat_task_is_sent_with_an_expiry(own_redis: RedisServer) -> None:
    scheduler = Scheduler(app, lazy=True)
    scheduler.setup_schedule()  # (entries from app.conf.beat_schedule)
    sent_at = time.time()
    with app.connection_for_write(own_redis.url) as connection:
        producer = app.amqp.Producer(connection)
        for entry in scheduler.schedule.values():
            scheduler.apply_async(entry, producer=producer)
    r = redis.Redis.from_url(own_redis.url)
    queued = [
        orjson.loads(raw) for key in r.scan_iter(match="default*") if r.type(key) == b"list"
        for raw in r.lrange(key, 0, -1)
    ]  # fmt: skip
    expiries = {m["headers"]["task"]: m["headers"]["expires"] for m in queued}
    assert set(expiries) == {e["task"] for e in app.conf.beat_schedule.values()}
    for task, expires in expiries.items():
        assert expires is not None, task
        at = datetime.fromisoformat(expires)
        assert at.tzinfo is not None, expires
        assert abs(at.timestamp() - (sent_at + BEAT_TASK_EXPIRES)) < 60, (task, expires)
