"""Review C23: an SNS URL with an unbalanced "[" or "]" is a 400, not a 500.

``urlsplit`` raises ``ValueError`` ("Invalid IPv6 URL") for such a URL. The check of
``SigningCertURL`` runs before the signature, so anyone with a provider's callback URL
got a 500 "Server error" (a stack trace in the log, and SNS retrying) for an envelope
DESIGN §6 answers 400: malformed as a whole. A signed ``SubscribeURL`` went the same way.
"""

from __future__ import annotations

import httpx
import pytest
import redis

from tests.callback_support import callback_entries, post, sample
from tests.test_callbacks_ses import Signer, mail, notification

pytestmark = pytest.mark.usefixtures("sns_settings")

SNS_HEADERS = {"Content-Type": "text/plain; charset=UTF-8"}
BRACKETED = [
    "https://[sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com]/x.pem",
]


def delivery(email: str) -> dict[str, object]:
    return {"notificationType": "Delivery", "mail": mail([email]),
            "delivery": {"recipients": [email]}}  # fmt: skip


@pytest.mark.parametrize("url", BRACKETED)
def test_a_certificate_url_with_an_unbalanced_bracket_is_a_400(
    api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    signer: Signer,
    url: str,
) -> None:
    envelope = signer.sign(notification(delivery("a@example.com")))
    envelope["SigningCertURL"] = url

    answer = post(api, paths["ses"], envelope, SNS_HEADERS)

    assert answer.status_code == 400
    assert answer.json() == {
        "status": "error",
        "message": "invalid payload: SigningCertURL is not a URL",
        "error_code": 400,
    }
    assert callback_entries(redis_client) == []


def test_a_signed_subscribe_url_with_an_unbalanced_bracket_is_a_400(
    api: httpx.Client, paths: dict[str, str], signer: Signer
) -> None:
    confirmation = sample("sns-subscription-confirmation.json")
    url = confirmation["SubscribeURL"].replace("https://", "https://[", 1)
    envelope = signer.sign({**confirmation, "SubscribeURL": url})

    answer = post(api, paths["ses"], envelope, SNS_HEADERS)

    assert answer.status_code == 400
    assert answer.json()["message"] == "invalid payload: SubscribeURL is not a URL"
