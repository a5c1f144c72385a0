"""Structured logs: one JSON object per line, with the context fields a record carries.

Records name their context with ``extra=`` (``campaign_id``, ``batch``, ``meta``,
``provider``, ``counts``...); those fields land in the JSON next to the message. Secrets
and message bodies are never passed to the log (settings hold them as ``SecretStr``).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has: anything else was passed with extra= and is context.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


# Paths whose last part is a credential: a callback token, or a recipient's unsubscribe
# token (it unsubscribes; one written before tokens were sealed shows the address too).
# uvicorn's access log writes them at INFO.
_SECRET_PATHS = re.compile(
    r"(/v1/callbacks/[^/\s?\"]+/|/u/|/preferences/|/v1/unsubscribe-tokens/)[^/\s?\"]+"
)


def redact(text: str) -> str:
    """``text`` with the tokens of callback, unsubscribe and preference URLs masked."""
    return _SECRET_PATHS.sub(r"\1***", text)


class RedactPaths(logging.Filter):
    """Masks secret path parts in a record's arguments (uvicorn's access log passes the
    path as an argument) and message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


# Celery passes each line's context as ``extra={"data": ...}`` (the task received, succeeded
# or failed): with the task's arguments, which for ``dispatch.enqueue_campaign`` are a
# campaign's whole body (recipients, their vars, the html), and a traceback the record's
# exception already carries. The rest of it (task name, id, runtime) stays.
_CELERY_WITHHELD = frozenset({"args", "kwargs", "traceback"})


def _context(key: str, value: Any) -> Any:
    if key == "data" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _CELERY_WITHHELD}
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _context(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# Celery's line per task (received, succeeded) and beat's per schedule ("Sending due
# task"): with beat's housekeeping every few seconds they are hundreds of lines an hour,
# among which dispatch's own lines ("batch done" with its counts) are lost. Shown at DEBUG;
# their warnings and errors (a task that failed, a lost broker) always.
CHATTY_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")
# The pool's line per task ("TaskPool: Apply ...", DEBUG) writes the whole task message,
# its arguments with it (a campaign's body): never shown.
QUIET_LOGGERS = ("celery.pool",)


def configure(level: int | str) -> None:
    """Send every log record to standard error as JSON lines."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactPaths())
    if isinstance(level, str):
        level = level.upper()  # logging knows "DEBUG", not "debug"
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    for name in CHATTY_LOGGERS:
        quiet = isinstance(numeric, int) and numeric > logging.DEBUG
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    # uvicorn configures its access logger after this (its own handler, no propagation);
    # a filter on the logger itself survives that configuration.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactPaths) for f in access.filters):
        access.addFilter(RedactPaths())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
