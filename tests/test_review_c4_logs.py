"""No log line carries a campaign's body, its recipients or their vars: Celery's own
lines about a task pass the task's arguments along (``extra={"data": ...}``, and the
pool's line per task in its text), and ``dispatch.enqueue_campaign``'s argument is the
whole campaign."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from dispatch import campaigns, tasks
from dispatch.logs import configure
from dispatch.redis_server import RedisServer

BODY = {
    "id": "c-logs",
    "provider": "local",
    "subject": "Hello {{ name }}",
    "html": "<p>BODY-TEXT {{ code }}</p>",
    "recipients": [{"email": "alice@example.com", "vars": {"name": "VAR-VALUE"}}],
}
PRIVATE = ("BODY-TEXT", "alice@example.com", "VAR-VALUE")


@pytest.fixture
def json_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("celery.app.trace", "celery.beat", "celery.worker.strategy", "celery.pool"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def test_a_failed_enqueue_campaign_task_logs_no_body_or_recipient(
    redis_server: RedisServer,
    json_logs: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis failing under the task (an outage) makes Celery log it at ERROR, through
    its own trace code, as a worker does."""

    def fails(body: Any, task_id: str | None) -> str:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(campaigns, "create_from_task", fails)
    configure("INFO")
    result = tasks.enqueue_campaign.apply(args=(BODY,))
    assert result.state == "FAILURE"
    lines = _lines(capsys)
    failed = [e for e in lines if e["logger"] == "celery.app.trace" and e["level"] == "ERROR"]
    assert failed, lines
    entry = failed[0]
    assert "dispatch.enqueue_campaign" in entry["message"] and "connection lost" in entry["message"]
    assert entry["data"]["name"] == "dispatch.enqueue_campaign"  # the context stays
    assert "RuntimeError: connection lost" in entry["exception"]
    text = orjson.dumps(lines).decode()
    for private in PRIVATE:
        assert private not in text, (private, entry)


def test_at_debug_celerys_lines_per_task_carry_no_arguments(
    redis_server: RedisServer,
    json_logs: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(campaigns, "create_from_task", lambda body, task_id: "c-logs")
    configure("DEBUG")
    tasks.enqueue_campaign.apply(args=(BODY,))
    # What the pool writes for each task it runs (celery.concurrency.base, at DEBUG).
    logging.getLogger("celery.pool").debug(
        "TaskPool: Apply %s (args:%s kwargs:%s)", "fast_trace_task", (repr(BODY),), {}
    )
    lines = _lines(capsys)
    assert any("succeeded" in e["message"] for e in lines), lines  # shown at DEBUG
    text = orjson.dumps(lines).decode()
    for private in PRIVATE:
        assert private not in text, (private, lines)
