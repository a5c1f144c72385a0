"""A provider's refusal that echoes the API key where the excerpt's cut falls: the start
of the key, left unmasked by the cut, was quoted in every message's detail once the
page's whitespace was collapsed (an indented error page)."""

from __future__ import annotations

import pytest

from providers.base import OutcomeStatus
from providers.http import EXCERPT_CHARS
from tests.http_sink import HttpSink, Reply
from tests.test_http_provider import http_config, local, message, send

KEY = "sk-live-7Hq2mZ0pWc4rT9xYb6nD1fVg"


@pytest.mark.asyncio
@pytest.mark.parametrize("indent", [EXCERPT_CHARS * 4 - 40, EXCERPT_CHARS * 4 - 25])
async def test_a_key_cut_at_the_excerpts_end_is_not_quoted_in_part(indent: int) -> None:
    page = b" " * indent + f"<p>invalid key {KEY}</p>".encode() + b" " * 4000
    with HttpSink() as sink:
        sink.script(Reply(400, page, headers=(("Content-Type", "text/html"),)))
        config = http_config(sink.url, headers={"Authorization": f"Bearer {KEY}"})
        (outcome,) = await send(local(config), [message(1)])
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.detail.startswith("HTTP 400: <p>invalid key"), outcome.detail
    assert KEY[:8] not in outcome.detail, outcome.detail
