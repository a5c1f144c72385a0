"""Input that would make every message of a campaign fail (or the API answer 500) is
refused when it is given, with 422 naming the field, over HTTP on the real app."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dispatch import store
from dispatch.provider_store import save_provider
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider, smtp_body
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer


def draft(campaign_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hello",
        "html": "<p>Hi</p>",
        "draft": True,
        **fields,
    }


def assert_refused(answer: Any, field: str) -> dict[str, Any]:
    """A 422 in the README's shape, naming ``field``; returns the body."""
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()
    assert set(error) == {"detail", "field", "errors"}, error
    assert error["field"] == field, error
    assert error["detail"].startswith(f"{field}: "), error  # named once, first
    assert error["errors"] and error["errors"][0]["field"] == field, error
    assert_named_once(error)
    return error


def assert_named_once(error: dict[str, Any]) -> None:
    """Each problem's message does not name its field again (``body: body (...)`` did),
    and ``detail`` is the first problem, field first."""
    first = error["errors"][0]
    assert error["detail"].startswith(f"{first['field']}: {first['message']}"), error
    for problem in error["errors"]:
        message = problem["message"].removeprefix("the ")
        assert not message.startswith(problem["field"].split(".")[0]), error
        assert re.fullmatch(r"[A-Za-z_-][\w.\[\]-]*", problem["field"]), error


@covers("POST /v1/campaigns")
def test_meta_fields_must_be_printable_ascii(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Category and variant go into the X-CleverTap_META header of every message."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        for field, value in (
            ("category", "café"),
            ("variant", "ü"),
            ("category", "tab\there"),
            ("variant", "a|b"),
        ):
            answer = api.post("/v1/campaigns", json=draft("meta-1", **{field: value}))
            assert "ASCII" in assert_refused(answer, field)["detail"]
        ok = api.post("/v1/campaigns", json=draft("meta-2", category="Spring sale", variant="B~2"))
        assert ok.status_code == 201, ok.text
        assert [c["id"] for c in api.get("/v1/campaigns").json()["items"]] == ["meta-2"]


@covers("POST /v1/campaigns")
def test_campaign_senders_and_subject_that_no_message_could_carry_are_refused(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"from_address": "nope"}, "from_address"),
        ({"from_address": "bad address@x.example"}, "from_address"),
        ({"reply_to": "a@x.example\r\nBcc: victim@y.example"}, "reply_to"),
        ({"reply_to": "a@x.example, b@x.example"}, "reply_to"),
        ({"cc": ["not-email"]}, "cc"),
        ({"bcc": ["b@x.example", ""]}, "bcc"),
        ({"from_name": "Acme\r\nBcc: victim@y.example"}, "from_name"),
        ({"from_name": "Acme\u2028Deals"}, "from_name"),
        ({"subject": "Hello\nthere {{ name }}", "vars": {"name": "A"}}, "subject"),
        ({"subject": "{% if vip %}Dear\r\nVIP{% endif %}", "vars": {"vip": True}}, "subject"),
    ]
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        for fields, field in cases:
            assert_refused(api.post("/v1/campaigns", json=draft("sender-1", **fields)), field)
        assert api.get("/v1/campaigns").json()["items"] == []

        # What every message can carry: IDNA domains, an address spaced, line breaks
        # around the subject (the rendered subject is stripped), a value's own line
        # break (that message alone fails).
        good = draft(
            "sender-2",
            from_name="Acme Deals \u00e9t\u00e9",
            from_address="deals@b\u00fccher.example",
            reply_to=" replies@acme.example ",
            cc=["copy@acme.example"],
            bcc=["audit@acme.example"],
            subject="Hello {{ name }}\n",
            vars={"name": "A\nB"},
        )
        answer = api.post("/v1/campaigns", json=good)
        assert answer.status_code == 201, answer.text


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers", "POST /v1/campaigns")
def test_provider_senders_are_checked_on_save_and_a_campaign_needs_a_from_address(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        for fields, field in (
            ({"from_address": "not-an-email"}, "from_address"),
            ({"reply_to": "nope"}, "reply_to"),
            ({"from_name": "Acme\u2028Deals"}, "from_name"),
        ):
            assert_refused(
                api.put("/v1/providers/local", json=smtp_body(smtp.port, **fields)), field
            )
        assert api.get("/v1/providers").json()["items"] == []

        # No default sender: saved, with a warning; each campaign must then give one.
        no_sender = {k: v for k, v in smtp_body(smtp.port).items() if k != "from_address"}
        saved = api.put("/v1/providers/local", json=no_sender)
        assert saved.status_code == 201, saved.text
        assert any("from_address" in w for w in saved.json()["warnings"])
        assert_refused(api.post("/v1/campaigns", json=draft("nosender-1")), "from_address")
        given = draft("nosender-2", from_address="deals@acme.example")
        assert api.post("/v1/campaigns", json=given).status_code == 201


@covers("GET /v1/providers/{nickname}", "GET /v1/providers")
def test_a_provider_saved_before_a_rule_still_loads(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Checks of what a user gives run on save: a configuration stored before one existed
    still reads (its campaigns, callbacks and the listing need it)."""
    save_provider({**smtp_body(2525), "nickname": "old"}, redis_client)
    key = store.provider_key("old")
    stored = json.loads(redis_client.get(key))  # type: ignore[arg-type]
    redis_client.set(key, json.dumps({**stored, "from_address": "not-an-email"}))
    with api_client(api_server) as api:
        answer = api.get("/v1/providers/old")
        assert answer.status_code == 200, answer.text
        assert answer.json()["from_address"] == "not-an-email"
        assert [p["nickname"] for p in api.get("/v1/providers").json()["items"]] == ["old"]


WIDE = 123456789012345678901234567890  # beyond 64 bits: orjson can neither write nor read it


@covers(
    "PUT /v1/providers/{nickname}",
    "POST /v1/campaigns",
    "POST /v1/campaigns/{campaign_id}/recipients",
)
def test_integers_beyond_64_bits_are_refused_naming_them_never_a_500(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    http = {
        "kind": "http",
        "endpoint": "http://127.0.0.1:9/send",
        "body": {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress",
                 "h": "$$HTML", "ids": [1, {"big": WIDE}]},
    }  # fmt: skip
    with api_client(api_server) as api:
        answer = api.put("/v1/providers/hook", json=http)
        assert "body.ids.1.big" in assert_refused(answer, "body")["detail"]
        for field in ("daily_quota", "max_messages_per_connection", "max_recipients_per_message"):
            answer = api.put("/v1/providers/local", json=smtp_body(smtp.port, **{field: WIDE}))
            assert_refused(answer, field)
        save_smtp_provider(api, smtp.port)

        answer = api.post("/v1/campaigns", json=draft("wide-1", vars={"x": {"y": [WIDE]}}))
        assert "64 bits" in assert_refused(answer, "vars.x.y.0")["detail"]
        inline = [{"email": "a@example.com"}, {"email": "b@example.com", "vars": {"n": -WIDE}}]
        answer = api.post("/v1/campaigns", json=draft("wide-1", recipients=inline))
        assert_refused(answer, "recipients.1.vars.n")
        assert api.get("/v1/campaigns").json()["items"] == []

        # The widest integers that round-trip exactly are taken.
        edges = {"top": 2**64 - 1, "bottom": -(2**63)}
        answer = api.post("/v1/campaigns", json=draft("wide-2", vars=edges))
        assert answer.status_code == 201, answer.text
        lines = (
            b'{"email": "c@example.com", "vars": {"n": 123456789012345678901234567890}}\n'
            b'{"email": "d@example.com", "vars": {"n": "123456789012345678901234567890"}}\n'
            b'{"email": "e@example.com", "vars": {"n": -9223372036854775808}}\n'
        )
        result = api.post("/v1/campaigns/wide-2/recipients", content=lines).json()
        assert (result["appended"], result["rejected"]) == (2, 1), result
        assert [(e["line"], e["field"]) for e in result["errors"]] == [(1, "vars.n")]


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_callback_settings_that_would_refuse_every_callback(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A SendGrid key that does not load would make every callback a 500; an SNS topic
    allow-list of non-ARNs, or an empty one, refuses every SES callback."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    good_key = base64.b64encode(der).decode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_der = rsa_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    sender = {"from_address": "deals@acme.example"}
    with api_client(api_server) as api:
        body: dict[str, Any]
        for bad in ("abc", "notbase64!!", base64.b64encode(rsa_der).decode()):
            body = {"kind": "sendgrid", "webhook_public_key": bad, **sender}
            assert_refused(api.put("/v1/providers/sg", json=body), "webhook_public_key")
        body = {"kind": "sendgrid", "webhook_public_key": good_key, **sender}
        assert api.put("/v1/providers/sg", json=body).status_code == 201

        topic = "arn:aws:sns:us-east-1:123456789012:ses-campaign-events"
        for bad_list in (["not-an-arn"], [topic, "arn:aws:sqs:us-east-1:123456789012:q"]):
            body = {"kind": "ses", "sns_topic_arns": bad_list, **sender}
            assert_refused(api.put("/v1/providers/ses", json=body), "sns_topic_arns")
        for arns, warned in (([topic, f"{topic}.fifo"], False), ([], True)):
            body = {"kind": "ses", "sns_topic_arns": arns, **sender}
            assert api.put("/v1/providers/ses", json=body).status_code in (200, 201)
            warnings = api.get("/v1/providers/ses").json()["warnings"]
            assert any("sns_topic_arns" in w for w in warnings) is warned, warnings


@covers("PUT /v1/providers/{nickname}")
def test_provider_numbers_are_numbers(api_server: ApiServer, redis_client: redis.Redis) -> None:
    """``"port": true`` was stored as port 1; a boolean or a string is no number."""
    http = {
        "kind": "http",
        "endpoint": "http://127.0.0.1:9/send",
        "body": {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress",
                 "h": "$$HTML"},
    }  # fmt: skip
    cases = [
        (smtp_body(25), "port", True),
        (smtp_body(25), "port", "587"),
        (smtp_body(25), "max_connections", True),
        (smtp_body(25), "daily_quota", False),
        (smtp_body(25), "max_messages_per_connection", True),
        (smtp_body(25), "max_recipients_per_message", 2.0),
        (smtp_body(25), "rate_per_second", True),
        (smtp_body(25), "timeout", True),
        (http, "batch_size", True),
    ]
    with api_client(api_server) as api:
        for base, field, value in cases:
            assert_refused(api.put("/v1/providers/p", json={**base, field: value}), field)
        numbers = {"port": 2525, "max_connections": 2, "rate_per_second": 5, "timeout": 2.5}
        saved = api.put("/v1/providers/p", json={**smtp_body(25), **numbers})
        assert saved.status_code == 201, saved.text
        assert {k: saved.json()[k] for k in numbers} == {**numbers, "rate_per_second": 5.0}


@covers("POST /v1/campaigns")
def test_a_campaign_cannot_expire_before_it_may_send(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """It would end ``completed`` (or ``expired``) with every message expired."""
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        for fields in (
            {"expires_at": (now - hour).isoformat()},
            {"send_at": (now + 2 * hour).isoformat(), "expires_at": (now + hour).isoformat()},
            {"send_at": (now + hour).isoformat(), "expires_at": (now + hour).isoformat()},
        ):
            answer = api.post("/v1/campaigns", json=draft("exp-1", **fields))
            assert_refused(answer, "expires_at")
        later = {"send_at": (now + hour).isoformat(), "expires_at": (now + 2 * hour).isoformat()}
        assert api.post("/v1/campaigns", json=draft("exp-2", **later)).status_code == 201
        soon = {"expires_at": (now + hour).isoformat()}
        assert api.post("/v1/campaigns", json=draft("exp-3", **soon)).status_code == 201


@covers(
    "GET /v1/campaigns",
    "POST /v1/campaigns",
    "PUT /v1/providers/{nickname}",
    "POST /v1/campaigns/{campaign_id}/start",
    "POST /v1/campaigns/{campaign_id}/pause",
)
def test_every_api_error_has_the_same_shape(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """``{"detail": "<field>: <message>", "field", "errors"}`` (README), whatever the
    status and whoever raised it; the callbacks keep their own answers (DESIGN §6)."""
    with api_client(api_server, token=None) as anonymous:
        for token in (None, "wrong-token"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = anonymous.get("/v1/campaigns", headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            error = answer.json()
            assert error["field"] == "authorization" and error["detail"].startswith(
                "authorization: "
            ), error
            assert [e["field"] for e in error["errors"]] == ["authorization"]

    with api_client(api_server, token=API_TOKEN) as api:
        not_utf8 = b'{"kind": "sm\xe9tp"}'
        json_type = {"Content-Type": "application/json"}
        for method, path in (("POST", "/v1/campaigns"), ("PUT", "/v1/providers/local")):
            answer = api.request(method, path, content=not_utf8, headers=json_type)
            assert_refused(answer, "body")

        error = assert_refused(api.put("/v1/providers/local", json={"kind": "smtp"}), "host")
        assert error["detail"] == "host: required for this kind"
        assert error["errors"] == [{"field": "host", "message": "required for this kind"}]

        save_smtp_provider(api, smtp.port)
        assert api.post("/v1/campaigns", json=draft("shape-1")).status_code == 201
        assert api.post("/v1/campaigns/shape-1/cancel").status_code == 200
        for operation in ("start", "pause"):
            answer = api.post(f"/v1/campaigns/shape-1/{operation}")
            assert answer.status_code == 409, answer.text
            error = answer.json()
            assert error["field"] == "status" and error["detail"].startswith("status: "), error

        callback = api.put("/v1/callbacks/local/some-token")
        assert callback.status_code == 405 and callback.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize(("kind", "limit"), [("ses", 50), ("gmail", 100)])
def test_cc_and_bcc_past_the_providers_recipients_per_message_are_refused(
    redis_client: redis.Redis, kind: str, limit: int
) -> None:
    """Cc and Bcc go with every message: past the provider's limit (SES 50 by reference §4,
    Gmail 100) each message would fail; the campaign is refused when it is created."""
    from dispatch import campaigns
    from dispatch.models import CampaignRequest
    from dispatch.provider_store import save_provider

    save_provider(
        {"nickname": "svc", "kind": kind, "username": "u", "password": "p",
         "from_address": "deals@acme.example"},
        redis_client,
    )  # fmt: skip
    base = {"provider": "svc", "subject": "s", "html": "h", "draft": True,
            "recipients": [{"email": "a@example.com"}]}  # fmt: skip
    cc = [f"cc{i}@example.com" for i in range(limit - 1)]
    fits = CampaignRequest.model_validate({**base, "cc": cc})
    campaigns.create_campaign(fits, client=redis_client)
    too_many = {**base, "cc": cc, "bcc": ["audit@example.com"]}
    with pytest.raises(campaigns.CampaignError) as refused:
        campaigns.create_campaign(CampaignRequest.model_validate(too_many), client=redis_client)
    assert refused.value.field == "bcc"
    message = str(refused.value)
    assert f"{limit + 1} recipients" in message and f"allows {limit}" in message


HTTP_SENDER = {"kind": "http", "method": "POST", "endpoint": "http://127.0.0.1:9/send",
               "from_address": "a@example.com"}  # fmt: skip
FULL_MESSAGE = {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "a": "$$FromAddress",
                "h": "$$HTML"}  # fmt: skip


@covers("PUT /v1/providers/{nickname}")
def test_provider_problems_name_each_field_once(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """An HTTP provider's configuration problems each come under their own field, named
    once: they read ``body: body (global keys ...): ...``, ``the: the message template
    object: ...`` (a field called "the"), or ``endpoint: ...; query: ...`` (the query's
    problem filed under endpoint)."""
    with api_client(api_server) as api:

        def refused(field: str, **config: Any) -> dict[str, Any]:
            return assert_refused(api.put("/v1/providers/h", json={**HTTP_SENDER, **config}), field)

        globals_ = {"to": "$$To", "msgs": [FULL_MESSAGE]}
        error = refused("body", batch=True, body=globals_)
        assert error["detail"].startswith(
            "body: per-message placeholders are not allowed in batch mode ($$To) in the global "
            "keys outside the message array: "
        ), error
        error = refused("body", batch=True, body={"msgs": [{"to": "$$To"}]})
        assert error["detail"] == (
            "body: mandatory placeholders missing in the message template object "
            "(body.msgs[0]): $$FromAddress, $$FromName, $$HTML, $$Subject"
        )
        error = refused("endpoint", method="GET", endpoint="ftp://x")
        assert [p["field"] for p in error["errors"]] == ["endpoint", "query"], error
        assert error["detail"] == "endpoint: must start with http:// or https:// (and 1 more)"
        assert error["errors"][1]["message"].startswith("mandatory placeholders missing: $$")


@covers("POST /v1/campaigns", "PUT /v1/providers/{nickname}", "PUT /v1/suppressions/{email}")
def test_a_body_that_is_not_a_json_object_says_what_it_is(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Empty, not JSON, not an object, or not sent as JSON: each says so (they read
    ``body: Field required``, ``body: JSON decode error`` and "Input should be a valid
    dictionary or object to extract fields from", the last one also for a body that was
    fine but sent without ``Content-Type: application/json``)."""
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[dict[str, str], bytes, str, str]] = [
        (json_type, b"", "body", "body: empty: send a JSON object"),
        (
            json_type,
            b"{bad",
            "body",
            "body: not valid JSON (Expecting property name enclosed "
            "in double quotes at character 1)",
        ),
        (json_type, b"[1]", "body", "body: must be a JSON object, not an array"),
        (json_type, b"null", "body", "body: must be a JSON object, not null"),
        (
            {"Content-Type": "text/plain"},
            b'{"reason": "x"}',
            "content-type",
            "content-type: send the body as JSON with Content-Type: application/json "
            "(not text/plain)",
        ),
        (
            {},
            b'{"reason": "x"}',
            "content-type",
            "content-type: send the body as JSON with Content-Type: application/json (not none)",
        ),
    ]
    routes = [("POST", "/v1/campaigns"), ("PUT", "/v1/providers/p"),
              ("PUT", "/v1/suppressions/a@example.com")]  # fmt: skip
    with api_client(api_server) as api:
        for headers, content, field, detail in cases:
            for method, path in routes:
                if path.startswith("/v1/suppressions") and not content:
                    continue  # no body there is the default entry
                answer = api.request(method, path, content=content, headers=headers)
                assert assert_refused(answer, field)["detail"] == detail, (method, path)
