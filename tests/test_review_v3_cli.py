"""Review V3: the ``dispatch`` command line on a platform engineer's first days."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace

import pytest
import redis

from dispatch import campaigns, lifecycle
from dispatch.cli import main
from dispatch.models import campaign_request
from dispatch.progress import ProgressBar
from dispatch.provider_store import save_provider
from dispatch.redis_server import RedisServer
from tests.test_oncall import lost_redis  # noqa: F401 (a fixture: a Redis to stop)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("lost_redis")  # the process on own_redis
def test_follow_waits_out_a_redis_restart(
    own_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``status --follow`` ended with ``error: Redis at ...`` (exit 1) when Redis went
    away for a moment while the campaign went on: a restart or failover ended the watch."""
    import dispatch.cli

    save_provider(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
         "security": "none", "from_address": "a@acme.example"}
    )  # fmt: skip
    request = campaign_request(
        {"id": "c-restart", "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
         "recipients": [{"email": f"r{i}@example.com"} for i in range(3)]}
    )  # fmt: skip
    campaigns.create_campaign(request)  # no worker: it stays running
    naps = 0

    def nap(seconds: float) -> None:
        nonlocal naps
        naps += 1
        if naps == 1:
            own_redis.halt()  # two reads find it gone
        elif naps == 3:
            own_redis.start()  # the same folder: its data is back
            lifecycle.cancel("c-restart")

    # (not time.sleep itself: redis-py and RedisServer.start sleep too)
    monkeypatch.setattr(dispatch.cli, "time", SimpleNamespace(sleep=nap, monotonic=time.monotonic))
    code, out, err = run(capsys, "status", "c-restart", "--follow")
    assert code == 0, err
    assert json.loads(out)["status"] == "cancelled"
    assert "Redis unreachable, trying again" in err, err


def test_follow_gives_up_on_a_redis_gone_for_good(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dispatch.cli

    reads = iter([{"status": "running", "total": 2, "queued": 2, "sent": 0, "failed": 0}])

    def read(campaign_id: str) -> dict[str, object]:
        for summary in reads:
            return summary
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(campaigns, "campaign_summary", read)
    monkeypatch.setattr(dispatch.cli, "FOLLOW_OUTAGE_SECONDS", 0.0)
    fake_time = SimpleNamespace(sleep=lambda seconds: None, monotonic=time.monotonic)
    monkeypatch.setattr(dispatch.cli, "time", fake_time)
    code, out, err = run(capsys, "status", "c", "--follow")
    assert (code, out) == (1, "")
    assert "unreachable for 0 s while following campaign 'c'" in err, err


def test_a_progress_bar_without_a_terminal_ends_on_its_last_state() -> None:
    """Lines are written every 2 s without a terminal: a campaign that paused part-way
    less than that after the last line ended on an older count than the real one."""
    stream = io.StringIO()
    bar = ProgressBar("c", stream=stream)
    bar.update(1, 10, "sent 1")
    bar.update(4, 10, "sent 4")  # at once: not written yet
    bar.close()
    lines = stream.getvalue().splitlines()
    assert " 4/10 " in lines[-1] and lines[-1].endswith("sent 4"), lines
    assert len(lines) == 2
