"""Review V23: the embedded Redis (which keeps nothing by design) was told from an
operator's Redis without an append-only file by its folder's name starting with
``dispatch-redis-``: an operator's Redis in ``/var/lib/dispatch-redis-data`` (a name
as natural as the compose project's) was never warned about. Only the folder's whole
name as ``tempfile.mkdtemp`` makes it is the embedded server's now."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch import store
from tests.test_redis_durability import packaged_redis


@pytest.mark.parametrize("name", ["dispatch-redis-data", "dispatch-redis-primary-1"])
def test_an_operators_redis_in_a_folder_so_named_is_warned_about(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    with packaged_redis(folder) as client:
        problem = store.durability_problem(client)
    assert problem is not None and "appendonly yes" in problem
