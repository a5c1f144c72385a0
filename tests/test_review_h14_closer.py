"""Review H14: the worker process's thread that closes idle provider sessions between
tasks (dispatch.runtime) ended at the first close that raised, its traceback on stderr
only: from then on no idle session of the process was closed by time, each kept its
connection open after its parked slot expired (another worker could take the slot: past
max_connections)."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from dispatch import runtime
from dispatch.session_pool import SessionPool
from tests.smtp_server import SmtpTestServer
from tests.test_session_pool import _one_task, _slots

_BUG = "a bug in closing idle sessions"


class _FailsOnce(SessionPool):
    """A pool whose first close of idle sessions raises."""

    def __init__(self, idle_seconds: float) -> None:
        super().__init__(idle_seconds)
        self.failed = 0

    async def close_idle(self) -> None:
        if not self.failed:
            self.failed += 1
            raise RuntimeError(_BUG)
        await super().close_idle()


def test_the_closer_goes_on_after_a_close_that_failed(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(runtime, "CLOSE_RETRY_SECONDS", 0.3, raising=False)
    pool = _FailsOnce(0.5)
    _one_task(redis_client, smtp, monkeypatch, pool)  # one session kept, idle from now
    deadline = time.monotonic() + 4
    while (smtp.handler.active or _slots(redis_client, "local")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.failed == 1
    assert (smtp.handler.active, _slots(redis_client, "local"), len(pool)) == (0, [], 0)
    assert any(
        rec.name == "dispatch.runtime"
        and rec.levelno == logging.ERROR
        and rec.exc_info is not None
        and _BUG in str(rec.exc_info[1])
        for rec in caplog.records
    )
