"""Review F7: the Generic HTTP provider against its seed page (002, Generic HTTP)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from providers.base import OutcomeStatus
from providers.config import HttpConfig
from providers.errors import ErrorClass
from providers.http import RequestPlan
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.http_sink import HttpSink
from tests.test_http_provider import message

BODY = {"to": "$$To", "s": "$$Subject", "fn": "$$FromName", "fa": "$$FromAddress", "h": "$$HTML"}
WIDE = 2**70  # JSON has it; orjson (and so dispatch's text of a value) does not
LONE_SURROGATE = "a\ud800b"  # JSON's "\ud800": no UTF-8 for it


@pytest.mark.parametrize("place", ["headers", "query"])
@pytest.mark.parametrize("value", [WIDE, [LONE_SURROGATE], LONE_SURROGATE])
def test_a_header_or_query_value_that_cannot_be_sent_fails_its_message_alone(
    place: str, value: Any
) -> None:
    """A dynamic header or query value with no text (an integer beyond 64 bits, a lone
    surrogate) fails its own message as ``Invalid message``, as the same value in the
    body does; it raised out of the batch (a test email answered 500)."""
    config = HttpConfig(
        nickname="esp", endpoint="http://127.0.0.1/send", body=BODY, **{place: {"X-V": "$$v"}}
    )
    requests, failed = RequestPlan(config).render(
        [message(0, user_vars={"v": value}), message(1, user_vars={"v": "ok"})]
    )
    assert [r.seqs for r in requests] == [(1,)]
    ((bad),) = failed
    assert (bad.seq, bad.status, bad.error_class) == (
        0,
        OutcomeStatus.FAILED,
        ErrorClass.INVALID_MESSAGE,
    )
    assert "X-V" in bad.detail


def test_a_batch_header_whose_campaign_value_cannot_be_sent_fails_the_batch_messages() -> None:
    """In a batch the headers are rendered once per request: their messages fail, as
    ``Invalid message``, and nothing is sent."""
    config = HttpConfig(
        nickname="esp",
        endpoint="http://127.0.0.1/send",
        batch=True,
        headers={"X-Campaign": "$$tag"},
        body={"msgs": [BODY]},
    )
    built = [message(i, campaign_vars={"tag": WIDE}) for i in range(2)]
    requests, failed = RequestPlan(config).render(built)
    assert requests == []
    assert [(o.seq, o.error_class) for o in failed] == [
        (0, ErrorClass.INVALID_MESSAGE),
        (1, ErrorClass.INVALID_MESSAGE),
    ]


@pytest.mark.parametrize("place", ["headers", "query"])
@pytest.mark.parametrize("raw", ["1180591620717411303424", '"a\\ud800b"'])
def test_a_test_email_whose_vars_cannot_fill_a_header_or_query_is_answered(
    api_server: ApiServer, redis_client: redis.Redis, place: str, raw: str
) -> None:
    """``POST /v1/providers/{nickname}/test`` with such a var answered 500 (or dropped
    the connection); the body's placeholders answered ``Invalid message``, and now so
    do the headers' and the query's."""
    with HttpSink() as sink, api_client(api_server) as api:
        saved = api.put(
            "/v1/providers/esp",
            json={
                "kind": "http",
                "endpoint": f"{sink.url}/send",
                "body": BODY,
                "from_address": "f@acme.example",
                place: {"X-V": "$$v"},
            },
        )
        assert saved.status_code == 201, saved.text
        verdict = refused_test_email(api, sink, raw)
    assert "X-V" in verdict["detail"]


def refused_test_email(api: httpx.Client, sink: HttpSink, raw: str) -> dict[str, Any]:
    """The answer of esp's test email with ``vars`` ``{"v": <raw JSON>}``, which must
    fail as ``Invalid message`` with nothing sent."""
    answer = api.post(
        "/v1/providers/esp/test",
        content=f'{{"to": "t@example.com", "vars": {{"v": {raw}}}}}',
        headers={"Content-Type": "application/json"},
    )
    assert sink.requests == []
    assert answer.status_code == 200, answer.text
    verdict: dict[str, Any] = answer.json()
    assert (verdict["ok"], verdict["error"]) == (False, "Invalid message")
    return verdict
