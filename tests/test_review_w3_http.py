"""Review W3, Generic HTTP provider, against a real local server (tests/http_sink.py).

* a static header value with a control character is refused on save (h11 refused some
  for every request, quoting the value: a credential in every message's detail);
* credentials a response echoes (an error body, a redirect's Location) are masked in the
  outcomes' details and in the error that pauses a campaign.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import OutcomeStatus
from providers.config import HttpConfig, parse_provider_config
from providers.errors import AuthenticationError
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
            Reply(302, b"", headers=(("Location", f"{sink.url}/v2?api_key=QK-987654"),)),
            Reply(503, f"overloaded ({KEY})".encode()),
        )
        config = http_config(
            sink.url, headers={"Authorization": f"Bearer {KEY}"}, query={"api_key": "QK-987654"}
        )
        outcomes = await send(local(config), [message(1), message(2), message(3)])
    refused, redirected, busy = (o.detail for o in outcomes)
    assert refused == f'HTTP 400: {{"error": "key {MASK} may not send; got Authorization: {MASK}"}}'
    assert redirected.endswith(f"/v2?api_key={MASK})")
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
