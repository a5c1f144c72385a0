"""Review O3: an SES complaint whose feedback report says ``not-spam`` is no complaint.

RFC 5965 §7.3 (and SES's ``complaintFeedbackType`` values, reference §1.4): ``not-spam``
says the message is not spam, correcting an earlier report. It was taken as a spam
complaint: the address suppressed, the campaign's ``spam`` counted (which can pause it).
It is now recorded and ignored; any other complaint still suppresses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dispatch import store, suppressions
from dispatch.settings import get_settings
from tests.callback_support import post
from tests.test_callbacks_ses import Signer, mail, notification
from tests.test_review_o3_sns_age import SNS_HEADERS, apply_inbox, cert_dir, signer

__all__ = ["cert_dir", "signer"]  # fixtures shared with the SNS age tests
SUCCESS = {"status": "success", "message": "Callback processed successfully"}


@pytest.fixture
def certificates(cert_dir: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPATCH_SNS_CERT_DIR", str(cert_dir))
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


def complaint(email: str, feedback: str, message_id: str) -> dict[str, Any]:
    payload = {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": feedback,
            "timestamp": "2024-11-04T10:10:00.000Z",
        },
        "mail": mail([email]),
    }
    return notification(json.dumps(payload), message_id=message_id)


@pytest.mark.usefixtures("certificates")
def test_a_not_spam_report_suppresses_no_one_while_an_abuse_report_does(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, signer: Signer
) -> None:
    for email, feedback, message_id in [
        ("fine@example.com", "not-spam", "m-not-spam"),
        ("angry@example.com", "abuse", "m-abuse"),
    ]:
        answer = post(api, paths["ses"], signer.sign(complaint(email, feedback, message_id)),
                      SNS_HEADERS)  # fmt: skip
        assert (answer.status_code, answer.json()) == (200, SUCCESS)

    apply_inbox(redis_client)
    assert suppressions.get("fine@example.com", client=redis_client) is None
    assert suppressions.get("angry@example.com", client=redis_client) is not None
    emails = [json.loads(f["json"])["email"] for _, f in redis_client.xrange(store.EVENTS_STREAM)]
    assert emails == ["angry@example.com"]
