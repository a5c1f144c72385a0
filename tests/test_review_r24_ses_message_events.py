"""Review R24: an SES event about the whole message (a Click) is its recipient's, not
every address of the transaction's.

SES names no recipient for a Click (reference §1.4: open and click are per message) and
lists every envelope recipient in ``mail.destination``; a message sent with a Cc or Bcc
in the same transaction (no one-click unsubscribe, so one transaction) made one click of
its recipient a click of every Cc and Bcc. The meta SES returns in the original headers
names the message's own recipient: the click is that one's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, effects, store
from dispatch.provider_store import save_provider
from providers.callbacks import EventType, parse_ses_message
from tests.callback_support import TOPIC, callback_entries, callback_path, inbox_empty, post
from tests.helpers import run_inline
from tests.smtp_server import SmtpTestServer
from tests.test_callback_gateway import sns_headers
from tests.test_callbacks_ses import Signer, notification
from tests.test_review_m4_roundtrip import header_fields

# signer and sns_settings (conftest): SNS envelopes signed and verified.
pytestmark = pytest.mark.usefixtures("sns_settings")

SES_ID = "0100019276a1b2c3-5f1e2d3c-7a8b9c-000000"


def click(destination: list[str], headers: list[tuple[str, str]]) -> dict[str, Any]:
    """SES's event-publishing Click of a message (its original headers included, as
    event publishing always does, reference §1.4)."""
    return {
        "eventType": "Click",
        "mail": {
            "timestamp": "2024-11-04T10:03:37.412Z",
            "source": "deals@acme.example",
            "messageId": SES_ID,
            "destination": destination,
            "headersTruncated": False,
            "headers": [{"name": n, "value": v} for n, v in headers],
            "tags": {"ses:configuration-set": ["cs1"]},
        },
        "click": {
            "ipAddress": "192.0.2.1",
            "link": "https://shop.example/",
            "linkTags": {},
            "timestamp": "2024-11-04T10:05:00.000Z",
            "userAgent": "Mozilla/5.0",
        },
    }


def test_a_click_is_the_messages_recipients_not_its_bcc(
    redis_client: redis.Redis, api: httpx.Client, signer: Signer
) -> None:
    r = redis_client
    sent: list[tuple[list[str], bytes]] = []
    with SmtpTestServer() as smtp:

        def reply(envelope: Any) -> str:
            sent.append((list(envelope.rcpt_tos), bytes(envelope.content)))
            return f"250 Ok {SES_ID}"

        smtp.handler.data_reply = reply
        save_provider(
            {"nickname": "ses", "kind": "ses", "host": "127.0.0.1", "port": smtp.port,
             "security": "none", "sns_topic_arns": [TOPIC], "configuration_set": "cs1",
             "from_name": "Acme", "from_address": "deals@acme.example"},
            r,
        )  # fmt: skip
        run_inline(
            r,
            {"id": "r24-click", "provider": "ses", "subject": "s", "html": "<p>h</p>",
             "cc": ["boss@example.com"], "bcc": ["archive@acme.example"],
             "recipients": [{"email": "Ann@Example.com"}]},
        )  # fmt: skip
    ((destination, data),) = sent  # one transaction: To, Cc, Bcc
    assert len(destination) == 3

    envelope = signer.sign(notification(click(destination, header_fields(data)), "r24-c1"))
    answer = post(api, callback_path(r, "ses"), envelope, sns_headers(envelope))
    assert answer.status_code == 200, answer.text
    for batch_id in r.zrange(store.CALLBACK_PENDING_ZSET, 0, -1):
        effects.apply_batch(batch_id, r)
    assert inbox_empty(r)

    assert campaign_reads.get_counters("r24-click", r)["clicked"] == 1
    (entry,) = callback_entries(r)  # was one for ann, boss@ and archive@ each
    assert (entry["event"], entry["email"], entry["campaign_id"]) == (
        "Notification Clicked", "Ann@example.com", "r24-click"
    )  # fmt: skip
    assert "Meta Email Mismatch" not in entry["properties"]


def test_a_click_whose_meta_names_no_destination_stays_every_destinations() -> None:
    """A copy sent to the Cc alone carries its To's meta: that click is the Cc's
    (flagged when applied), as is each destination's when no meta came back."""
    meta = "ann@example.com|1|c|20241104|0|default|0|"
    copy = parse_ses_message(json.dumps(
        click(["boss@example.com"], [("X-CleverTap_META", meta)])
    ))  # fmt: skip
    assert [(e.type, e.email) for e in copy.events] == [(EventType.CLICKED, "boss@example.com")]
    bare = click(["ann@example.com", "boss@example.com"], [])
    bare_events = parse_ses_message(json.dumps(bare)).events
    assert [e.email for e in bare_events] == ["ann@example.com", "boss@example.com"]
