"""Review M14: beat's passes end on an error of Redis as a whole (dispatch.beat_pass,
review H14), but two such errors, met for real, passed for one campaign's: every
campaign of the pass was skipped in turn, each logged with its traceback, and the
scheduled release tried to pause each campaign it could not start.

- MASTERDOWN (a replica cut from its primary, ``replica-serve-stale-data no``): redis-py
  raises it as a MasterDownError whose text has lost the code the check looked for.
- NOREPLICAS (writes refused while fewer replicas than ``min-replicas-to-write`` keep
  up): redis-py has no class for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from dispatch import lifecycle, reputation, store
from dispatch.redis_server import RedisServer, _free_port
from tests.helpers import campaign_body, create_held, smtp_provider


@pytest.fixture
def own_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


def _expiring(r: redis.Redis, names: tuple[str, ...]) -> list[str]:
    smtp_provider(r, 2525)
    expires_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return [create_held(r, campaign_body(name, 2, expires_at=expires_at))[0] for name in names]


def test_the_expiry_ends_when_redis_refuses_writes_for_want_of_replicas(
    own_client: redis.Redis,
) -> None:
    ids = _expiring(own_client, ("norepl-1", "norepl-2"))
    own_client.config_set("min-replicas-to-write", 1)  # (and none is connected)
    try:
        with pytest.raises(redis.ResponseError, match=r"^NOREPLICAS "):
            lifecycle.expire_due(
                now=time.time() + 2 * 3600, client=own_client, enqueue=lambda c, b: None
            )
    finally:
        own_client.config_set("min-replicas-to-write", 0)
    for campaign_id in ids:  # still due: the next tick expires them
        assert own_client.zscore(store.EXPIRING_ZSET, campaign_id) is not None


def test_the_reputation_guard_ends_on_a_replica_cut_from_its_primary(
    own_client: redis.Redis,
) -> None:
    ids = _expiring(own_client, ("masterdown-1", "masterdown-2"))
    own_client.config_set("replica-serve-stale-data", "no")
    own_client.replicaof("127.0.0.1", _free_port())  # (nothing listens there)
    try:
        with pytest.raises(redis.exceptions.MasterDownError):
            reputation.check(own_client, ids)
    finally:
        own_client.replicaof("NO", "ONE")
