"""Callbacks that write the address as a DSN or an old mailer does (review W24).

RFC 3464 §2.3.2 writes a recipient as ``address-type ";" generic-address``
(``Final-Recipient: rfc822; ann@example.com``), which an ESP or a bounce processor that
passes the DSN's field on sends as the event's email; RFC 5322 §4.4's obsolete form
puts the name after the address in a comment (``ann@example.com (Ann)``). Both name the
person the meta names: the event must suppress that person and count for their message.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
import redis

from dispatch.suppressions import suppression_key
from providers.callbacks.events import InvalidEvent, normalize_email
from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body, wait_for_campaign
from tests.callback_support import inbox_empty
from tests.helpers import campaign_body
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


@pytest.mark.parametrize(
    ("reported", "address"),
    [
        ("rfc822;ann@example.com", "ann@example.com"),
        ("rfc822; Ann@Example.COM", "Ann@example.com"),
        ("RFC822;  ann@example.com ", "ann@example.com"),
        ("rfc822;<ann@example.com>", "ann@example.com"),
        ("ann@example.com (Ann Smith)", "ann@example.com"),
        ("Ann@Example.COM (Smith, Ann)", "Ann@example.com"),
    ],
)
def test_a_dsn_or_comment_form_is_its_address(reported: str, address: str) -> None:
    assert normalize_email(reported) == address
    assert suppression_key(normalize_email(reported)) == suppression_key(address)


@pytest.mark.parametrize("reported", ["rfc822;", "rfc822; ", "x400; C=DE;ADMD=;PRMD=acme", "(Ann)"])
def test_a_dsn_form_without_an_internet_address_is_still_refused(reported: str) -> None:
    with pytest.raises(InvalidEvent):
        normalize_email(reported)


def test_dsn_and_comment_forms_suppress_the_campaigns_recipient(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    people = ["Ann.Smith@Example.COM", "bob@example.com", "Cy@Bücher.Example"]
    with SmtpTestServer() as smtp, api_client(api_server) as api:
        view = api.put("/v1/providers/local", json=smtp_body(smtp.port)).json()
        body = campaign_body("w24-forms-1", 0, subject="Hi", html="<p>Hi</p>",
                             recipients=[{"email": e} for e in people])  # fmt: skip
        assert api.post("/v1/campaigns", json=body).status_code == 201
        wait_for_campaign(api, "w24-forms-1", lambda s: s["status"] == "completed")
        sent = api.get("/v1/campaigns/w24-forms-1/messages").json()["items"]
        meta = {m["email"]: m["meta"] for m in sent}
        events = [
            {"type": "hard_bounce", "email": "rfc822;ann.smith@example.com",
             "meta": meta[people[0]], "description": "550 5.1.1 user unknown"},
            {"type": "unsubscribed", "email": "rfc822; BOB@EXAMPLE.COM", "meta": meta[people[1]]},
            {"type": "spam", "email": "cy@xn--bcher-kva.example (Cy)", "meta": meta[people[2]]},
        ]  # fmt: skip
        path = httpx.URL(view["callback_url"]).path
        answer = api.post(path, json={"version": "v2", "events": {"failed": events}})
        assert answer.json() == {"status": "success", "message": "Callback processed successfully"}
        wait_for(lambda: inbox_empty(redis_client), timeout=60)
        done = api.get("/v1/campaigns/w24-forms-1").json()
        assert (done["hard_bounced"], done["unsubscribed"], done["spam"]) == (1, 1, 1)
        for email in people:
            assert api.get(f"/v1/suppressions/{quote(email, safe='')}").status_code == 200
        # The next campaign, in other spellings: nobody gets it.
        smtp.messages.clear()
        again = ["ann.smith@example.com", "Bob@Example.com.", "cy@xn--bcher-kva.example"]
        body = campaign_body("w24-forms-2", 0, subject="Hi", html="<p>Hi</p>",
                             recipients=[{"email": e} for e in again])  # fmt: skip
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "w24-forms-2", lambda s: s["status"] == "completed")
        assert (done["suppressed"], done["sent"]) == (3, 0)
        assert smtp.messages == []
