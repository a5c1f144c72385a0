"""Review L14: a test email's answer and its daily quota, when its provider's answer is
not "sent" or "refused".

* The provider's own timeout while the connection opened (a connect, the greeting, a
  login unanswered within the provider's ``timeout``) is a ``ProviderTimeoutError``,
  which is a ``TimeoutError`` too: the test took it for its own deadline's cut and
  answered "not sent: no answer within <the deadline> s", hiding what timed out (it
  answered the provider's error, "timed out connecting to host:port", before review J14).
* A message the provider answered ``unknown`` (the connection lost after the end of its
  content: perhaps taken) gave its daily quota back, as if refused: a campaign's message
  so answered counts against it (only what the provider did not take is given back).
"""

from __future__ import annotations

import socket

import redis

from dispatch.test_email import TestEmailResult
from providers.config import SmtpConfig
from tests.smtp_server import SmtpTestServer
from tests.test_review_j14_adapter_cut import _connect_stalls
from tests.test_review_j14_test_email_cut import _test  # (its deadline: 1 s)


def _smtp(port: int, **fields: object) -> SmtpConfig:
    return SmtpConfig(
        nickname="l14", host="127.0.0.1", port=port, security="none",
        from_address="deals@acme.example", **fields,
    )  # fmt: skip


def test_a_test_whose_connect_times_out_names_the_provider_s_timeout() -> None:
    """The connect times out after the provider's 0.2 s, within the test's 1 s."""
    with _connect_stalls() as port:
        result = _test(_smtp(port, timeout=0.2))
    assert result == TestEmailResult(
        False, "SMTP timeout", f"timed out connecting to 127.0.0.1:{port}"
    ), result


def test_a_test_whose_greeting_times_out_names_the_provider_s_timeout() -> None:
    """A server that takes the connection and never greets: the provider's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        port = listener.getsockname()[1]
        result = _test(_smtp(port, timeout=0.2))
    finally:
        listener.close()
    assert (result.ok, result.error) == (False, "SMTP timeout"), result
    assert result.detail == f"timed out connecting to 127.0.0.1:{port}", result


def test_a_test_answered_unknown_keeps_its_daily_quota(redis_client: redis.Redis) -> None:
    """A daily quota of 1. The server reads the first test's content, then drops the
    connection without a reply: outcome unknown (it may have been taken), and the
    quota is used (the second test was sent: it had been given back)."""
    server = SmtpTestServer()
    drops = ["DROP"]  # (the first message's end only)
    server.handler.data_reply = lambda envelope: drops.pop() if drops else None
    with server:
        config = _smtp(server.port, timeout=5.0, data_timeout=5.0, daily_quota=1)
        first = _test(config, limits=True)
        second = _test(config, limits=True)
        received = list(server.messages)
    assert (first.ok, first.error) == (False, "SMTP connection error"), first
    assert first.detail.startswith("outcome unknown: "), first
    assert not second.ok and received == [], (second, received)
    assert "quota" in second.detail, second
