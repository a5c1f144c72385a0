"""`dispatch health` names a host whose clock is off Redis's: leases, pace, quotas (since
review A24), slots and housekeeping read Redis's clock, but a batch's expires_at and retry
times read the host's (reviews R10, S10). Real Redis; the host's clock is shifted in the
health check's module only."""

from __future__ import annotations

import time

import pytest
import redis

from dispatch import worker_health
from dispatch.cli import main


class _Shifted:
    """The ``time`` module with ``time()`` moved by ``offset`` seconds."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.mark.parametrize(("offset", "side"), [(120.0, "ahead of"), (-45.0, "behind")])
def test_a_host_clock_off_redis_is_named(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    offset: float,
    side: str,
) -> None:
    assert worker_health.check(redis_client, 30.0).warnings == ()  # in step: nothing said
    monkeypatch.setattr(worker_health, "time", _Shifted(offset))
    assert abs(worker_health.clock_skew(redis_client) - offset) < 1.0
    (warning,) = worker_health.check(redis_client, 30.0).warnings
    assert f"{abs(offset):.1f} s {side} Redis's" in warning and "NTP" in warning

    assert main(["health"]) == 1  # (no worker here: unhealthy for that, not the clock)
    err = capsys.readouterr().err
    assert f"warning: this host's clock is {abs(offset):.1f} s {side} Redis's" in err
