"""Review W3, Generic HTTP provider, against real local servers (tests/http_sink.py, and
raw sockets for answers no HTTP server library gives).

* a static header value with a control character is refused on save (h11 refused some
  for every request, quoting the value: a credential in every message's detail);
* credentials a response echoes (an error body, a redirect's Location) are masked in the
  outcomes' details and in the error that pauses a campaign;
* the answer's status line and headers come within ``timeout`` in all: a server sending
  ``102 Processing`` for ever, or header lines one by one, held the session for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from providers.base import OutcomeStatus
from providers.config import HttpConfig, parse_provider_config
from providers.errors import AuthenticationError, ConfigurationError
from providers.http import MASK
from tests.http_sink import HttpSink, Reply
from tests.test_http_provider import SINGLE_BODY, http_config, local, message, refusal, send

KEY = "sk-live-4f9a8b7c6d"


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x01", "\x1b", "\x7f"])
def test_a_static_header_value_with_a_control_character_is_refused_on_save(
    control: str,
) -> None:
    headers = {"Authorization": f"Bearer {KEY}{control}"}
    problem = refusal({"body": SINGLE_BODY, "headers": headers})
    assert "headers: the value of Authorization holds a line break or control character" in problem


@pytest.mark.asyncio
async def test_a_header_value_h11_refuses_is_not_quoted_in_the_detail() -> None:
    # Saved before the rule: read back as stored (not validated again).
    data: dict[str, Any] = {
        "kind": "http",
        "nickname": "esp",
        "endpoint": "http://127.0.0.1:1",
        "body": SINGLE_BODY,
        "headers": {"X-Token": f"{KEY}\x0b"},
        "from_name": "Acme",
        "from_address": "deals@acmestore.com",
    }
    with HttpSink() as sink:
        config = parse_provider_config({**data, "endpoint": sink.url}, stored=True)
        assert isinstance(config, HttpConfig)
        (outcome,) = await send(local(config), [message(1)])
        assert sink.requests == []
    assert outcome.status is OutcomeStatus.FAILED
    assert "Illegal header value" in outcome.detail
    assert KEY not in outcome.detail


@pytest.mark.asyncio
async def test_credentials_echoed_by_the_provider_are_masked_in_details() -> None:
    echo = f'{{"error": "key {KEY} may not send; got Authorization: Bearer {KEY}"}}'
    with HttpSink() as sink:
        sink.script(
            Reply(400, echo.encode()),
            Reply(503, f"overloaded ({KEY})".encode()),
            Reply(302, b"", headers=(("Location", f"{sink.url}/v2?api_key=QK-987654"),)),
        )
        config = http_config(
            sink.url, headers={"Authorization": f"Bearer {KEY}"}, query={"api_key": "QK-987654"}
        )
        outcomes = await send(local(config), [message(1), message(2)])
        with pytest.raises(ConfigurationError) as redirected:  # (the endpoint's: review D24)
            await send(local(config), [message(3)])
    refused, busy = (o.detail for o in outcomes)
    assert refused == f'HTTP 400: {{"error": "key {MASK} may not send; got Authorization: {MASK}"}}'
    assert f"/v2?api_key={MASK})" in redirected.value.detail
    assert "QK-987654" not in redirected.value.detail
    assert busy == f"HTTP 503: overloaded ({MASK})"


@pytest.mark.asyncio
async def test_a_basic_password_echoed_with_401_is_masked_in_the_pause_reason() -> None:
    with HttpSink() as sink:
        sink.script(Reply(401, b"wrong password hunter22 for user acme"))
        config = http_config(sink.url, auth="basic", username="acme", password="hunter22")
        with pytest.raises(AuthenticationError) as info:
            await send(local(config), [message(1)])
    expected = f"credentials refused: HTTP 401: wrong password {MASK} for user acme"
    assert info.value.detail == expected


@asynccontextmanager
async def raw_server(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that reads a request, then lets ``answer`` write."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        try:
            await answer(writer)
        except ConnectionError:
            pass  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def processing_for_ever(writer: asyncio.StreamWriter) -> None:
    for _ in range(2000):  # 200 s, each line well within the read timeout
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


async def header_lines_one_by_one(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for index in range(2000):
        writer.write(b"X-Line-%d: x\r\n" % index)
        await writer.drain()
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", [processing_for_ever, header_lines_one_by_one])
async def test_an_answer_that_never_completes_ends_unknown(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with raw_server(answer) as url:
        transport = local(http_config(url, timeout=0.5))
        # wait_for only keeps a regression from hanging the suite; it asserts no timing.
        (outcome,) = await asyncio.wait_for(send(transport, [message(1)]), 20)
    assert outcome.status is OutcomeStatus.UNKNOWN  # the request was sent
    assert "may have accepted it" in outcome.detail
