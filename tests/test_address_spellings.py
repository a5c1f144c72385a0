"""One recipient, many spellings: case, IDN forms, a root dot, a display name.

The suppression list, the campaign's address list, callbacks and ``?email=`` treat every
spelling of an address as one person (compared caselessly, the domain in its IDNA form),
and an IDN domain is mailed at the host its owner registered (IDNA 2008, UTS #46).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import quote

import httpx
import pytest
import redis

from dispatch.suppressions import suppression_key
from providers.addresses import normalize_address
from providers.callbacks.events import InvalidEvent, normalize_email
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body, wait_for_campaign
from tests.callback_support import callback_entries, inbox_empty
from tests.helpers import campaign_body
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


def test_a_deviation_character_keeps_its_own_domain() -> None:
    # DENIC, the .gr registry and browsers resolve these by IDNA 2008: 'straße.de' is
    # xn--strae-oqa.de, not strasse.de (IDNA 2003, Python's "idna" codec); a final sigma
    # stays a final sigma.
    assert normalize_address("Eve@Straße.de") == "Eve@xn--strae-oqa.de"
    assert normalize_address("x@βόλος.com") == "x@xn--nxasmm1c.com"
    assert normalize_address("x@Bücher.Example") == "x@xn--bcher-kva.example"
    assert normalize_address("x@☃.net") == "x@xn--n3h.net"  # IDNA 2003 took it; still sent
    assert suppression_key("eve@straße.de") == suppression_key("EVE@XN--STRAE-OQA.DE")
    assert suppression_key("eve@straße.de") != suppression_key("eve@strasse.de")


def test_a_root_dot_is_the_same_domain() -> None:
    assert normalize_address("ann@Example.com.") == "ann@example.com"
    assert suppression_key(" Ann@Example.COM. ") == suppression_key("ann@example.com")
    assert suppression_key("jöhn@Bücher.Example.") == suppression_key("JÖHN@xn--bcher-kva.example")


@pytest.mark.parametrize(
    ("reported", "address"),
    [
        ('"Ann" <Ann@Example.COM>', "Ann@example.com"),
        ("Ann Smith <ann@example.com>", "ann@example.com"),
        ("<ann@example.com>", "ann@example.com"),
        (" ann@example.com ", "ann@example.com"),
    ],
)
def test_a_callback_email_in_display_form_is_its_address(reported: str, address: str) -> None:
    assert normalize_email(reported) == address


def test_a_display_form_without_an_address_is_still_refused() -> None:
    with pytest.raises(InvalidEvent):
        normalize_email("Ann <>")


# -- over the real API, worker and servers --------------------------------------------------

SUPPRESSED = ["ANN@EXAMPLE.COM", "anna@xn--bcher-kva.example", " Cy@Example.com. ",
              "ZOE@XN--STRAE-OQA.EXAMPLE"]  # fmt: skip
RECIPIENTS = ["Ann@Example.COM", "Anna@Bücher.Example", "cy@example.com", "zoe@straße.example",
              "eve@straße.example", "eve@strasse.example", "dee@example.com"]  # fmt: skip
# What the provider must get: the others are suppressed in another spelling, and the two
# eves are two people on two domains.
DELIVERED = {"eve@xn--strae-oqa.example", "eve@strasse.example", "dee@example.com"}


def _campaign(campaign_id: str, emails: list[str]) -> dict[str, object]:
    recipients = [{"email": e} for e in emails]
    return campaign_body(campaign_id, 0, subject="Hi", html="<p>Hi</p>", recipients=recipients)


@contextmanager
def _smtp_provider(api: httpx.Client) -> Iterator[Callable[[], set[str]]]:
    with SmtpTestServer() as smtp:
        assert api.put("/v1/providers/local", json=smtp_body(smtp.port)).status_code in (200, 201)
        yield lambda: {to for m in smtp.messages for to in m.rcpt_tos}


@contextmanager
def _http_provider(api: httpx.Client) -> Iterator[Callable[[], set[str]]]:
    with HttpSink() as sink:
        body = {"kind": "http", "method": "POST", "endpoint": f"{sink.url}/send", "batch": True,
                "body": {"msgs": [{"to": "$$To", "mid": "$$MessageID", "subject": "$$Subject",
                                   "html": "$$HTML", "from": "$$FromName <$$FromAddress>"}]},
                "from_name": "Acme", "from_address": "deals@acme.example"}  # fmt: skip
        assert api.put("/v1/providers/local", json=body).status_code in (200, 201)
        yield lambda: {m["to"] for request in sink.requests for m in request.json()["msgs"]}


@covers("PUT /v1/suppressions/{email}", "POST /v1/campaigns")
@pytest.mark.parametrize("provider", [_smtp_provider, _http_provider], ids=["smtp", "http"])
def test_an_address_suppressed_in_one_spelling_is_not_sent_in_another(
    provider: Callable[[httpx.Client], AbstractContextManager[Callable[[], set[str]]]],
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    with api_client(api_server) as api, provider(api) as received:
        for email in SUPPRESSED:
            answer = api.put(f"/v1/suppressions/{quote(email, safe='')}", json={"reason": "x"})
            assert answer.status_code == 201, answer.text
        body = _campaign("spell-1", RECIPIENTS)
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "spell-1", lambda s: s["status"] == "completed")
        assert received() == DELIVERED
        assert (done["total"], done["sent"], done["suppressed"]) == (7, 3, 4)
        messages = api.get("/v1/campaigns/spell-1/messages").json()["items"]
    assert {m["email"] for m in messages if m["status"] == "suppressed"} == {
        "Ann@Example.COM", "Anna@Bücher.Example", "cy@example.com", "zoe@straße.example"
    }  # fmt: skip


@covers("POST /v1/callbacks/{nickname}/{token}", "GET /v1/suppressions/{email}")
def test_callbacks_in_other_spellings_count_for_the_campaigns_recipient(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    people = ["Dee@Bücher.Example", "Fay@Example.com", "eve@xn--strae-oqa.example",
              "Gina@Bücher.Example"]  # fmt: skip
    with SmtpTestServer() as smtp, api_client(api_server) as api:
        view = api.put("/v1/providers/local", json=smtp_body(smtp.port)).json()
        body = _campaign("spell-2", people)
        assert api.post("/v1/campaigns", json=body).status_code == 201
        wait_for_campaign(api, "spell-2", lambda s: s["status"] == "completed")
        sent = api.get("/v1/campaigns/spell-2/messages").json()["items"]
        meta = {m["email"]: m["meta"] for m in sent}
        events = [
            {"type": "hard_bounce", "email": "DEE@BÜCHER.EXAMPLE", "meta": meta[people[0]]},
            {"type": "unsubscribed", "email": '"Fay" <fay@example.com>', "meta": meta[people[1]]},
            {"type": "spam", "email": "Eve@Straße.Example.", "meta": meta[people[2]]},
        ]
        path = httpx.URL(view["callback_url"]).path
        answer = api.post(path, json={"version": "v2", "events": {"failed": events}})
        assert answer.json() == {"status": "success", "message": "Callback processed successfully"}
        legacy = {"event": "hardbounce", "data": [{"e": "GINA@XN--BCHER-KVA.EXAMPLE", "ts": 1}]}
        assert api.post(path, json=legacy).status_code == 200
        wait_for(lambda: inbox_empty(redis_client), timeout=60)
        done = api.get("/v1/campaigns/spell-2").json()
        assert (done["hard_bounced"], done["unsubscribed"], done["spam"]) == (1, 1, 1)
        for email in people:  # suppressed, and found in the campaign's own spelling
            assert api.get(f"/v1/suppressions/{quote(email, safe='')}").status_code == 200
            found = api.get("/v1/campaigns/spell-2/messages", params={"email": email.upper()})
            assert [m["email"] for m in found.json()["items"]] == [email]
    for entry in callback_entries(redis_client):
        assert "Meta Email Mismatch" not in entry["properties"], entry


@covers("POST /v1/campaigns", "POST /v1/campaigns/{campaign_id}/recipients")
def test_a_non_ascii_local_part_needs_a_server_that_offers_smtputf8(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """RFC 6531 addresses are taken (inline and appended, in NFC); they go out by SMTP
    only with SMTPUTF8. To a server that does not offer it such a recipient fails alone,
    saying so and naming the server; its neighbours go out, and nothing is downgraded."""
    with SmtpTestServer() as smtp, api_client(api_server) as api:
        api.put("/v1/providers/local", json=smtp_body(smtp.port))
        body = _campaign("spell-3", ["jöhn@example.com", "ok@example.com"])
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "spell-3", lambda s: s["status"] == "completed")
        assert (done["sent"], done["failed"]) == (1, 1)
        assert [m.rcpt_tos for m in smtp.messages] == [["ok@example.com"]]
        assert "SMTPUTF8" not in smtp.messages[0].mail_options
        found = api.get("/v1/campaigns/spell-3/messages", params={"email": "JÖHN@example.com"})
        (failed,) = found.json()["items"]
        assert failed["error_class"] == "SMTP invalid email ID"
        assert failed["detail"] == (
            "'jöhn@example.com' needs SMTPUTF8 (RFC 6531), which the server 127.0.0.1 "
            "does not offer"
        )
        draft = {**_campaign("spell-4", []), "draft": True}
        assert api.post("/v1/campaigns", json=draft).status_code == 201
        # "jo" + combining diaeresis + "hn" (NFD) is the same person as "jöhn" (NFC).
        lines = b'{"email": "jo\xcc\x88hn@example.com"}\n{"email": "ok@example.com"}\n'
        headers = {"Content-Type": "application/x-ndjson"}
        answer = api.post("/v1/campaigns/spell-4/recipients", content=lines, headers=headers)
        assert (answer.json()["appended"], answer.json()["errors"]) == (2, [])
        again = b'{"email": "J\xc3\x96HN@example.com"}\n'
        answer = api.post("/v1/campaigns/spell-4/recipients", content=again, headers=headers)
        assert (answer.json()["appended"], answer.json()["duplicates"]) == (0, 1)


@covers("POST /v1/campaigns/{campaign_id}/retry-failed")
def test_a_message_failed_for_want_of_smtputf8_is_sent_by_retry_failed_once_offered(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """The refusal is the server's, not the address's: once the provider points at a
    server offering SMTPUTF8 (or its server is upgraded), retry-failed sends it. An
    address refused for good (550 5.1.1) is still not retried."""
    with SmtpTestServer() as ascii_only, api_client(api_server) as api:
        ascii_only.handler.rcpt_reply = lambda a: (  # type: ignore[assignment]
            "550 5.1.1 no such user" if a.startswith("gone@") else None
        )
        api.put("/v1/providers/local", json=smtp_body(ascii_only.port))
        body = _campaign("spell-9", ["jöhn@example.com", "gone@example.com", "ok@example.com"])
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "spell-9", lambda s: s["status"] == "completed")
        assert (done["sent"], done["failed"]) == (1, 2)
    with SmtpTestServer(smtputf8=True) as smtp, api_client(api_server) as api:
        api.put("/v1/providers/local", json=smtp_body(smtp.port))
        report = api.post("/v1/campaigns/spell-9/retry-failed").json()
        assert (report["retried"], report["skipped_not_retryable"]) == (1, 1)
        done = wait_for_campaign(api, "spell-9", lambda s: s["status"] == "completed")
        assert (done["sent"], done["failed"]) == (2, 1)
        assert [m.rcpt_tos for m in smtp.messages] == [["jöhn@example.com"]]
        assert "SMTPUTF8" in smtp.messages[0].mail_options


@covers("POST /v1/campaigns")
def test_a_non_ascii_local_part_goes_out_with_smtputf8(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """To a server offering SMTPUTF8: the envelope and the To and meta headers carry the
    address in UTF-8 (RFC 6532), in NFC; ASCII neighbours go out without the parameter."""
    with SmtpTestServer(smtputf8=True) as smtp, api_client(api_server) as api:
        api.put("/v1/providers/local", json=smtp_body(smtp.port))
        body = _campaign(
            "spell-5", ["用户@例子.广告", "jo\u0308hn@Bücher.example", "ok@example.com"]
        )
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "spell-5", lambda s: s["status"] == "completed")
        assert (done["sent"], done["failed"]) == (3, 0)
        by_rcpt = {m.rcpt_tos[0]: m for m in smtp.messages}
        assert set(by_rcpt) == {
            "用户@xn--fsqu00a.xn--4rr70v",
            "jöhn@xn--bcher-kva.example",
            "ok@example.com",
        }
        for address, received in by_rcpt.items():
            utf8 = ["BODY=8BITMIME", "SMTPUTF8"] if not address.isascii() else []
            assert received.mail_options == utf8
            message = received.message
            assert message["To"] == address
            assert message["X-CleverTap_META"].startswith(f"{address}|")


@covers("POST /v1/campaigns")
def test_a_non_ascii_local_part_goes_to_an_http_provider_as_it_is(
    api_server: ApiServer, celery_worker: WorkerProcess
) -> None:
    with api_client(api_server) as api, _http_provider(api) as delivered:
        body = _campaign("spell-6", ["Jo\u0308hn@Bücher.example", "ok@example.com"])
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "spell-6", lambda s: s["status"] == "completed")
        assert (done["sent"], done["failed"]) == (2, 0)
        assert delivered() == {"Jöhn@xn--bcher-kva.example", "ok@example.com"}
