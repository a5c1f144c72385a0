"""Redis going away while a block hands out batch tasks (a restart, a failover): kombu's
batch publish raised its own ``BatchPublishError`` ("delivery is uncertain"), which no
caller took for Redis being away: the API answered 500 instead of 503, and the
``dispatch.enqueue_campaign`` task failed for good instead of running again (review
C27). It is now raised as the Redis error that caused it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from dispatch.redis_server import RedisServer

# In a process of its own: the Celery app of the tests' processes is bound to their Redis.
SCRIPT = textwrap.dedent(
    """
    import redis
    from dispatch import batch_enqueue, store

    with batch_enqueue.batch_enqueuer() as send:
        send("c", 0)  # (the producer's connection is open)
        redis.Redis.from_url(store.ensure_redis_url()).shutdown(nosave=True)
        try:
            send("c", 1)
        except Exception as exc:
            print(type(exc).__module__, type(exc).__name__)
            raise
    """
)


def test_a_batch_publish_that_meets_redis_gone_raises_the_redis_error() -> None:
    server = RedisServer().start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**os.environ, "DISPATCH_REDIS_URL": server.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr
    assert done.stdout.split() == ["redis.exceptions", "ConnectionError"], done.stdout
    assert "publishing a batch task" in done.stderr, done.stderr
