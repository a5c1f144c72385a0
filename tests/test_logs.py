"""Logs are JSON lines carrying their context fields."""

from __future__ import annotations

import logging

import orjson

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
