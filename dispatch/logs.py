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
from collections.abc import Callable
from typing import Any

import orjson

# Attributes every LogRecord has: anything else was passed with extra= and is context.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


# Paths whose last part is a credential: a callback token, or a recipient's unsubscribe
# token (it unsubscribes; one written before tokens were sealed shows the address too).
# uvicorn's access log writes them at INFO. A provider's answer quoting the request it
# refused (a message's detail, logged) quotes the unsubscribe URL as the request carried
# it: percent-encoded in a GET's query (``u=https%3A%2F%2Fhost%2Fu%2F<token>``), its "/"
# JSON-escaped by PHP's json_encode (``\/u\/<token>``; 3 or 7 backslashes for JSON in
# JSON: bounded, as a run of them without a "/" would be searched again from each one);
# a custom preference center's URL carries it as ``token=``.
_SLASH = r"(?:\\{0,7}/|%2[Ff])"
_SECRET_PATHS = re.compile(
    rf"({_SLASH}(?:v1{_SLASH}callbacks{_SLASH}[^/\s?\"\\%&]+{_SLASH}|u{_SLASH}|"
    rf"preferences{_SLASH}|v1{_SLASH}unsubscribe-tokens{_SLASH})"
    r"|(?<![A-Za-z])token(?:=|%3[Dd]))[^/\s?\"\\%&#]+"
)


def redact(text: str) -> str:
    """``text`` with the tokens of callback, unsubscribe and preference URLs masked, also
    where a quoted URL is percent-encoded or JSON-escaped."""
    return _SECRET_PATHS.sub(r"\1***", text)


class RedactPaths(logging.Filter):
    """Masks secret path parts in a record's arguments (uvicorn's access log passes the
    path as an argument) and message."""

    def filter(self, record: logging.LogRecord) -> bool:
        _rewrite_in_place(record, redact)
        return True


def _rewrite_in_place(record: logging.LogRecord, rewrite: Callable[[str], str]) -> None:
    """``rewrite`` a record's message and its text arguments, left for its formatter."""
    if isinstance(record.msg, str):
        record.msg = rewrite(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(rewrite(a) if isinstance(a, str) else a for a in record.args)


# What an address looks like in a log line: as written, and percent-encoded in a URL
# (uvicorn's access log: ``/v1/suppressions/jane%40example.com``). ``|`` ends it (a meta's
# first field is the address), as quotes and ``=`` (``email=jane@...``) do. A local part
# has at most 64 characters (RFC 5321 §4.5.3.1.1): unbounded, the search tried at each
# character of a long run without an address (a percent-encoded query in a request's
# path) was quadratic, seconds of the API's event loop for an access-log line of 16 KB.
_ADDRESS = re.compile(r"([\w.+!#$&*^~%-]{1,64})(@|%40)([\w-]+(?:\.[\w-]+)+)")


def mask_addresses(text: str) -> str:
    """``text`` with each email address shown as its local part's first character and
    its domain: ``j***@example.com``."""
    if "@" not in text and "%40" not in text:  # most lines: no search at all
        return text
    return _ADDRESS.sub(lambda m: f"{m[1][0]}***{m[2]}{m[3]}", text)


def _masked_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_addresses(value)
    if isinstance(value, dict):
        return {k: _masked_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked_value(v) for v in value]
    return value


class MaskAddresses(logging.Filter):
    """Recipients' addresses out of the logs (``DISPATCH_LOG_ADDRESSES=masked``): in a
    record's message and arguments, its context fields (a meta, ``email``) and its
    exception's text. The message log and the API, which exist to track messages, keep
    them whole.

    ``keep_args``: mask each argument, for a formatter that reads them (uvicorn's access
    log); else the message is formatted here, since an argument may be an exception or
    an object whose text quotes an address.
    """

    def __init__(self, keep_args: bool = False) -> None:
        super().__init__()
        self.keep_args = keep_args

    def filter(self, record: logging.LogRecord) -> bool:
        if self.keep_args:
            _rewrite_in_place(record, mask_addresses)
        else:
            try:
                record.msg, record.args = mask_addresses(record.getMessage()), None
            except Exception:  # (arguments that do not fit: the handler reports it)
                return True
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _masked_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_addresses(record.exc_text)
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
        if record.exc_text:  # (as a filter left it: see MaskAddresses)
            entry["exception"] = record.exc_text
        elif record.exc_info:
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


def configure(level: int | str, addresses: str = "full") -> None:
    """Send every log record to standard error as JSON lines; ``addresses`` ``masked``
    (``DISPATCH_LOG_ADDRESSES``) shows recipients' addresses masked (:class:`MaskAddresses`)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactPaths())
    if addresses == "masked":
        handler.addFilter(MaskAddresses())
    if isinstance(level, str):
        level = level.upper()  # logging knows "DEBUG", not "debug"
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    for name in CHATTY_LOGGERS:
        quiet = isinstance(numeric, int) and numeric > logging.DEBUG
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    # uvicorn configures its loggers after this (its own handlers, no propagation); a
    # filter on the logger itself survives that configuration. Its error log writes an
    # unhandled exception's traceback ("Exception in ASGI application"), which may quote
    # an address as any exception may.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactPaths) for f in access.filters):
        access.addFilter(RedactPaths())
    for logger, keep_args in ((access, True), (logging.getLogger("uvicorn.error"), False)):
        for old in [f for f in logger.filters if isinstance(f, MaskAddresses)]:
            logger.removeFilter(old)
        if addresses == "masked":
            logger.addFilter(MaskAddresses(keep_args=keep_args))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
