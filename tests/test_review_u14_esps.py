"""Generic HTTP configurations for real ESP send APIs (review U14).

Each configuration below is saved through ``save_provider`` (the API's validation) and a
small campaign is sent through it into a local server that checks the request against
the shape the ESP documents (required fields, nesting, arrays) and answers as the ESP
does. The Postmark and SparkPost ones are the README's worked examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from dispatch import campaign_reads
from dispatch.provider_store import save_provider
from tests.helpers import recipients, run_inline
from tests.http_sink import HttpSink, RecordedRequest, Reply

Check = Callable[[RecordedRequest], list[dict[str, Any]]]  # the messages, after checks

POSTMARK = {  # POST https://api.postmarkapp.com/email (README)
    "headers": {"X-Postmark-Server-Token": "pm-token", "Accept": "application/json"},
    "body": {"From": "\"$$FromName\" <$$FromAddress>", "To": "$$To", "Subject": "$$Subject",
             "HtmlBody": "$$HTML", "TextBody": "$$Plaintext", "MessageStream": "broadcast",
             "Metadata": {"meta": "$$MessageID"}},
}  # fmt: skip
SPARKPOST = {  # POST https://api.sparkpost.com/api/v1/transmissions (README)
    "batch": True,
    "headers": {"Authorization": "sp-key"},
    "body": {"campaign_id": "$$CampaignID",
             "content": {"from": {"name": "$$FromName", "email": "$$FromAddress"},
                         "subject": "{{subject}}", "html": "{{{html}}}", "text": "{{{text}}}"},
             "recipients": [{"address": {"email": "$$To"}, "metadata": {"meta": "$$MessageID"},
                             "substitution_data": {"subject": "$$Subject", "html": "$$HTML",
                                                   "text": "$$Plaintext"}}]},
}  # fmt: skip
SENDGRID = {  # POST https://api.sendgrid.com/v3/mail/send
    "headers": {"Authorization": "Bearer SG.key"},
    "body": {"personalizations": [{"to": [{"email": "$$To"}],
                                   "custom_args": {"meta": "$$MessageID"}}],
             "from": {"email": "$$FromAddress", "name": "$$FromName"}, "subject": "$$Subject",
             "content": [{"type": "text/plain", "value": "$$Plaintext"},
                         {"type": "text/html", "value": "$$HTML"}]},
}  # fmt: skip
MAILJET = {  # POST https://api.mailjet.com/v3.1/send, one message a request (see the report)
    "auth": "basic", "username": "mj-public", "password": "mj-private",
    "body": {"Messages": [{"From": {"Email": "$$FromAddress", "Name": "$$FromName"},
                           "To": [{"Email": "$$To"}], "Subject": "$$Subject", "HTMLPart": "$$HTML",
                           "TextPart": "$$Plaintext", "EventPayload": "$$MessageID"}]},
}  # fmt: skip
RESEND_BATCH = {  # POST https://api.resend.com/emails/batch: the body is the array itself
    "batch": True, "batch_size": 100,
    "headers": {"Authorization": "Bearer re_key"},
    "body": [{"from": "$$FromName <$$FromAddress>", "to": ["$$To"], "subject": "$$Subject",
              "html": "$$HTML", "headers": {"X-Dispatch-Meta": "$$MessageID"}}],
}  # fmt: skip
BREVO_BATCH = {  # POST https://api.brevo.com/v3/smtp/email with messageVersions
    "batch": True,
    "headers": {"api-key": "xkeysib-key"},
    "body": {"sender": {"name": "$$FromName", "email": "$$FromAddress"},
             "subject": "-", "htmlContent": "-",  # required at the top, each version overrides
             "messageVersions": [{"to": [{"email": "$$To"}], "subject": "$$Subject",
                                  "htmlContent": "$$HTML"}]},
}  # fmt: skip


def _postmark(req: RecordedRequest) -> list[dict[str, Any]]:
    assert req.header("X-Postmark-Server-Token") == "pm-token"
    msg = req.json()
    assert msg["From"] == '"Acme, Deals" <deals@acme.example>'
    assert all(isinstance(msg[k], str) and msg[k] for k in ("To", "Subject", "HtmlBody"))
    assert isinstance(msg["Metadata"]["meta"], str)
    return [msg]


def _sparkpost(req: RecordedRequest) -> list[dict[str, Any]]:
    assert req.header("Authorization") == "sp-key"
    body = req.json()
    assert body["content"]["from"] == {"name": "Acme, Deals", "email": "deals@acme.example"}
    for rcpt in body["recipients"]:
        assert "@" in rcpt["address"]["email"] and rcpt["substitution_data"]["html"]
    return [r["address"] for r in body["recipients"]]


def _sendgrid(req: RecordedRequest) -> list[dict[str, Any]]:
    assert req.header("Authorization") == "Bearer SG.key"
    body = req.json()
    (personalization,) = body["personalizations"]
    assert [set(t) for t in personalization["to"]] == [{"email"}]
    assert isinstance(personalization["custom_args"]["meta"], str)
    assert body["from"]["email"] == "deals@acme.example" and body["subject"]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    return personalization["to"]  # type: ignore[no-any-return]


def _mailjet(req: RecordedRequest) -> list[dict[str, Any]]:
    assert (req.header("Authorization") or "").startswith("Basic ")
    (msg,) = req.json()["Messages"]
    assert msg["From"]["Email"] == "deals@acme.example" and msg["HTMLPart"]
    return msg["To"]  # type: ignore[no-any-return]


def _resend(req: RecordedRequest) -> list[dict[str, Any]]:
    assert req.header("Authorization") == "Bearer re_key"
    body = req.json()
    assert isinstance(body, list)
    for email in body:
        assert email["from"] == "Acme, Deals <deals@acme.example>"  # (see the report)
        assert isinstance(email["to"], list) and email["subject"] and email["html"]
    return body  # type: ignore[no-any-return]


def _brevo(req: RecordedRequest) -> list[dict[str, Any]]:
    assert req.header("api-key") == "xkeysib-key"
    body = req.json()
    assert "to" not in body and body["sender"]["email"] == "deals@acme.example"
    versions = body["messageVersions"]
    assert all(set(v) == {"to", "subject", "htmlContent"} for v in versions)
    return [to for v in versions for to in v["to"]]


CASES: dict[str, tuple[dict[str, Any], Check, Reply]] = {
    "postmark": (POSTMARK, _postmark, Reply(200, b'{"ErrorCode": 0, "Message": "OK"}')),
    "sparkpost": (SPARKPOST, _sparkpost, Reply(200, b'{"results": {"id": "1"}}')),
    "sendgrid": (SENDGRID, _sendgrid, Reply(202, b"")),
    "mailjet": (MAILJET, _mailjet, Reply(200, b'{"Messages": [{"Status": "success"}]}')),
    "resend": (RESEND_BATCH, _resend, Reply(200, b'{"data": [{"id": "1"}]}')),
    "brevo": (BREVO_BATCH, _brevo, Reply(201, b'{"messageIds": ["<1@relay>"]}')),
}


@pytest.mark.parametrize("esp", list(CASES))
def test_a_campaign_reaches_the_esp_in_its_documented_shape(
    esp: str, redis_client: redis.Redis
) -> None:
    config, check, ok = CASES[esp]
    delivered: list[str] = []
    problems: list[str] = []

    def answer(req: RecordedRequest) -> Reply:
        try:
            messages = check(req)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            problems.append(repr(exc))
            return Reply(400, json.dumps({"error": repr(exc)}).encode())
        delivered.extend(m.get("email") or m.get("Email") or m.get("To") or m["to"][0]
                         for m in messages)  # fmt: skip
        return ok

    with HttpSink(answer=answer) as sink:
        save_provider(
            {"nickname": "esp", "kind": "http", "endpoint": f"{sink.url}/send",
             "from_name": "Acme, Deals", "from_address": "deals@acme.example", **config},
            redis_client,
        )  # fmt: skip
        body = {"provider": "esp", "subject": "Hi {{ name }}", "html": '<p>"{{ name }}"</p>',
                "recipients": recipients(3)}  # fmt: skip
        cid, _ = run_inline(redis_client, body)
    assert problems == []
    assert sorted(delivered) == [f"user{i}@example.com" for i in range(3)]
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 3
