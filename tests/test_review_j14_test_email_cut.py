"""Review J14: a test email cut at its deadline says what is known of its message.

The answer was "outcome unknown: ... check the inbox before sending another" whatever
the exchange was doing when the deadline came: also when the SMTP server had not yet
answered its greeting or the message's RCPT (its content never written: certainly not
sent, and trying again is safe), and when it had answered the message's end with 250
and only the goodbye (QUIT) was still unanswered (the message was taken: the answer is
the provider's). The session now says what it knows when its send is cut
(``Session.cut_short``), as a campaign's chunk does; a message not sent gives its daily
quota back. A real aiosmtpd server stalls one reply here, and an endpoint that takes TCP
but never answers stalls a Generic HTTP provider's TLS handshake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatch import test_email
from dispatch.test_email import TestEmailResult
from providers.config import HttpConfig, SmtpConfig, parse_provider_config
from tests.smtp_server import Handler, SmtpTestServer

DEADLINE = 1.0  # the test's
STALL = 3.0  # a stalled reply comes this late: after the deadline


@dataclass
class StallingHandler(Handler):
    """:class:`Handler` that answers ``stall`` (``RCPT``, ``DATA``: the message's end,
    or ``QUIT``) ``STALL`` seconds late, once."""

    stall: str = ""

    async def _wait(self, command: str) -> None:
        if self.stall == command:
            self.stall = ""
            await asyncio.sleep(STALL)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        await self._wait("RCPT")
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._wait("DATA")
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._wait("QUIT")
        return "221 Bye"


def _stalling(stall: str, pipelining: bool = True) -> SmtpTestServer:
    server = SmtpTestServer()
    server.handler = StallingHandler(pipelining=pipelining, stall=stall)
    return server


def _smtp(port: int, **fields: Any) -> SmtpConfig:
    return SmtpConfig(
        nickname="stalls", host="127.0.0.1", port=port, security="none",
        from_address="deals@acme.example", timeout=10.0, data_timeout=10.0, **fields,
    )  # fmt: skip


def _test(config: SmtpConfig | HttpConfig, limits: bool = False) -> TestEmailResult:
    async def go() -> TestEmailResult:
        if not limits:
            return await test_email.send_test_email(config, "ops@example.com", deadline=DEADLINE)
        return await test_email.within_shared_limits(
            lambda r: test_email.send_test_email(
                config, "ops@example.com", deadline=DEADLINE, limits=r
            )
        )

    return asyncio.run(go())


def _assert_not_sent(result: TestEmailResult, error: str = "SMTP timeout") -> None:
    assert (result.ok, result.error) == (False, error), result
    assert result.detail.startswith("not sent: no answer within 1 s"), result.detail
    assert "sending the test again is safe" in result.detail, result.detail


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_test_cut_while_its_rcpt_is_unanswered_was_not_sent(pipelining: bool) -> None:
    with _stalling("RCPT", pipelining) as server:
        result = _test(_smtp(server.port))
        assert server.messages == []
    _assert_not_sent(result)


def test_a_test_cut_while_its_end_is_unanswered_is_still_unknown() -> None:
    """The content was written: the server may take it (it is checking it)."""
    with _stalling("DATA") as server:
        result = _test(_smtp(server.port))
    assert (result.ok, result.error) == (False, "SMTP timeout"), result
    assert result.detail.startswith("outcome unknown: no answer within 1 s"), result.detail


def test_a_test_the_server_took_is_sent_though_its_goodbye_is_cut() -> None:
    """250 to the message's end, then the QUIT's reply after the deadline: the message
    was taken (it answered "outcome unknown, check the inbox")."""
    with _stalling("QUIT") as server:
        result = _test(_smtp(server.port))
        assert [m.rcpt_tos for m in server.messages] == [["ops@example.com"]]
    assert (result.ok, result.error) == (True, None), result


def test_a_test_not_sent_gives_its_daily_quota_back(redis_client: redis.Redis) -> None:
    """A daily quota of 1: the first test, cut before it was handed over, took it for
    the day (the second answered that the quota was used up)."""
    with _stalling("RCPT") as server:
        config = _smtp(server.port, daily_quota=1)
        first = _test(config, limits=True)
        second = _test(config, limits=True)
        assert [m.rcpt_tos for m in server.messages] == [["ops@example.com"]]
    _assert_not_sent(first)
    assert (second.ok, second.error) == (True, None), second
    assert redis_client.zcard("dispatch:connections:stalls") == 0  # its slot is given back


def _http(endpoint: str) -> HttpConfig:
    config = parse_provider_config(
        {
            "nickname": "hook", "kind": "http", "endpoint": endpoint, "timeout": 10,
            "body": {"to": "$$To", "subject": "$$Subject", "html": "$$HTML",
                     "from": "$$FromName", "addr": "$$FromAddress"},
            "from_name": "Acme", "from_address": "deals@acme.example",
        }
    )  # fmt: skip
    assert isinstance(config, HttpConfig)
    return config


def test_a_test_cut_while_awaiting_the_servers_greeting_was_not_sent(
    silent_endpoint: int,
) -> None:
    _assert_not_sent(_test(_smtp(silent_endpoint)))


def test_an_http_test_cut_in_its_tls_handshake_was_not_sent(silent_endpoint: int) -> None:
    result = _test(_http(f"https://127.0.0.1:{silent_endpoint}/send"))
    _assert_not_sent(result, "Dispatch failed")


def test_an_http_test_cut_after_its_request_was_written_is_unknown(silent_endpoint: int) -> None:
    result = _test(_http(f"http://127.0.0.1:{silent_endpoint}/send"))
    assert (result.ok, result.error) == (False, "Dispatch failed"), result
    assert result.detail.startswith("outcome unknown: no answer within 1 s"), result.detail
