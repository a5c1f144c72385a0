"""The Generic HTTP provider against a real recording HTTP server on 127.0.0.1.

Covers configuration rules (DESIGN §4), campaign-time placeholder checks, the requests
actually received (bodies, batches, query strings, headers, auth), outcomes for each kind
of answer or failure, and the private-address guard.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pydantic
import pytest

from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import HttpConfig, parse_provider_config, public_view
from providers.errors import AuthenticationError, ConfigurationError, ErrorClass
from providers.http import HttpTransport, parse_retry_after
from providers.http_config import (
    check_placeholders,
    find_message_array,
    placeholder_usage,
    required_recipient_vars,
)
from providers.netguard import (
    GuardedTransport,
    PrivateEndpointError,
    check_endpoint,
    refusal_reason,
)
from providers.registry import build_transport
from tests.callback_support import HttpsServer
from tests.http_sink import HttpSink, Reply

SARA_META = "sara@example.com|1568798080|1730799638|20241105|0|wzrk_default|-17005910|"
SARA_HTML = "<html><body>Hello Sara, enjoy your exclusive 20% discount today!</body></html>"

# The seed's "Custom Dynamic Replacements" template (seed 002).
SEED_BATCH_BODY: dict[str, Any] = {
    "cid": "432",
    "msgs": [
        {
            "from": "$$FromName",
            "senderaddr": "$$FromAddress",
            "to": "$$To",
            "mid": "$$MessageID",
            "name": "$$name",
            "uid": "$$userID",
            "content": "$$HTML",
            "heading": "$$Subject",
        }
    ],
}

SINGLE_BODY: dict[str, Any] = {
    "to": "$$To",
    "subject": "$$Subject",
    "from": {"name": "$$FromName", "address": "$$FromAddress"},
    "html": "$$HTML",
    "mid": "$$MessageID",
    "cid": "$$CampaignID",
}


def http_config(endpoint: str, **fields: Any) -> HttpConfig:
    data: dict[str, Any] = {
        "kind": "http",
        "nickname": "esp",
        "method": "POST",
        "endpoint": endpoint,
        "body": SINGLE_BODY,
        "from_name": "Acme Deals",
        "from_address": "deals@acmestore.com",
    }
    data.update(fields)
    config = parse_provider_config(data)
    assert isinstance(config, HttpConfig)
    return config


def message(seq: int, **overrides: Any) -> OutgoingMessage:
    email = overrides.pop("to", f"user{seq}@example.com")
    fields: dict[str, Any] = {
        "seq": seq,
        "meta": f"{email}|1|c1|20250101|0|default|{seq}|",
        "campaign_id": "c1",
        "to": email,
        "subject": "Your 20% Discount Awaits!",
        "html": f"<p>Hello {seq}</p>",
        "text": "Hello",
        "from_address": "deals@acmestore.com",
        "from_name": "Acme Deals",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def sara() -> OutgoingMessage:
    return message(
        1,
        to="sara@example.com",
        meta=SARA_META,
        campaign_id="1730799638",
        subject="Your 20% Discount Awaits!",
        html=SARA_HTML,
        user_vars={"name": "Sara", "userID": "user_9021"},
    )


async def send(transport: HttpTransport, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
    """Feed ``messages`` in chunks of ``chunk_size``, as the dispatcher does."""
    outcomes: list[SendOutcome] = []
    async with transport.session() as session:
        for start in range(0, len(messages), transport.chunk_size):
            outcomes += await session.send(messages[start : start + transport.chunk_size])
    return outcomes


def local(config: HttpConfig) -> HttpTransport:
    return HttpTransport(config, allow_private=True)


# --- configuration ----------------------------------------------------------------------


def refusal(data: dict[str, Any]) -> str:
    base: dict[str, Any] = {"kind": "http", "nickname": "esp", "endpoint": "https://esp.example"}
    with pytest.raises(pydantic.ValidationError) as info:
        parse_provider_config({**base, **data})
    return str(info.value)


def test_post_body_must_hold_the_mandatory_placeholders() -> None:
    text = refusal({"method": "POST", "body": {"to": "$$To", "html": "$$HTML"}})
    assert "mandatory placeholders missing: $$FromAddress, $$FromName, $$Subject" in text
    assert "body: required for POST" in refusal({"method": "POST"})
    assert "JSON value, not as a string" in refusal({"body": '{"to": "$$To"}'})


def test_get_query_rules() -> None:
    text = refusal({"method": "GET", "query": {"to": "$$To", "html": "$$HTML", "amp": "$$AMPHTML"}})
    assert "content placeholders are not allowed in a URL ($$AMPHTML, $$HTML)" in text
    assert "mandatory placeholders missing: $$FromAddress, $$FromName, $$Subject" in text
    query = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress"}
    assert "carries no body" in refusal({"method": "GET", "query": query, "body": {"x": 1}})
    assert "batching needs method POST" in refusal({"method": "GET", "query": query, "batch": True})


def test_endpoint_auth_and_header_rules() -> None:
    assert "must start with http:// or https://" in refusal({"endpoint": "ftp://x/"})
    assert "credentials in the URL" in refusal(
        {"endpoint": "https://u:p@esp.example/", "body": SINGLE_BODY}
    )
    assert "not substituted in the endpoint" in refusal({"endpoint": "https://esp.example/$$To"})
    assert "username: required" in refusal({"auth": "basic", "body": SINGLE_BODY})
    text = refusal(
        {
            "body": SINGLE_BODY,
            "headers": {
                "Bad Name": "x",
                "X-A": "a\r\nInjected: 1",
                "Host": "h",
                "x-a": "b",
                "X-Trail\n": "x",
            },
        }
    )
    assert "'Bad Name' is not a valid header name" in text
    assert "'X-Trail\\n' is not a valid header name" in text
    assert "the value of X-A holds a line break" in text
    assert "Host is set by the HTTP client" in text
    assert "x-a is given twice" in text


def test_basic_auth_credentials_that_could_not_work_are_refused_or_warned() -> None:
    # RFC 7617 §2: the first colon ends the user-id; "us:er" would log in as "us".
    text = refusal({"auth": "basic", "username": "us:er", "password": "p", "body": SINGLE_BODY})
    assert "username: a basic-auth user name cannot hold a colon" in text
    # Credentials given with auth 'none' are never sent: the ESP answers 401 and the
    # campaign pauses; say so when the provider is saved.
    config = http_config("https://esp.example", body=SINGLE_BODY, username="u", password="p")
    assert any("auth is 'none'" in w and "not sent" in w for w in config.warnings())
    basic = http_config(
        "https://esp.example", body=SINGLE_BODY, auth="basic", username="u", password="p:w"
    )
    assert not any("auth is 'none'" in w for w in basic.warnings())


def test_batch_rules() -> None:
    per_message_global = {**SEED_BATCH_BODY, "to": "$$To", "subject": "$$Subject"}
    # Globals are rendered once per request: per-message placeholders there are refused.
    text = refusal({"batch": True, "body": per_message_global})
    assert "per-message placeholders are not allowed in batch mode ($$Subject, $$To)" in text
    text = refusal({"batch": True, "body": SEED_BATCH_BODY, "headers": {"X-To": "$$To"}})
    assert "headers: per-message placeholders" in text
    assert "needs one array" in refusal({"batch": True, "body": SINGLE_BODY})
    two = {"a": SEED_BATCH_BODY["msgs"], "b": SEED_BATCH_BODY["msgs"]}
    assert "exactly one message array; found body.a, body.b" in refusal(
        {"batch": True, "body": two}
    )
    pair = {"msgs": [SEED_BATCH_BODY["msgs"][0], SEED_BATCH_BODY["msgs"][0]]}
    assert "exactly one template object" in refusal({"batch": True, "body": pair})


def test_message_array_is_found_anywhere() -> None:
    body = {"meta": {"tags": ["a"]}, "payload": {"batch": {"items": [{"rcpt": ["$$To"]}]}}}
    assert find_message_array(body) == (("payload", "batch", "items"), [])
    assert find_message_array([{"to": "$$To"}]) == ((), [])


def test_warnings_and_usage_by_location() -> None:
    body = {k: v for k, v in SINGLE_BODY.items() if k != "mid"} | {"$$key": "$$Html"}
    config = http_config("https://esp.example", body=body, headers={"X-Camp": "$$CampaignID"})
    warnings = config.warnings()
    assert any("$$MessageID is not used" in w for w in warnings)
    assert any("not substituted: $$key" in w for w in warnings)
    assert any("did you mean $$HTML?" in w for w in warnings)
    batch = http_config(
        "https://esp.example",
        batch=True,
        body={**SEED_BATCH_BODY, "promo": "$$Promo $$CampaignID"},
        headers={"X-Camp": "$$CampaignID"},
        query={"k": "$$apiKey"},
    )
    assert batch.warnings() == []
    usage = placeholder_usage(batch)
    assert usage.message_array == ("msgs",)
    assert usage.body_globals == {"Promo", "CampaignID"}
    assert usage.body_message >= {"To", "name", "userID"}
    assert usage.headers == {"CampaignID"} and usage.query == {"apiKey"}
    assert usage.per_request == {"Promo", "CampaignID", "apiKey"}


def test_password_is_a_secret() -> None:
    config = http_config("https://esp.example", auth="basic", username="u", password="s3cret")
    assert "s3cret" not in repr(config)
    assert public_view(config)["password"] == "********"
    assert HttpConfig.secret_fields == ("password",)


def test_campaign_check_names_unresolvable_placeholders() -> None:
    # The seed's sample output shows "discountPercentage": "$$DiscountPercentage" sent
    # unresolved in a batch global: we refuse it when the campaign is created.
    body = {**SEED_BATCH_BODY, "discountPercentage": "$$DiscountPercentage"}
    config = http_config("https://esp.example", batch=True, body=body)
    recipients = [{"name": "Sara", "userID": "u1"}, {"name": "Bo"}, {"userID": "u3"}]
    problems = check_placeholders(config, {}, recipients)
    by_name = {p.name: p.message for p in problems}
    assert set(by_name) == {"DiscountPercentage", "name", "userID"}
    assert (
        "$$DiscountPercentage (in the body globals) has no value" in by_name["DiscountPercentage"]
    )
    assert "no value for 1 recipient(s), first recipient #2" in by_name["name"]
    assert "first recipient #1" in by_name["userID"]

    # Set only per recipient: still refused, globals take campaign-level values only.
    per_user = [{"name": "S", "userID": "u", "DiscountPercentage": 20}]
    (problem,) = check_placeholders(config, {}, per_user)
    assert problem.name == "DiscountPercentage" and "campaign-level values only" in problem.message

    # Campaign vars fill globals and defaults for recipients.
    assert (
        check_placeholders(config, {"DiscountPercentage": 20, "userID": "?"}, recipients[:2]) == []
    )
    assert required_recipient_vars(config, {"userID": "?"}) == {"name"}


# --- requests as received -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_seed_custom_dynamic_replacements_example_for_sara() -> None:
    with HttpSink() as sink:
        transport = local(http_config(sink.url + "/send", batch=True, body=SEED_BATCH_BODY))
        assert transport.chunk_size == 1000
        outcomes = await send(transport, [sara()])
        (request,) = sink.requests
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT]
    assert request.method == "POST" and request.path == "/send"
    assert request.header("Content-Type") == "application/json"
    assert request.json() == {
        "cid": "432",
        "msgs": [
            {
                "from": "Acme Deals",
                "senderaddr": "deals@acmestore.com",
                "to": "sara@example.com",
                "mid": SARA_META,
                "name": "Sara",
                "uid": "user_9021",
                "content": SARA_HTML,
                "heading": "Your 20% Discount Awaits!",
            }
        ],
    }


@pytest.mark.asyncio
async def test_an_unresolved_global_is_never_sent() -> None:
    body = {**SEED_BATCH_BODY, "discountPercentage": "$$DiscountPercentage"}
    with HttpSink() as sink:
        transport = local(http_config(sink.url, batch=True, body=body))
        outcomes = await send(transport, [sara()])
        assert sink.requests == []
        (outcome,) = outcomes
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.error_class is ErrorClass.INVALID_MESSAGE
        assert "$$DiscountPercentage" in outcome.detail

        filled = message(
            2, user_vars={"name": "A", "userID": "1"}, campaign_vars={"DiscountPercentage": 20}
        )
        assert [o.status for o in await send(transport, [filled])] == [OutcomeStatus.SENT]
        assert sink.requests[0].json()["discountPercentage"] == 20


@pytest.mark.asyncio
async def test_2500_messages_in_batches_of_1000() -> None:
    messages = [message(i, user_vars={"name": f"N{i}", "userID": str(i)}) for i in range(2500)]
    with HttpSink() as sink:
        transport = local(
            http_config(sink.url, batch=True, body=SEED_BATCH_BODY, max_connections=3)
        )
        assert transport.max_sessions == 3
        outcomes = await send(transport, messages)
        requests = sink.requests
    assert [len(r.json()["msgs"]) for r in requests] == [1000, 1000, 500]
    received = [m["to"] for r in requests for m in r.json()["msgs"]]
    assert sorted(received) == sorted(m.to for m in messages)
    assert len(set(received)) == 2500
    assert all(r.json()["cid"] == "432" for r in requests)
    assert [o.seq for o in outcomes] == list(range(2500))
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}


@pytest.mark.asyncio
async def test_batch_fails_only_the_message_that_cannot_be_rendered() -> None:
    good = message(1, user_vars={"name": "A", "userID": "1"})
    bad = message(2, user_vars={"name": "B"})  # no userID anywhere
    with HttpSink() as sink:
        outcomes = await send(
            local(http_config(sink.url, batch=True, body=SEED_BATCH_BODY)), [good, bad]
        )
        (request,) = sink.requests
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT, OutcomeStatus.FAILED]
    assert "$$userID" in outcomes[1].detail
    assert [m["to"] for m in request.json()["msgs"]] == [good.to]


@pytest.mark.asyncio
async def test_get_puts_placeholders_in_the_query_string() -> None:
    query = {
        "to": "$$To",
        "subject": "$$Subject",
        "from": "$$FromName <$$FromAddress>",
        "mid": "$$MessageID",
        "code": "$$promo",
        "key": "static & = ?",
    }
    with HttpSink() as sink:
        config = http_config(sink.url + "/api/send?v=2", method="GET", body=None, query=query)
        msg = message(1, user_vars={"promo": "SAVE 20%&x=1"}, subject="Hi & bye?")
        outcomes = await send(local(config), [msg])
        (request,) = sink.requests
    assert outcomes[0].status is OutcomeStatus.SENT
    assert request.method == "GET" and request.path == "/api/send" and request.body == b""
    assert request.query == [
        ("v", "2"),
        ("to", msg.to),
        ("subject", "Hi & bye?"),
        ("from", "Acme Deals <deals@acmestore.com>"),
        ("mid", msg.meta),
        ("code", "SAVE 20%&x=1"),
        ("key", "static & = ?"),
    ]


@pytest.mark.asyncio
async def test_basic_auth_and_static_and_dynamic_headers_arrive() -> None:
    headers = {"X-Api-Key": "k-123", "X-User": "$$userID/$$CampaignID", "X-Name": "$$name"}
    with HttpSink() as sink:
        config = http_config(
            sink.url, auth="basic", username="acme", password="pa:ss wörd", headers=headers
        )
        messages = [
            message(1, user_vars={"userID": "u1", "name": "José"}),
            message(2, user_vars={"userID": "u2", "name": "Bo"}),
        ]
        outcomes = await send(local(config), messages)
        first, second = sink.requests
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 2
    expected = "Basic " + base64.b64encode("acme:pa:ss wörd".encode()).decode()
    assert first.header("Authorization") == expected
    assert first.header("X-Api-Key") == "k-123"
    assert (first.header("X-User"), second.header("X-User")) == ("u1/c1", "u2/c1")
    # http.server decodes header bytes as Latin-1; the wire carries UTF-8.
    assert (first.header("X-Name") or "").encode("latin-1").decode() == "José"


@pytest.mark.asyncio
async def test_header_values_with_surrounding_whitespace_are_sent_trimmed() -> None:
    headers = {"Authorization": " Bearer k-123 ", "X-Name": "$$name", "X-Id": "\t$$userID"}
    with HttpSink() as sink:
        config = http_config(sink.url, headers=headers)
        msg = message(1, user_vars={"name": " Sara\t", "userID": "u1"})
        (outcome,) = await send(local(config), [msg])
        requests = sink.requests
    assert outcome.status is OutcomeStatus.SENT, outcome.detail
    (request,) = requests
    assert request.header("Authorization") == "Bearer k-123"
    assert (request.header("X-Name"), request.header("X-Id")) == ("Sara", "u1")


@pytest.mark.asyncio
async def test_a_line_break_in_a_dynamic_header_fails_that_message_unsent() -> None:
    with HttpSink() as sink:
        config = http_config(sink.url, headers={"X-Name": "$$name"})
        msgs = [
            message(1, user_vars={"name": "ok"}),
            message(2, user_vars={"name": "a\r\nX-Evil: 1"}),
        ]
        outcomes = await send(local(config), msgs)
        assert len(sink.requests) == 1
    assert outcomes[1].status is OutcomeStatus.FAILED
    assert outcomes[1].error_class is ErrorClass.INVALID_MESSAGE


@pytest.mark.asyncio
async def test_a_control_character_in_a_dynamic_header_fails_that_message_as_invalid() -> None:
    values = ["ok", "a\x0bb", "a\x01b", "a\x7fb", "tab\there", "é"]
    with HttpSink() as sink:
        config = http_config(sink.url, headers={"X-Name": "$$name"})
        msgs = [message(i, user_vars={"name": v}) for i, v in enumerate(values, 1)]
        outcomes = await send(local(config), msgs)
        received = [r.header("X-Name") for r in sink.requests]
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] + [OutcomeStatus.FAILED] * 3 + [
        OutcomeStatus.SENT
    ] * 2
    assert {o.error_class for o in outcomes[1:4]} == {ErrorClass.INVALID_MESSAGE}
    assert received[:2] == ["ok", "tab\there"]


HOSTILE = {
    "quote": 'say "hi"',
    "breakout": '"}, {"x": 1',
    "newlines": "a\nb\r\nc\u2028d",
    "backslash": "C:\\path\\n \\u0041",
    "emoji": "😀 中文",
    "html_var": "$$HTML",
    "to_var": "$$To",
}


@pytest.mark.asyncio
async def test_hostile_values_arrive_as_valid_json_with_the_exact_value() -> None:
    big_html = "<html>" + ('<p>"q" \\ 😀</p>\n' * 7000) + "</html>"
    assert len(big_html) > 100_000
    body = {
        "to": "$$To",
        "subject": "$$Subject",
        "from": "$$FromName",
        "addr": "$$FromAddress",
        "html": "$$HTML",
        "vars": {k: f"$${k}" for k in HOSTILE},
        "mixed": "[$$breakout]",
    }
    with HttpSink() as sink:
        config = http_config(sink.url, body=body)
        msg = message(1, html=big_html, subject='Sub "ject"\n', user_vars=HOSTILE)
        outcomes = await send(local(config), [msg])
        (request,) = sink.requests
    assert outcomes[0].status is OutcomeStatus.SENT
    received = request.json()
    assert received["html"] == big_html
    assert received["subject"] == 'Sub "ject"\n'
    assert received["vars"] == HOSTILE  # "$$To" and "$$HTML" stayed literal
    assert received["mixed"] == f"[{HOSTILE['breakout']}]"
    assert received["to"] == msg.to


# --- outcomes -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_503_is_retried_then_sent() -> None:
    with HttpSink() as sink:
        sink.script(Reply(503, b"busy"))
        transport = local(http_config(sink.url))
        async with transport.session() as session:
            (first,) = await session.send([message(1)])
            (second,) = await session.send([message(1)])  # the dispatcher re-sends
        assert len(sink.requests) == 2
    assert first.status is OutcomeStatus.RETRY and first.throttled and first.code == 503
    assert first.error_class is ErrorClass.DISPATCH_FAILED_HTTP
    assert second.status is OutcomeStatus.SENT


@pytest.mark.asyncio
async def test_429_with_retry_after_is_throttled() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    with HttpSink() as sink:
        sink.script(
            Reply(429, b"slow down", headers=(("Retry-After", "2"),)),
            Reply(429, headers=(("Retry-After", when),)),
            Reply(500),
        )
        outcomes = await send(local(http_config(sink.url)), [message(1), message(2), message(3)])
    seconds, date, plain = outcomes
    assert seconds.status is OutcomeStatus.RETRY and seconds.throttled
    assert seconds.retry_after is not None and seconds.retry_after >= 2
    assert date.retry_after is not None and 80 < date.retry_after <= 90
    assert plain.status is OutcomeStatus.RETRY and not plain.throttled and plain.retry_after is None


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_retry_after_that_is_no_number_or_absurd_is_no_hint_or_capped() -> None:
    # RFC 9110 §10.2.3: delay-seconds is 1*DIGIT. Python's float() reads more.
    for value in ("inf", "Infinity", "1e400", "nan", "-5", "1_0", "0x10"):
        assert parse_retry_after(value) is None, value
    day = 24 * 3600.0
    assert parse_retry_after("99999999999") == day
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == day


@pytest.mark.asyncio
async def test_400_fails_with_the_status_and_a_bounded_excerpt() -> None:
    with HttpSink() as sink:
        sink.script(Reply(400, b'{"error": "invalid sender"}' + b" pad" * 5000))
        (outcome,) = await send(local(http_config(sink.url)), [message(1)])
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error_class is ErrorClass.DISPATCH_FAILED_HTTP
    assert str(outcome.error_class) == "Dispatch failed"
    assert outcome.code == 400
    assert outcome.detail.startswith('HTTP 400: {"error": "invalid sender"}')
    assert len(outcome.detail) <= 320


@pytest.mark.asyncio
async def test_401_refuses_the_whole_session() -> None:
    with HttpSink() as sink:
        sink.script(Reply(401, b"bad key"))
        with pytest.raises(AuthenticationError, match="HTTP 401: bad key"):
            await send(local(http_config(sink.url)), [message(1)])


@pytest.mark.asyncio
async def test_403_refuses_the_whole_session() -> None:
    """Credentials that may not send this (a key without the send permission, a sender
    not verified): every message would be refused, so the campaign pauses."""
    with HttpSink() as sink:
        sink.script(Reply(403, b'{"error": "sender not verified"}'))
        with pytest.raises(ConfigurationError) as info:
            await send(local(http_config(sink.url)), [message(1), message(2)])
    assert info.value.detail == 'not allowed: HTTP 403: {"error": "sender not verified"}'
    assert (info.value.error_class, info.value.code) == (ErrorClass.DISPATCH_FAILED_HTTP, 403)


@pytest.mark.asyncio
async def test_redirects_are_not_followed() -> None:
    """A redirect is the endpoint's: every message would get it, so the session raises
    (the campaign pauses naming the ``Location``, review D24), as for a 403."""
    with HttpSink() as sink:
        sink.script(Reply(302, b"", headers=(("Location", sink.url + "/elsewhere"),)))
        with pytest.raises(ConfigurationError) as info:
            await send(local(http_config(sink.url)), [message(1)])
        assert len(sink.requests) == 1
    assert "redirects are not followed" in info.value.detail and "/elsewhere" in info.value.detail
    assert (info.value.error_class, info.value.code) == (ErrorClass.DISPATCH_FAILED_HTTP, 302)


@pytest.mark.asyncio
async def test_a_303_leaves_its_messages_unknown_and_other_redirects_refuse_the_session() -> None:
    """303 (See Other) points to the result of a request the server acted on: its
    messages may have been taken, and ``failed`` let retry-failed send them again. A
    307 or 308 asks for the request elsewhere: it was not taken, and the session's next
    requests would be asked the same."""
    with HttpSink() as sink:
        where = (("Location", sink.url + "/receipts/1"),)
        sink.script(Reply(303, b"", headers=where), Reply(307, b"", headers=where),
                    Reply(308, b"", headers=where))  # fmt: skip
        (outcome,) = await send(local(http_config(sink.url)), [message(1)])
        for status in (307, 308):
            with pytest.raises(ConfigurationError) as info:
                await send(local(http_config(sink.url)), [message(2)])
            assert info.value.code == status and "/receipts/1" in info.value.detail
        assert len(sink.requests) == 3  # none followed
    assert (outcome.status, outcome.code) == (OutcomeStatus.UNKNOWN, 303)
    assert "may have taken it" in outcome.detail and "/receipts/1" in outcome.detail


@contextmanager
def trickling_server(status_line: bytes) -> Iterator[str]:
    """A server on 127.0.0.1 that answers ``status_line`` at once, then sends its body
    one byte every 50 ms for ever (each read well within any read timeout)."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(status_line + b"\r\nContent-Length: 1000000\r\n\r\n")
            try:
                while not stop.wait(0.05):
                    conn.sendall(b"x")
            except OSError:
                pass  # the client closed the connection

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status_line", "status"),
    [(b"HTTP/1.1 200 OK", OutcomeStatus.SENT), (b"HTTP/1.1 503 Busy", OutcomeStatus.RETRY)],
)
async def test_a_trickling_response_body_does_not_hold_the_session(
    status_line: bytes, status: OutcomeStatus
) -> None:
    with trickling_server(status_line) as url:
        transport = local(http_config(url, timeout=0.5))
        # wait_for only keeps a regression from hanging the suite; it asserts no timing.
        (outcome,) = await asyncio.wait_for(send(transport, [message(1)]), 30)
    assert outcome.status is status
    if status is OutcomeStatus.RETRY:
        assert outcome.detail.startswith("HTTP 503: x")  # what arrived in time is kept


@pytest.mark.asyncio
async def test_no_answer_after_sending_is_unknown_not_retried() -> None:
    with HttpSink() as sink:
        sink.script(Reply(200, delay=1.5))
        (outcome,) = await send(local(http_config(sink.url, timeout=0.3)), [message(1)])
        assert len(sink.requests) == 1  # the provider did receive it
    assert outcome.status is OutcomeStatus.UNKNOWN
    assert "may have accepted it" in outcome.detail


@pytest.mark.asyncio
async def test_connection_refused_is_retried() -> None:
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (outcome,) = await send(local(http_config(f"http://127.0.0.1:{port}")), [message(1)])
    assert outcome.status is OutcomeStatus.RETRY
    assert "cannot reach the endpoint" in outcome.detail


# --- private-address guard ----------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "169.254.169.254", "192.168.1.1", "::1", "fe80::1",
     "::ffff:10.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1", "fc00::1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(address) is None


@pytest.mark.asyncio
async def test_loopback_sink_is_refused_unless_allowed() -> None:
    with HttpSink() as sink:
        for endpoint in (sink.url, f"http://localhost:{sink.port}/"):
            transport = HttpTransport(http_config(endpoint))
            with pytest.raises(PrivateEndpointError, match="DISPATCH_ALLOW_PRIVATE_ENDPOINTS"):
                await send(transport, [message(1)])
        assert sink.requests == []
        allowed = build_transport(http_config(sink.url), allow_private_endpoints=True)
        assert isinstance(allowed, HttpTransport)
        assert [o.status for o in await send(allowed, [message(1)])] == [OutcomeStatus.SENT]


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "[::ffff:10.0.0.1]"])
async def test_private_endpoints_are_refused_before_connecting(host: str) -> None:
    async def no_dns(name: str, port: int) -> list[str]:
        raise AssertionError("an IP literal needs no resolution")

    transport = HttpTransport(http_config(f"http://{host}/send"), resolve=no_dns)
    with pytest.raises(PrivateEndpointError, match=r"private|link-local"):
        await send(transport, [message(1)])
    with pytest.raises(PrivateEndpointError):
        await check_endpoint(f"http://{host}/send", allow_private=False)


@pytest.mark.asyncio
async def test_a_name_with_any_private_address_is_refused() -> None:
    async def rebinding(name: str, port: int) -> list[str]:
        return ["8.8.8.8", "127.0.0.1"]

    transport = HttpTransport(http_config("http://esp.invalid/send"), resolve=rebinding)
    with pytest.raises(PrivateEndpointError, match=r"127\.0\.0\.1 \(loopback\)"):
        await send(transport, [message(1)])


@pytest.mark.asyncio
async def test_the_connection_goes_to_the_checked_address() -> None:
    # "sink.invalid" resolves nowhere but through our resolver: the request arriving
    # proves the connection was made to the address the guard checked, not re-resolved.
    with HttpSink() as sink:

        async def pinned(name: str, port: int) -> list[str]:
            assert name == "sink.invalid"
            return ["127.0.0.1"]

        endpoint = f"http://sink.invalid:{sink.port}/send"
        transport = HttpTransport(http_config(endpoint), allow_private=True, resolve=pinned)
        (outcome,) = await send(transport, [message(1)])
        (request,) = sink.requests
    assert outcome.status is OutcomeStatus.SENT
    assert request.header("Host") == f"sink.invalid:{sink.port}"


@pytest.mark.asyncio
async def test_https_certificates_are_checked() -> None:
    """TLS contexts are shared per process (providers.tls): the guarded transport checks
    the endpoint's certificate unless told not to, in either order. A refused certificate
    is the provider's configuration (a person must act), as in the SMTP adapter."""
    query = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress"}
    with HttpsServer() as server:
        url = f"https://{server.authority}/send"
        config = http_config(url, method="GET", body=None, query=query)
        unchecked = HttpTransport(
            config,
            allow_private=True,
            http_transport=GuardedTransport(
                allow_private=True, limits=httpx.Limits(max_connections=1), verify=False
            ),
        )
        for transport in (local(config), unchecked, local(config)):
            if transport is unchecked:
                (outcome,) = await send(transport, [message(1)])
                assert outcome.status is OutcomeStatus.SENT
                continue
            with pytest.raises(ConfigurationError) as info:
                await send(transport, [message(1)])
            assert info.value.error_class is ErrorClass.DISPATCH_FAILED_HTTP
            assert "TLS failed with 127.0.0.1: [SSL: CERTIFICATE_VERIFY_FAILED]" in str(info.value)
        assert len(server.paths) == 1


@pytest.mark.asyncio
async def test_a_private_ca_or_no_checks_are_the_providers_choice() -> None:
    """An endpoint with a certificate of the user's own CA works with ``tls_ca`` (checks on,
    certifi's CAs not needed), or with ``tls_verify`` false; without either it is refused."""
    query = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress"}
    with HttpsServer() as server:
        url = f"https://{server.authority}/send"
        base = {"method": "GET", "body": None, "query": query}
        with open(server.ca_file) as ca:
            trusted = http_config(url, **base, tls_ca=ca.read())
        unchecked = http_config(url, **base, tls_verify=False)
        for config in (trusted, unchecked):
            (outcome,) = await send(local(config), [message(1)])
            assert outcome.status is OutcomeStatus.SENT, outcome.detail
        with pytest.raises(ConfigurationError, match="CERTIFICATE_VERIFY_FAILED"):
            await send(local(http_config(url, **base)), [message(1)])
        assert len(server.paths) == 2
