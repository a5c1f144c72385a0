"""The reputation guard and SES's account-level suppression list (review B24).

SES does not even try a message to an address on the account's own suppression list: it
reports a Permanent bounce of subtype ``OnAccountSuppressionList`` (or a complaint of that
``complaintSubType``) and does not count it against the sender's reputation (reference
§1.4). A team moving a list to dispatch with many such addresses had its campaign paused
by the guard. They still suppress their address and show in the campaign's counters; the
guard judges the rates over the messages SES really tried.

Real Redis, the callback gateway given SNS envelopes signed as SNS signs them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from dispatch import callbacks, campaign_reads, effects, message_pages, suppressions
from tests.callback_support import TOPIC, callback_path
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_callbacks_ses import Signer, mail, notification
from tests.test_reputation import small

pytestmark = pytest.mark.usefixtures("sns_settings", "small")
__all__ = ["small"]  # a fixture: batches of 10, rates judged from 10 sent


def ses_notice(r: redis.Redis, campaign_id: str, seq: int, kind: str, sub_type: str) -> Any:
    """An SES Bounce (Permanent, ``sub_type``) or Complaint (``complaintSubType``) about
    message ``seq`` of the campaign, its meta in the original headers."""
    item = message_pages.messages_page(campaign_id, client=r)[0][seq]
    recipient = {"emailAddress": item["email"], "status": "5.1.1"}
    found = mail([item["email"]], headers=[{"name": "X-CleverTap_META", "value": item["meta"]}])
    if kind == "Bounce":
        detail = {"bounceType": "Permanent", "bounceSubType": sub_type,
                  "bouncedRecipients": [recipient]}  # fmt: skip
    else:
        detail = {"complaintSubType": sub_type or None,
                  "complainedRecipients": [{"emailAddress": item["email"]}]}  # fmt: skip
    detail["timestamp"] = "2024-11-04T10:03:39.103Z"
    return {"notificationType": kind, kind.lower(): detail, "mail": found}


def call_back(r: redis.Redis, signer: Signer, message: Any, sns_id: str) -> None:
    """SNS posts ``message`` to the provider's callback URL; applied in this process as
    the task does (a session worker taking the task would judge the rates with its own
    settings: DISPATCH_PAUSE_MIN_SENT 1000)."""
    envelope = signer.sign(notification(message, sns_id))
    headers = {"x-amz-sns-message-type": "Notification", "x-amz-sns-topic-arn": TOPIC}
    nickname, token = callback_path(r, "ses").split("/")[-2:]
    answer = callbacks.ingest(
        nickname,
        token,
        json.dumps(envelope).encode(),
        headers,
        client=r,
        enqueue=lambda batch_id: effects.apply_batch(batch_id, r),
    )
    assert answer.status == 200, answer.body


def test_account_suppression_list_notices_suppress_but_do_not_pause(
    redis_client: redis.Redis, smtp: SmtpTestServer, signer: Signer
) -> None:
    smtp_provider(redis_client, smtp.port, "ses", kind="ses", sns_topic_arns=[TOPIC])
    body = {"provider": "ses", "subject": "s", "html": "h", "recipients": recipients(40)}
    campaign_id, batches = create_held(redis_client, body)
    run_batches(batches[:2])  # 20 sent

    def notice(seq: int, kind: str, sub_type: str) -> None:
        message = ses_notice(redis_client, campaign_id, seq, kind, sub_type)
        call_back(redis_client, signer, message, f"n-{seq}-{kind}")

    # Two addresses SES never tried: on the account's own list for a bounce and for a
    # complaint. As rates of the 20 sent they were 5 % and 5 % (the spam limit 0.3 %).
    notice(0, "Bounce", "OnAccountSuppressionList")
    notice(1, "Complaint", "OnAccountSuppressionList")
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["status"], summary["reason"]) == ("running", "")
    assert (summary["hard_bounced"], summary["spam"]) == (1, 1)  # shown as they are
    for seq in (0, 1):
        assert suppressions.get(f"user{seq}@example.com", client=redis_client) is not None

    # One real hard bounce: 1 of the 18 messages SES tried is past 5 %.
    notice(2, "Bounce", "NoEmail")
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert summary["status"] == "paused"
    assert summary["reason"].startswith(
        "reputation guard: hard bounces are 5.56% of the 18 messages sent (1)"
    ), summary["reason"]
    assert "not counting 2 to addresses on the provider's own suppression list" in summary["reason"]
