"""Review Z12: a test email answers at its deadline even when its SMTP server is still
checking the message's end.

``asyncio.wait_for`` cancelled the exchange at the deadline and then waited for it to
end: its session's close sent QUIT and waited for the reply, which the server sends only
after its reply to the message's end, up to the provider's ``timeout`` (30 s by
default). A test could take the API's 60 s deadline and 30 s more, past the API client's
75 s read timeout: "the request may have arrived, its answer did not", and a caller that
sends the test again. A real aiosmtpd server holds its reply to the message's end here;
the test's answer must come while it still does.
"""

from __future__ import annotations

import asyncio
import threading

import redis
from aiosmtpd.smtp import Envelope

from dispatch import test_email
from dispatch.test_email import TestEmailResult
from providers.config import SmtpConfig
from tests.smtp_server import SmtpTestServer

HELD_SECONDS = 20.0  # how long the server holds its reply, unless released earlier


def _test_while_the_server_holds_the_message(limits: bool) -> tuple[TestEmailResult, bool]:
    """The test's answer (deadline 1 s, the provider's timeout 30 s), and whether the
    server had answered the message's end by then."""
    release, answered = threading.Event(), threading.Event()

    def hold(envelope: Envelope) -> None:
        release.wait(HELD_SECONDS)
        answered.set()

    with SmtpTestServer() as smtp:
        smtp.handler.data_reply = hold  # type: ignore[assignment]
        config = SmtpConfig(
            nickname="checking", host="127.0.0.1", port=smtp.port, security="none",
            from_address="deals@acme.example", timeout=30.0,
        )  # fmt: skip

        async def go() -> TestEmailResult:
            if not limits:
                return await test_email.send_test_email(config, "ops@example.com", deadline=1.0)
            return await test_email.within_shared_limits(
                lambda r: test_email.send_test_email(
                    config, "ops@example.com", deadline=1.0, limits=r
                )
            )

        try:
            result = asyncio.run(go())
            was_answered = answered.is_set()
        finally:
            release.set()
    return result, was_answered


def _assert_unknown_at_the_deadline(result: TestEmailResult, was_answered: bool) -> None:
    assert not was_answered  # the answer did not wait for the server's
    assert (result.ok, result.error) == (False, "SMTP timeout"), result
    assert result.detail.startswith("outcome unknown: no answer within 1 s"), result.detail


def test_the_answer_comes_at_the_deadline_not_after_the_quit() -> None:
    _assert_unknown_at_the_deadline(*_test_while_the_server_holds_the_message(limits=False))


def test_within_the_providers_limits_too(redis_client: redis.Redis) -> None:
    _assert_unknown_at_the_deadline(*_test_while_the_server_holds_the_message(limits=True))
    assert redis_client.zcard("dispatch:connections:checking") == 0  # its slot is given back


def test_an_answer_within_the_deadline_is_the_answer() -> None:
    with SmtpTestServer() as smtp:
        config = SmtpConfig(
            nickname="quick", host="127.0.0.1", port=smtp.port, security="none",
            from_address="deals@acme.example",
        )  # fmt: skip
        result = asyncio.run(test_email.send_test_email(config, "ops@example.com", deadline=30))
        assert [m.rcpt_tos for m in smtp.handler.messages] == [["ops@example.com"]]
    assert (result.ok, result.error) == (True, None), result
