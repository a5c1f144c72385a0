"""A provider's answer quoting the request it refused puts the recipient's unsubscribe URL
in the message's detail, which the worker logs: the token (it unsubscribes) stays out of
the log line however the answer spells the URL (review T24)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from dispatch.logs import configure, redact
from tests.helpers import campaign_body, http_provider, run_inline
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.test_review_c4_logs import json_logs  # noqa: F401  (the fixture: JSON lines on stderr)


def _quote_the_query(request: RecordedRequest) -> Reply:
    """A 400 page quoting the request line: the query as sent, percent-encoded."""
    return Reply(400, json.dumps({"error": "invalid request", "request": request.target}).encode())


def _quote_the_body_as_php_does(request: RecordedRequest) -> Reply:
    """A 400 quoting the JSON it got as PHP's json_encode writes it ("/" as "\\/")."""
    echo = json.dumps({"error": "invalid", "got": request.json()}).replace("/", "\\/")
    return Reply(400, echo.encode())


GET = {"method": "GET", "body": None, "batch": False,
       "query": {"to": "$$To", "subject": "$$Subject", "from": "$$FromAddress",
                 "fn": "$$FromName", "u": "$$UnsubscribeURL", "mid": "$$MessageID"}}  # fmt: skip
POST = {"batch": False,
        "body": {"u": "$$UnsubscribeURL", "to": "$$To", "subject": "$$Subject",
                 "html": "$$HTML", "from": "$$FromAddress", "fn": "$$FromName",
                 "mid": "$$MessageID"}}  # fmt: skip


@pytest.mark.usefixtures("json_logs")
@pytest.mark.parametrize(
    ("fields", "answer", "spelling"),
    [(GET, _quote_the_query, "%2Fu%2F"), (POST, _quote_the_body_as_php_does, "\\/u\\/")],
    ids=["percent-encoded", "json-escaped"],
)
def test_an_unsubscribe_token_quoted_by_a_refusing_provider_is_not_logged(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    fields: dict[str, Any],
    answer: Any,
    spelling: str,
) -> None:
    with HttpSink(answer=answer) as sink:
        http_provider(redis_client, sink.url, preference_center="system", **fields)
        configure("INFO")
        run_inline(redis_client, campaign_body("t24-token", 1, provider="esp"))
        sent = sink.requests[0]
    unsubscribe = dict(sent.query)["u"] if sent.method == "GET" else sent.json()["u"]
    token = unsubscribe.rsplit("/u/", 1)[1]
    assert len(token) > 40
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    failed = [e for e in lines if e["logger"] == "dispatch.messages"]
    assert failed and failed[0]["state"] == "failed", lines
    message = failed[0]["message"]
    assert "HTTP 400" in message and f"{spelling}***" in message, message
    assert failed[0]["meta"].startswith("user0@example.com|") and failed[0]["batch"] == 0
    assert token not in json.dumps(lines)


def test_tokens_are_masked_in_each_spelling_and_nothing_else_is() -> None:
    assert redact("GET /u/AbC-_1.x2 HTTP/1.1") == "GET /u/*** HTTP/1.1"
    assert redact("POST /v1/callbacks/esp/Tok_1?x=1") == "POST /v1/callbacks/esp/***?x=1"
    assert redact("%2Fv1%2Fcallbacks%2Fesp%2FTok%22") == "%2Fv1%2Fcallbacks%2Fesp%2F***%22"
    assert redact('"http:\\\\\\/\\\\\\/h\\\\\\/preferences\\\\\\/Tok\\\\\\""') == (
        '"http:\\\\\\/\\\\\\/h\\\\\\/preferences\\\\\\/***\\\\\\""'
    )  # JSON in JSON, PHP-escaped
    # A custom preference center's link carries it as a query parameter.
    assert redact("https://c.example/p?lang=en&token=AbC-_9 x") == (
        "https://c.example/p?lang=en&token=*** x"
    )
    assert redact("p%3Flang%3Den%26token%3DAbC-_9%26") == "p%3Flang%3Den%26token%3D***%26"
    for kept in ("/menu/x", "csrftoken=abc", "550 5.1.1 no such user", "u=a%2Fb"):
        assert redact(kept) == kept
