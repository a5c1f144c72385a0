"""Review U12: a test message's callbacks without meta name the test, as a campaign's do.

A campaign's sends through SES and SendGrid keep the provider's message id, so that a
callback that comes without the meta (SES without "include original headers", a
SendGrid asynchronous bounce) finds its message (dispatch.provider_ids). A test message
kept none: the bounce of a test to a bad address suppressed the address but named no
message (campaign id ""), so nobody could tell it came from a test. Now its suppression
entry and its ``Notification Failed`` name the test id, and it still counts in no
campaign. A real SMTP server answers with the provider's ids, the test goes through the
real API, the callback through the real API and the real callback worker.
"""

from __future__ import annotations

from email.parser import BytesParser
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.smtp import Envelope

from dispatch import campaign_reads, suppressions
from dispatch.provider_ids import lookup
from tests.api_server import ApiServer
from tests.api_support import api_client, save_smtp_provider
from tests.callback_support import callback_entries, callback_path, post
from tests.smtp_server import SmtpTestServer
from tests.test_callbacks_ses import Signer, notification, ses_bounce
from tests.test_provider_id_callbacks import SES_IDS, send_campaign, settle, sns_headers

pytestmark = pytest.mark.usefixtures("sns_settings")

BAD = "nobody@example.com"
SES_ID = "0100019276a1b2c3-5f1e2d3c-cccccc-000000"
SG_ID = "Qx7tP2mLRk2aV9dZ1wEsBg"


def send_test(api: httpx.Client, smtp: SmtpTestServer, kind: str, reply: str) -> str:
    """A test message of provider ``kind`` to :data:`BAD`, its server answering ``reply``;
    the message's Message-ID."""
    found: list[str] = []

    def answer(envelope: Envelope) -> str:
        found.append(str(BytesParser().parsebytes(bytes(envelope.content or b""))["Message-ID"]))
        return reply

    smtp.handler.data_reply = answer
    answered = api.post(f"/v1/providers/{kind}/test", json={"to": BAD})
    assert answered.status_code == 200 and answered.json()["ok"], answered.text
    return found[0]


def assert_names_the_test(r: redis.Redis, campaign_id: str) -> None:
    """The bounce suppressed BAD and named a test id, and moved no campaign's counter."""
    entry = suppressions.get(BAD, client=r)
    assert entry is not None and entry["reason"] == "hard_bounce"
    assert entry["campaign_id"].startswith("test-"), entry
    (failed,) = [e for e in callback_entries(r) if e["event"] == "Notification Failed"]
    assert failed["email"] == BAD and failed["campaign_id"] == entry["campaign_id"], failed
    assert failed["meta"].split("|")[2] == entry["campaign_id"]
    assert campaign_reads.get_counters(campaign_id, r)["hard_bounced"] == 0


@pytest.mark.usefixtures("celery_worker")
def test_an_ses_bounce_of_a_test_message_without_headers_names_the_test(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer, signer: Signer
) -> None:
    with api_client(api_server) as api:
        send_campaign(api, smtp, "ses", SES_IDS, "250 Ok {}")  # a campaign: seq 0 is ann's
        send_test(api, smtp, "ses", f"250 Ok {SES_ID}")
        message = ses_bounce([BAD], messageId=SES_ID)
        for field in ("headers", "headersTruncated"):  # "include original headers" off
            del message["mail"][field]
        envelope = signer.sign(notification(message, "n-test"))
        path = callback_path(redis_client, "ses")
        assert post(api, path, envelope, sns_headers(envelope)).status_code == 200
        settle(redis_client)
        # A campaign's test message (bo's, seq 1, to another address) keeps its id too.
        smtp.handler.data_reply = lambda envelope: f"250 Ok {SES_ID}-2"
        answered = api.post("/v1/campaigns/ses-ids/test", json={"to": "qa@example.com", "seq": 1})
        assert answered.status_code == 200 and answered.json()["ok"], answered.text
    assert_names_the_test(redis_client, "ses-ids")
    (meta,) = lookup(redis_client, [f"{SES_ID}-2"], 7).values()
    assert meta.startswith("qa@example.com|") and meta.split("|")[2].startswith("test-"), meta
    assert meta.split("|")[6] == "1"  # bo's seq


@pytest.mark.usefixtures("celery_worker")
def test_a_sendgrid_async_bounce_of_a_test_message_names_the_test(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A delivered event by the queued-as id, then an asynchronous bounce with only the
    smtp-id (the message's own Message-ID, with an authenticated sender domain)."""
    with api_client(api_server) as api:
        send_campaign(api, smtp, "sendgrid", SES_IDS, "250 Ok: queued as {}")
        message_id = send_test(api, smtp, "sendgrid", f"250 Ok: queued as {SG_ID}")
        events: list[dict[str, Any]] = [
            {"event": "delivered", "email": BAD, "timestamp": 1730714616,
             "sg_event_id": "t-1", "sg_message_id": f"{SG_ID}.filterdrecv-1"},
            {"event": "bounce", "email": BAD, "timestamp": 1730714618, "sg_event_id": "t-2",
             "smtp-id": message_id},
        ]  # fmt: skip
        assert post(api, callback_path(redis_client, "sendgrid"), events).status_code == 200
        settle(redis_client)
    assert_names_the_test(redis_client, "sendgrid-ids")
    (delivered,) = [
        e for e in callback_entries(redis_client) if e["event"] == "Notification Delivered"
    ]
    assert delivered["campaign_id"].startswith("test-"), delivered
    assert campaign_reads.get_counters("sendgrid-ids", redis_client)["delivered"] == 0


def test_a_test_message_through_plain_smtp_keeps_no_id(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Other kinds' callbacks carry the meta: their ids are not kept, for tests either."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port, "smtp")
        send_test(api, smtp, "smtp", f"250 Ok {SES_ID}")
    assert not redis_client.keys("dispatch:provider-ids:*")
