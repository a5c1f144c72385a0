"""Callbacks without meta find their message by the id the provider gave it at send time.

SES sends a message's original headers (and with them its meta) only when "include
original headers" is on; SendGrid's asynchronous bounces can come without the unique
arguments. Both name the id from the provider's ``250`` reply (reference §1.4, §2.3):
campaigns sent through the real path (real worker, real SMTP server answering with an
id), then the provider's callbacks through the real API, the real callback worker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.smtp import Envelope

from dispatch import callbacks, campaign_reads, effects, store, suppressions
from dispatch.provider_ids import candidates, lookup
from dispatch.settings import get_settings
from providers.meta import build_meta
from tests.api_server import ApiServer
from tests.api_support import api_client, save_smtp_provider, wait_for_campaign
from tests.callback_support import (
    TOPIC,
    callback_entries,
    callback_path,
    inbox_empty,
    post,
)
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_callbacks_ses import Signer, notification, ses_bounce
from tests.test_reputation import small
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.usefixtures("sns_settings")
__all__ = ["small"]  # a fixture: batches of 10, rates judged from 10 sent

SES_IDS = {"ann@example.com": "0100019276a1b2c3-5f1e2d3c-aaaaaa-000000",
           "bo@example.com": "0100019276a1b2c3-5f1e2d3c-bbbbbb-000000"}  # fmt: skip
SG_IDS = {"ann@example.com": "kFQtaSL9T7ePqzCPMZL7fg", "bo@example.com": "Vb3nT6qLQfK1hZ9xW2cRyA"}


def send_campaign(
    api: httpx.Client, smtp: SmtpTestServer, kind: str, ids: dict[str, str], reply: str
) -> dict[str, str]:
    """A campaign to ann and bo through a provider of ``kind`` whose server answers
    ``reply`` with each recipient's id; the Message-ID of each recipient's message."""
    message_ids: dict[str, str] = {}

    def answer(envelope: Envelope) -> str:
        found = BytesParser().parsebytes(bytes(envelope.content or b""))["Message-ID"]
        message_ids[envelope.rcpt_tos[0]] = str(found)
        return reply.format(ids[envelope.rcpt_tos[0]])

    smtp.handler.data_reply = answer
    # SendGrid's username defaults to "apikey": none, for a local server without AUTH.
    extra: dict[str, Any] = {"sns_topic_arns": [TOPIC]} if kind == "ses" else {"username": ""}
    save_smtp_provider(api, smtp.port, kind, kind=kind, **extra)
    body = {"id": f"{kind}-ids", "provider": kind, "subject": "Hi", "html": "<p>hi</p>",
            "recipients": [{"email": email} for email in ids]}  # fmt: skip
    assert api.post("/v1/campaigns", json=body).status_code == 201
    wait_for_campaign(api, f"{kind}-ids", lambda s: s["status"] == "completed")
    return message_ids


def message_callbacks(api: httpx.Client, campaign_id: str) -> dict[str, list[str]]:
    items = api.get(f"/v1/campaigns/{campaign_id}/messages").json()["items"]
    return {m["email"]: m["callbacks"] for m in items}


def sent_meta(r: redis.Redis, campaign_id: str, seq: int) -> str:
    """The meta of message ``seq`` of a campaign to ann and bo, as it went out."""
    send_date = r.hget(store.campaign_key(campaign_id), "send_date")
    return build_meta(
        email=list(SES_IDS)[seq],
        account_id=get_settings().account_id,
        campaign_id=campaign_id,
        send_date=send_date.decode() if isinstance(send_date, bytes) else str(send_date),
        seq=seq,
    )


def settle(r: redis.Redis) -> None:
    wait_for(lambda: inbox_empty(r), timeout=60)


def sns_headers(envelope: dict[str, Any]) -> dict[str, str]:
    return {"x-amz-sns-message-type": envelope["Type"], "x-amz-sns-topic-arn": envelope["TopicArn"]}


def test_an_ses_bounce_without_headers_counts_for_its_message(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
    signer: Signer,
) -> None:
    with api_client(api_server) as api:
        send_campaign(api, smtp, "ses", SES_IDS, "250 Ok {}")
        path = callback_path(redis_client, "ses")

        def bounce(email: str, message_id: str, sns_id: str) -> None:
            message = ses_bounce([email], messageId=message_id)
            for field in ("headers", "headersTruncated"):  # "include original headers" off
                del message["mail"][field]
            envelope = signer.sign(notification(message, sns_id))
            assert post(api, path, envelope, sns_headers(envelope)).status_code == 200

        bounce("ann@example.com", SES_IDS["ann@example.com"], "n-1")
        bounce("bo@example.com", "0100019276a1b2c3-unknown-000000", "n-2")  # an id never sent
        settle(redis_client)

        assert campaign_reads.get_counters("ses-ids", redis_client)["hard_bounced"] == 1
        assert message_callbacks(api, "ses-ids") == {
            "ann@example.com": ["hard_bounced"], "bo@example.com": []
        }  # fmt: skip
    entries = {(e["email"], e["event"]): e for e in callback_entries(redis_client)}
    ann = entries[("ann@example.com", "Notification Failed")]
    # The meta ann's message carried (seq 0), as if SES had sent its headers.
    assert (ann["campaign_id"], ann["meta"]) == ("ses-ids", sent_meta(redis_client, "ses-ids", 0))
    assert entries[("bo@example.com", "Notification Failed")]["campaign_id"] == ""
    # Both still suppress their own address, matched or not.
    assert suppressions.get("ann@example.com", client=redis_client) is not None
    assert suppressions.get("bo@example.com", client=redis_client) is not None


def test_sendgrid_events_without_unique_args_count_for_their_message(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    with api_client(api_server) as api:
        message_ids = send_campaign(api, smtp, "sendgrid", SG_IDS, "250 Ok: queued as {}")
        path = callback_path(redis_client, "sendgrid")
        ann, bo = SG_IDS["ann@example.com"], SG_IDS["bo@example.com"]
        events = [
            # an authenticated sender domain: the smtp-id is the message's own Message-ID
            {"event": "spamreport", "email": "ann@example.com", "timestamp": 1730714616,
             "sg_event_id": "e-0", "smtp-id": message_ids["ann@example.com"]},
            # sg_message_id: the "queued as" id, then SendGrid's filter suffix
            {"event": "delivered", "email": "ann@example.com", "timestamp": 1730714617,
             "sg_event_id": "e-1", "sg_message_id": f"{ann}.filterdrecv-7d9c8b6f5-x2k4m-1-0"},
            # an asynchronous bounce with no sg_message_id: its smtp-id names the message
            {"event": "bounce", "email": "bo@example.com", "timestamp": 1730714618,
             "sg_event_id": "e-2", "smtp-id": f"<{bo}@geopod-ismtpd-12>"},
            # bo's id on another address (a forward): not bo's message, counts nowhere
            {"event": "delivered", "email": "carol@example.com", "timestamp": 1730714619,
             "sg_event_id": "e-3", "sg_message_id": f"{bo}.filterdrecv-7d9c8b6f5-x2k4m-1-0"},
        ]  # fmt: skip
        assert post(api, path, events).status_code == 200
        settle(redis_client)

        counters = campaign_reads.get_counters("sendgrid-ids", redis_client)
        assert (counters["delivered"], counters["hard_bounced"], counters["spam"]) == (1, 1, 1)
        assert message_callbacks(api, "sendgrid-ids") == {
            "ann@example.com": ["delivered", "spam"], "bo@example.com": ["hard_bounced"]
        }  # fmt: skip
    carol = [e for e in callback_entries(redis_client) if e["email"] == "carol@example.com"]
    assert len(carol) == 1 and carol[0]["properties"]["Meta Email Mismatch"] is True


def test_an_event_that_carries_its_meta_is_read_by_its_meta(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """The meta the provider echoed stands: the kept one is only for events without."""
    with api_client(api_server) as api:
        send_campaign(api, smtp, "sendgrid", SG_IDS, "250 Ok: queued as {}")
        path = callback_path(redis_client, "sendgrid")
        ann = SG_IDS["ann@example.com"]
        event = {"event": "click", "email": "ann@example.com", "timestamp": 1730714617,
                 "sg_event_id": "e-9", "sg_message_id": f"{ann}.filter0001",
                 "url": "https://shop.example/", "clevertap_meta": "not|a|meta|"}  # fmt: skip
        assert post(api, path, [event]).status_code == 200
        settle(redis_client)
        assert campaign_reads.get_counters("sendgrid-ids", redis_client)["clicked"] == 0
    (entry,) = callback_entries(redis_client)
    assert entry["meta"] == "not|a|meta|" and entry["campaign_id"] == ""


def test_only_ses_and_sendgrid_sends_are_indexed(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """Other kinds' callbacks carry the meta (the generic format): their ids are not kept."""
    with api_client(api_server) as api:
        send_campaign(api, smtp, "smtp", SES_IDS, "250 Ok {}")
    assert lookup(redis_client, list(SES_IDS.values()), 7) == {}
    assert not redis_client.keys("dispatch:provider-ids:*")


def test_kept_ids_are_found_in_the_days_they_live(redis_client: redis.Redis) -> None:
    meta = "x@example.com|a|c|20000101|0|d|1|"
    today = datetime.now(UTC).strftime("%Y%m%d")
    redis_client.hset(f"dispatch:provider-ids:{today}", "id-1", meta)
    redis_client.hset("dispatch:provider-ids:20000101", "old-id", meta)

    assert lookup(redis_client, ["id-1", "old-id", "other"], 7) == {"id-1": meta}
    assert lookup(redis_client, ["id-1.filter0001"], 7) == {"id-1.filter0001": meta}
    assert lookup(redis_client, ["id-1"], 0) == {}  # DISPATCH_PROVIDER_ID_DAYS=0: off
    assert lookup(redis_client, [], 7) == {}


def test_the_ids_a_callback_id_may_be_kept_under() -> None:
    assert candidates("Vb3n.filterdrecv-1") == ["Vb3n.filterdrecv-1", "Vb3n"]
    assert candidates("14c5d75ce93.dfd.64b469.filter0001.16648.0") == [
        "14c5d75ce93.dfd.64b469.filter0001.16648.0", "14c5d75ce93.dfd.64b469", "14c5d75ce93"
    ]  # fmt: skip
    assert candidates("<Vb3n@geopod-ismtpd-12>") == ["<Vb3n@geopod-ismtpd-12>", "Vb3n"]
    assert candidates("0100019276a1b2c3-5f1e2d3c-000000") == ["0100019276a1b2c3-5f1e2d3c-000000"]


@pytest.mark.usefixtures("small")
def test_matched_bounces_pause_a_campaign_past_the_reputation_limit(
    redis_client: redis.Redis, smtp: SmtpTestServer, signer: Signer
) -> None:
    """The reputation guard looks at the campaigns of the matched events too: SES bounces
    without headers pause the campaign they are about, as they would with them."""
    smtp.handler.data_reply = lambda envelope: f"250 Ok id-{envelope.rcpt_tos[0]}-000000"
    smtp_provider(redis_client, smtp.port, "ses", kind="ses", sns_topic_arns=[TOPIC])
    body = {"provider": "ses", "subject": "s", "html": "h", "recipients": recipients(30)}
    campaign_id, batches = create_held(redis_client, body)
    run_batches(batches[:1])  # 10 sent, 20 to go

    message = ses_bounce(["user2@example.com"], messageId="id-user2@example.com-000000")
    for field in ("headers", "headersTruncated"):
        del message["mail"][field]
    envelope = signer.sign(notification(message, "n-9"))
    nickname, token = callback_path(redis_client, "ses").split("/")[-2:]
    answer = callbacks.ingest(
        nickname, token, json.dumps(envelope).encode(), sns_headers(envelope),
        client=redis_client, enqueue=lambda batch_id: effects.apply_batch(batch_id, redis_client),
    )  # fmt: skip
    assert answer.status == 200, answer.body

    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (summary["hard_bounced"], summary["status"]) == (1, "paused")  # 1 of 10 > 5 %
    assert summary["reason"].startswith("reputation guard: hard bounces")
