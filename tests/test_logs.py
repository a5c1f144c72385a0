"""Logs are JSON lines carrying their context fields."""

from __future__ import annotations

import logging

import orjson
import pytest

from dispatch.logs import JsonFormatter


def test_context_fields_land_in_the_json_line() -> None:
    record = logging.LogRecord(
        "dispatch.tasks", logging.INFO, __file__, 1, "batch %s done", (3,), None
    )
    record.campaign_id = "c-1"
    record.counts = {"sent": 1000}
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "batch 3 done"
    assert entry["level"] == "INFO" and entry["logger"] == "dispatch.tasks"
    assert entry["campaign_id"] == "c-1" and entry["counts"] == {"sent": 1000}
    assert "args" not in entry and "msg" not in entry  # only context, not LogRecord internals


def test_exceptions_are_kept_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


def test_celerys_line_per_task_is_debug_and_its_errors_always_show(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Beat's housekeeping runs every few seconds: at INFO, Celery's lines per task and
    per schedule buried dispatch's own ("batch done" with its counts)."""
    from dispatch.logs import configure

    root = logging.getLogger()
    handlers, level_before = root.handlers[:], root.level
    try:
        for level, shown in (("INFO", False), ("debug", True)):
            configure(level)
            logging.getLogger("celery.app.trace").info("Task dispatch.housekeeping succeeded")
            logging.getLogger("celery.beat").info("Scheduler: Sending due task housekeeping")
            logging.getLogger("celery.app.trace").error("Task dispatch.send_batch raised")
            logging.getLogger("dispatch.tasks").info("batch done")
            lines = [orjson.loads(line)["message"] for line in capsys.readouterr().err.splitlines()]
            assert ("Task dispatch.send_batch raised" in lines) and ("batch done" in lines)
            chatter = [m for m in lines if "succeeded" in m or "Sending due task" in m]
            assert len(chatter) == (2 if shown else 0), (level, lines)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level_before)
        for name in ("celery.app.trace", "celery.beat", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.NOTSET)
