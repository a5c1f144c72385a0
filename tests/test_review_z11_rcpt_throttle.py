"""Review Z11: only a 450/451 to a recipient's RCPT is about that recipient; a 454 there
(SES's "Throttling failure: Maximum sending rate exceeded", session-level by RFC 3207/4954
and the reference) is about the provider and holds it, like a 454 anywhere else."""

from __future__ import annotations

import logging

import pytest
import redis

from dispatch import campaign_reads
from dispatch.settings import Settings
from providers.errors import RecipientThrottledError, ThrottledError
from providers.smtp import _reply_error
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

SES_RATE = "454 Throttling failure: Maximum sending rate exceeded."


@pytest.mark.parametrize(
    ("code", "about_recipient"), [(450, True), (451, True), (454, False), (421, False)]
)
def test_only_a_450_or_451_at_rcpt_is_about_the_recipient(code: int, about_recipient: bool) -> None:
    err = _reply_error(code, "try again later", at_rcpt=True)
    assert isinstance(err, ThrottledError)
    assert isinstance(err, RecipientThrottledError) is about_recipient


def test_a_454_throttle_at_rcpt_holds_the_provider(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [f"user{i}@" for i in (1, 3)]  # once each
    smtp.handler.rcpt_reply = lambda address: (  # type: ignore[method-assign]
        SES_RATE if refused and address.startswith(refused[0]) and refused.pop(0) else None
    )
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4)}
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_outcomes"):
        campaign_id, _ = run_inline(
            redis_client, body, Settings(retry_base_seconds=0.2, retry_max_seconds=0.2)
        )
    assert not refused  # (the server did refuse both once)
    assert [r for r in caplog.records if "held for" in r.getMessage()]
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["sent"], summary["failed"]) == (4, 0)
