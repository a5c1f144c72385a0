"""Review AA23: since 8e61c85 the embedded Redis is told by its folder's whole name as
``tempfile.mkdtemp`` makes it (``dispatch-redis-`` and 8 of a-z, 0-9, ``_``), but an
operator's folder of such a name is as natural (``/var/lib/dispatch-redis-replica1``,
``dispatch-redis-primary1``): such a Redis without an append-only file was never warned
about. The embedded server also saves no snapshot (``--save ""``), a packaged Redis does:
only both together are the embedded one's."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from dispatch import store
from dispatch.redis_server import EMBEDDED_DIR_NAME, RedisServer
from tests.test_redis_durability import packaged_redis


@pytest.mark.parametrize("name", ["dispatch-redis-replica1", "dispatch-redis-primary1"])
def test_an_operators_redis_in_a_folder_of_a_temporary_name_is_warned_about(
    tmp_path: Path, name: str
) -> None:
    assert EMBEDDED_DIR_NAME.fullmatch(name)  # (what made it pass for the embedded one)
    folder = tmp_path / name
    folder.mkdir()
    with packaged_redis(folder) as client:
        problem = store.durability_problem(client)
    assert problem is not None and "appendonly yes" in problem


def test_the_embedded_redis_still_is_not() -> None:
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert EMBEDDED_DIR_NAME.fullmatch(Path(client.config_get("dir")["dir"]).name)
        assert store.durability_problem(client) is None
        client.close()
    finally:
        server.stop()
