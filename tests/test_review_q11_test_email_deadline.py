"""Review Q11: a test message whose SMTP server answers the end of its content after the
test's deadline (60 s; the server may check it for up to ``data_timeout``, 10 minutes)
may have been taken: the answer says its outcome is unknown, as a campaign's message
would be, not only that no answer came (a person then sends it again, and gets two)."""

from __future__ import annotations

import asyncio

from dispatch.test_email import send_test_email
from providers.config import SmtpConfig
from tests.test_review_c11_data_timeout import _server


def test_a_test_message_whose_end_is_answered_after_the_deadline_is_unknown() -> None:
    with _server(data_delays=[4.0]) as server:
        config = SmtpConfig(
            nickname="slow", host="127.0.0.1", port=server.port, security="none",
            from_address="deals@acme.example", timeout=1.0, data_timeout=10.0,
        )  # fmt: skip
        result = asyncio.run(send_test_email(config, "someone@example.com", deadline=1.5))
        assert server.handler.ended.is_set()  # the whole message reached the server
    assert not result.ok
    assert result.error == "SMTP timeout", result
    assert result.detail.startswith("outcome unknown"), result
    assert "1.5 s" in result.detail, result
