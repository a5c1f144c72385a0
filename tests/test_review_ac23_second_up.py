"""A second ``dispatch up`` stopped while the first still runs (README "Using it").

The second one recorded its own embedded Redis over the first's; stopping it removed the
record, so the commands of the walk ("dispatch providers add" in another shell) no longer
found the first ``up``, still running, and saved to a throwaway Redis instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from dispatch.redis_server import (
    RedisServer,
    RunningUp,
    forget_running_up,
    running_up,
    state_file,
)


def _record(state: RunningUp) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(state.model_dump_json())


def test_stopping_a_second_up_gives_the_record_back_to_the_first(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    run_id = str(redis.Redis.from_url(redis_server.url).info("server")["run_id"])
    first = RunningUp(redis_url=redis_server.url, run_id=run_id, pid=os.getpid())
    second = first.model_copy(update={"pid": os.getppid(), "public_url": "http://x:8001"})
    _record(second)  # the second `up` recorded itself over the first

    forget_running_up(second, first)

    assert running_up() == first


def test_a_replaced_up_that_is_gone_is_not_recorded_again(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    run_id = str(redis.Redis.from_url(redis_server.url).info("server")["run_id"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    first = RunningUp(redis_url=redis_server.url, run_id=run_id, pid=int(dead.stdout))
    second = first.model_copy(update={"pid": os.getpid()})
    _record(second)

    forget_running_up(second, first)

    assert not state_file().exists()

    # A third `up` recorded since: neither the second nor the first takes its place.
    third = second.model_copy(update={"public_url": "http://x:8002"})
    _record(third)
    forget_running_up(second, second)
    assert running_up() == third
