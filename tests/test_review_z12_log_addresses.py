"""Review Z12: ``DISPATCH_LOG_ADDRESSES=masked`` masks an address in a long log line with
linear work (the local part's bound, tested as a result, not as a time). The search tried
a local part at each character of a run of its characters (``\\w``, ``%``, ``.``...)
with no end: quadratic, 5 s for an access-log line of 16 KB (a request's percent-encoded
path, which anyone can send), run in the API's event loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = """
import logging, sys
from dispatch.logs import configure
configure("INFO", addresses="masked")
path = "/v1/suppressions/" + "%41" * 330_000 + "?to=jane.doe%40example.com&cc=a.b@example.org"
logging.getLogger("uvicorn.access").info(
    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 404
)
logging.getLogger("dispatch.test").warning("refused: %s", "x" * 500_000 + "@")
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python process of its own (its logging set up as a service's)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DISPATCH_SECRET_KEY": "k"},
    )


def test_a_long_access_log_line_is_masked_with_linear_work() -> None:
    child = _run(_CHILD)
    assert child.returncode == 0, f"child ended with {child.returncode}: {child.stderr[-500:]}"
    access, refused = (json.loads(line) for line in child.stderr.splitlines())
    assert access["message"].endswith('?to=j***%40example.com&cc=a***@example.org HTTP/1.1" 404')
    assert refused["message"] == "refused: " + "x" * 500_000 + "@"


def test_a_local_part_is_searched_no_longer_than_rfc_5321_allows() -> None:
    """The bound that keeps the search linear: a run of local-part characters before an
    ``@`` is read as an address of its last 64 characters at most (RFC 5321
    §4.5.3.1.1), not tried again from each of its characters."""
    from dispatch.logs import mask_addresses

    assert mask_addresses("x" * 100 + "@example.com") == "x" * 36 + "x***@example.com"
    assert mask_addresses("y" * 64 + "@example.com") == "y***@example.com"


def test_addresses_as_before() -> None:
    from dispatch.logs import mask_addresses

    assert mask_addresses("jane.doe@example.com") == "j***@example.com"
    assert (
        mask_addresses("/v1/suppressions/jane%40example.com")
        == "/v1/suppressions/j***%40example.com"
    )
    assert mask_addresses("meta jane@example.com|acct|c1") == "meta j***@example.com|acct|c1"
    assert mask_addresses("no address, 100% sure") == "no address, 100% sure"


_UVICORN_CHILD = """
import logging, logging.config
from uvicorn.config import LOGGING_CONFIG
from dispatch.logs import configure
configure("INFO", addresses="masked")
logging.config.dictConfig(LOGGING_CONFIG)  # as uvicorn.run does, after dispatch's
try:
    raise KeyError("jane.doe@example.com")
except KeyError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
logging.getLogger("uvicorn.error").info("Finished server process for %s", "ann@example.com")
"""


def test_the_apis_unhandled_exception_is_masked_too() -> None:
    """``dispatch api`` runs uvicorn with its own logging: an unhandled exception's
    traceback is written by ``uvicorn.error`` through uvicorn's handler, never the JSON
    handler's filter. The README says exceptions are masked; that one was not."""
    child = _run(_UVICORN_CHILD)
    assert child.returncode == 0, child.stderr[-500:]
    assert "Exception in ASGI application" in child.stderr
    assert "KeyError: 'j***@example.com'" in child.stderr, child.stderr
    assert "Finished server process for a***@example.com" in child.stderr, child.stderr
    assert "jane.doe@" not in child.stderr and "ann@" not in child.stderr
