"""The save-time address check looks at the host the connection goes to (review A25)."""

from __future__ import annotations

import pytest

from providers.base import OutcomeStatus, OutgoingMessage
from providers.config import HttpConfig
from providers.http import HttpTransport
from providers.netguard import check_endpoint
from tests.http_sink import HttpSink

BODY = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress", "h": "$$HTML",
        "mid": "$$MessageID"}  # fmt: skip


@pytest.mark.asyncio
async def test_the_save_check_resolves_the_name_the_connection_resolves() -> None:
    """The check on save resolved ``url.host``, Unicode, which the system resolver
    encodes by IDNA 2003 ("faß" -> "fass"), while the connection resolves httpx's IDNA
    2008 name ("xn--fa-hia"): the check looked at another host than the one sent to."""
    asked: list[str] = []

    async def resolve(name: str, port: int) -> list[str]:
        asked.append(name)
        return ["127.0.0.1"]

    with HttpSink() as sink:
        endpoint = f"http://faß.example:{sink.port}/send"
        await check_endpoint(endpoint, allow_private=True, resolve=resolve)
        config = HttpConfig(kind="http", nickname="idn", endpoint=endpoint, body=BODY)
        transport = HttpTransport(config, allow_private=True, resolve=resolve)
        message = OutgoingMessage(
            seq=1, meta="m|", campaign_id="c", to="ann@example.com", subject="s", html="h",
            text="", from_address="d@acme.example",
        )  # fmt: skip
        async with transport.session() as session:
            (outcome,) = await session.send([message])
        assert outcome.status is OutcomeStatus.SENT, outcome.detail
        assert sink.requests[0].header("Host") == f"xn--fa-hia.example:{sink.port}"
    assert asked == ["xn--fa-hia.example", "xn--fa-hia.example"]
