"""/v1/campaigns over HTTP on the real app, a real Redis and a real worker (DESIGN §5)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import (
    api_client,
    campaign,
    covers,
    ndjson,
    save_smtp_provider,
    wait_for_campaign,
)
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


def draft(campaign_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hello {{ name }}",
        "html": "<p>{{ name }}: {{ offer }}</p>",
        "vars": {"offer": "free shipping"},
        "draft": True,
        **fields,
    }


@covers(
    "POST /v1/campaigns",
    "POST /v1/campaigns/{campaign_id}/recipients",
    "POST /v1/campaigns/{campaign_id}/start",
    "GET /v1/campaigns/{campaign_id}",
    "GET /v1/campaigns/{campaign_id}/messages",
    "GET /v1/campaigns",
)
def test_5000_recipients_appended_as_ndjson_are_each_sent_once(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """The acceptance run: provider, draft, 5,000 NDJSON recipients streamed, start,
    counters up to ``completed`` with sent = 5,000 and 5,000 messages at the server."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port, max_connections=8)
        created = api.post("/v1/campaigns", json=draft("big-1"))
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "draft"

        appended = api.post(
            "/v1/campaigns/big-1/recipients",
            content=ndjson(recipients(5000)),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert appended.status_code == 200, appended.text
        assert appended.json() == {
            "appended": 5000,
            "duplicates": 0,
            "rejected": 0,
            "errors": [],
            "errors_truncated": False,
            "total": 5000,
        }
        started = api.post("/v1/campaigns/big-1/start")
        assert started.status_code == 200 and started.json()["status"] == "running"
        assert api.post("/v1/campaigns/big-1/start").status_code == 409  # once only

        done = wait_for_campaign(api, "big-1", lambda s: s["status"] == "completed", 240)
        assert (done["total"], done["sent"], done["queued"], done["failed"]) == (5000, 5000, 0, 0)
        rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert len(smtp.messages) == 5000 and len(rcpts) == 5000

        page = api.get("/v1/campaigns/big-1/messages", params={"limit": 3}).json()
        assert [m["seq"] for m in page["items"]] == [0, 1, 2] and page["next_cursor"] == "3"
        first = page["items"][0]
        assert first["status"] == "sent" and first["email"] == "user0@example.com"
        assert first["meta"] == smtp_meta_of(smtp, "user0@example.com")
        assert first["attempts"] == 1
        failed = api.get("/v1/campaigns/big-1/messages", params={"status": "failed"}).json()
        assert failed == {"items": [], "next_cursor": None}
        # What happened to one address (support's question), found among 5,000:
        messages = "/v1/campaigns/big-1/messages"
        one = api.get(messages, params={"email": " User4321@Example.COM"}).json()
        assert [(m["seq"], m["email"], m["status"]) for m in one["items"]] == [
            (4321, "user4321@example.com", "sent")
        ]
        assert one["next_cursor"] is None
        for params in ({"email": "user4321@example.com", "status": "failed"},
                       {"email": "nobody@example.com"}):  # fmt: skip
            assert api.get(messages, params=params).json() == {"items": [], "next_cursor": None}

        listed = api.get("/v1/campaigns").json()
        assert [c["id"] for c in listed["items"]] == ["big-1"]
        assert api.get("/v1/campaigns", params={"status": "running"}).json()["items"] == []


def smtp_meta_of(smtp: SmtpTestServer, email: str) -> str:
    for message in smtp.messages:
        if message.rcpt_tos[0] == email:
            return str(message.message["X-CleverTap_META"])
    raise AssertionError(f"no message to {email}")


@covers("POST /v1/campaigns")
def test_inline_campaign_starts_at_once_and_is_idempotent_by_id(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    body = {**draft("inline-1", draft=False), "recipients": recipients(20)}
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        first = api.post("/v1/campaigns", json=body)
        assert first.status_code == 201 and first.json()["total"] == 20
        wait_for_campaign(api, "inline-1", lambda s: s["status"] == "completed")
        again = api.post("/v1/campaigns", json=body)
        assert again.status_code == 200 and again.json()["sent"] == 20
        other = api.post("/v1/campaigns", json={**body, "subject": "Something else"})
        assert other.status_code == 409 and other.json()["field"] == "id"
        fewer = api.post("/v1/campaigns", json={**body, "recipients": recipients(19)})
        assert fewer.status_code == 409  # the recipients are part of the content too
        no_id = {k: v for k, v in body.items() if k != "id"}
        generated = api.post("/v1/campaigns", json={**no_id, "recipients": []})
        assert generated.status_code == 201 and generated.json()["id"] != "inline-1"
    assert len(smtp.messages) == 20  # the repeated post sent nothing


@covers("POST /v1/campaigns")
def test_identical_posts_at_once_all_answer_the_campaign(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A client retrying while its first post is still being answered: every post of the
    same campaign answers it (201 once, 200 for the others), never 404 for an id whose
    content was still being written."""
    rounds, posts = 40, 4
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)

    def post(campaign_id: str) -> int:
        with api_client(api_server) as api:
            body = {**draft(campaign_id), "recipients": recipients(3)}
            return api.post("/v1/campaigns", json=body).status_code

    with ThreadPoolExecutor(posts) as pool:
        answers = [list(pool.map(post, [f"twice-{n}"] * posts)) for n in range(rounds)]
    for round_answers in answers:
        assert sorted(round_answers) == [200] * (posts - 1) + [201], round_answers
    with api_client(api_server) as api:
        assert all(campaign(api, f"twice-{n}")["total"] == 3 for n in range(rounds))


@covers("POST /v1/campaigns")
def test_invalid_campaigns_get_422_naming_the_field(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({k: v for k, v in draft("c1").items() if k != "provider"}, "provider", "provider"),
            (draft("c1", category="a|b"), "category", "category"),
            (draft("c1", provider="nobody"), "provider", "nobody"),
            (draft("c1", send_at="tomorrow"), "send_at", "send_at"),
            (draft("c1", recipients=[{"email": "x@example.com", "colour": 1}]),
             "recipients.0.colour", "colour"),
            (draft("c1", recipients=[{"vars": {}}]), "recipients.0.email", "email"),
            (draft("c1", html="{{ name }} {{ coupon }}", recipients=[{"email": "a@b.example"}]),
             "vars", "coupon"),
            (draft("c1", html="{% if %}"), "html", "html"),
            ({**draft("c1"), "html": "", "text": ""}, "html", "html"),
        ]  # fmt: skip
        for body, field, named in cases:
            answer = api.post("/v1/campaigns", json=body)
            assert answer.status_code == 422, (body, answer.text)
            error = answer.json()
            assert error["field"] == field, error
            assert named in error["detail"], error
        broken = api.post(
            "/v1/campaigns", content=b'{"id": ', headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 422 and broken.json()["field"]
        assert api.get("/v1/campaigns").json()["items"] == []  # nothing half-created


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_unknown_placeholder_of_an_http_provider_gets_422_naming_it(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    provider = {
        "kind": "http",
        "endpoint": "http://127.0.0.1:9/send",
        "body": {
            "to": "$$To",
            "subject": "$$Subject",
            "from": "$$FromName",
            "addr": "$$FromAddress",
            "html": "$$HTML",
            "code": "$$coupon_code",
            "region": "$$region",
        },
        "from_address": "deals@acme.example",
    }
    with api_client(api_server) as api:
        assert api.put("/v1/providers/hook", json=provider).status_code == 201
        body = {
            "id": "hook-1",
            "provider": "hook",
            "subject": "s",
            "html": "h",
            "recipients": [{"email": "a@example.com"}],
        }
        answer = api.post("/v1/campaigns", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "vars.coupon_code"
        assert answer.json()["detail"].startswith("vars.coupon_code: $$coupon_code")
        assert answer.json()["detail"].endswith(" (and 1 more)")
        assert [(e["field"], e["message"][:8]) for e in answer.json()["errors"]] == [
            ("vars.coupon_code", "$$coupon"),
            ("vars.region", "$$region"),
        ]
        campaign_vars = {"coupon_code": "X1", "region": "EU"}
        ok = api.post("/v1/campaigns", json={**body, "vars": campaign_vars, "draft": True})
        assert ok.status_code == 201, ok.text

        # Without a campaign value, each appended recipient must bring its own.
        draft_body = {**body, "id": "hook-2", "recipients": [], "draft": True}
        assert api.post("/v1/campaigns", json=draft_body).status_code == 201
        full = {"coupon_code": "Z", "region": "EU"}
        lines = ndjson([{"email": "a@example.com"}, {"email": "b@example.com", "vars": full}])
        result = api.post("/v1/campaigns/hook-2/recipients", content=lines).json()
        assert (result["appended"], result["rejected"]) == (1, 1)
        assert result["errors"][0]["field"] == "vars.coupon_code"
        assert "$$coupon_code" in result["errors"][0]["message"]


@covers("POST /v1/campaigns/{campaign_id}/recipients", "POST /v1/campaigns/{campaign_id}/start")
def test_an_append_cut_by_a_start_says_how_many_it_stored(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """The campaign starts while an append streams: the 409 says that the recipients
    stored before the start stay in it (they are sent), so that a client does not take
    the whole append for refused."""
    first, more = recipients(1000), recipients(1500)[1000:]
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        assert api.post("/v1/campaigns", json=draft("cut-1")).status_code == 201

        def body() -> Iterator[bytes]:
            yield from ndjson(first)
            wait_for(lambda: campaign(api, "cut-1")["total"] == 1000, timeout=30)
            assert api.post("/v1/campaigns/cut-1/start").status_code == 200
            yield from ndjson(more)

        cut = api.post("/v1/campaigns/cut-1/recipients", content=body())
        assert cut.status_code == 409 and cut.json()["field"] == "status"
        assert "the 1000 recipients appended before it stay in the campaign" in cut.json()["detail"]
        assert campaign(api, "cut-1")["total"] == 1000


@covers("POST /v1/campaigns", "POST /v1/campaigns/{campaign_id}/recipients")
def test_append_keeps_every_valid_line_and_names_the_bad_ones(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    lines = [
        json.dumps({"email": "a@example.com", "vars": {"name": "A"}}),
        "{not json",
        json.dumps({"user_id": "u2", "vars": {"name": "B"}}),
        "",
        json.dumps({"email": "nobody-at-example.com", "vars": {"name": "C"}}),
        json.dumps({"email": "d@example.com"}),
        json.dumps({"email": "A@EXAMPLE.com", "vars": {"name": "A again"}}),
        json.dumps({"email": "e@example.com", "vars": {"name": "E"}, "extra": 1}),
        json.dumps({"email": "f@example.com", "vars": {"name": "F"}}),
    ]
    body = "\n".join(lines).encode()  # no newline at the end: the last line counts too
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        assert api.post("/v1/campaigns", json=draft("append-1")).status_code == 201
        answer = api.post("/v1/campaigns/append-1/recipients", content=body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["appended"], result["duplicates"], result["rejected"]) == (2, 1, 5)
        assert result["total"] == 2
        bad = {(e["line"], e["field"]) for e in result["errors"]}
        assert bad == {(2, "body"), (3, "email"), (5, "email"), (6, "vars.name"), (8, "extra")}
        assert all(e["index"] is None and e["message"] for e in result["errors"])

        # The same list again: every address is there already, nothing is added twice.
        again = api.post("/v1/campaigns/append-1/recipients", content=body).json()
        assert (again["appended"], again["duplicates"], again["total"]) == (0, 3, 2)

        array = [{"email": f"g{i}@example.com", "vars": {"name": "G"}} for i in range(3)]
        array.insert(1, {"email": "bad"})  # type: ignore[dict-item]
        answer = api.post("/v1/campaigns/append-1/recipients", json=array)
        result = answer.json()
        assert (result["appended"], result["rejected"], result["total"]) == (3, 1, 5)
        assert [(e["index"], e["field"]) for e in result["errors"]] == [(1, "email")]

        truncated = b'[{"email": "h@example.com", "vars": {"name": "H"}}, {"email": "i@exa'
        answer = api.post("/v1/campaigns/append-1/recipients", content=truncated)
        assert answer.status_code == 422 and answer.json()["field"] == "body"
        assert "ends early" in answer.json()["detail"] and "1 valid" in answer.json()["detail"]
        assert campaign(api, "append-1")["total"] == 6  # h@ was kept

        for junk in (b"", b"   ", b'"just a string"', b"[1, 2] extra"):
            answer = api.post("/v1/campaigns/append-1/recipients", content=junk)
            assert answer.status_code in (200, 422), junk
            if answer.status_code == 200:
                assert answer.json()["appended"] == 0 and answer.json()["rejected"] >= 1
            else:
                assert answer.json()["field"] == "body"

        missing = api.post("/v1/campaigns/nope/recipients", content=lines[0].encode())
        assert missing.status_code == 404 and missing.json()["field"] == "campaign_id"
        assert api.post("/v1/campaigns/append-1/cancel").status_code == 200
        closed = api.post("/v1/campaigns/append-1/recipients", content=lines[0].encode())
        assert closed.status_code == 409 and closed.json()["field"] == "status"


@covers("GET /v1/campaigns", "GET /v1/campaigns/{campaign_id}/messages")
def test_listing_pages_and_filters(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        for i in range(5):
            assert api.post("/v1/campaigns", json=draft(f"list-{i}")).status_code == 201
        page = api.get("/v1/campaigns", params={"limit": 2}).json()
        assert [c["id"] for c in page["items"]] == ["list-4", "list-3"]
        rest = api.get("/v1/campaigns", params={"limit": 10, "cursor": page["next_cursor"]}).json()
        assert [c["id"] for c in rest["items"]] == ["list-2", "list-1", "list-0"]
        assert rest["next_cursor"] is None
        bad = api.get("/v1/campaigns", params={"status": "sleeping"})
        assert bad.status_code == 422 and bad.json()["field"] == "status"
        bad = api.get("/v1/campaigns", params={"limit": 0})
        assert bad.status_code == 422 and bad.json()["field"] == "limit"

        api.post("/v1/campaigns/list-0/recipients", content=ndjson(recipients(30)))
        page = api.get("/v1/campaigns/list-0/messages", params={"limit": 20}).json()
        assert len(page["items"]) == 20 and page["next_cursor"] == "20"
        assert {m["status"] for m in page["items"]} == {"queued"}
        assert page["items"][0]["meta"] == ""  # not started: no send date yet
        rest = api.get(
            "/v1/campaigns/list-0/messages", params={"cursor": page["next_cursor"]}
        ).json()
        assert [m["seq"] for m in rest["items"]] == list(range(20, 30))
        assert rest["next_cursor"] is None
        bad = api.get("/v1/campaigns/list-0/messages", params={"status": "lost"})
        assert bad.status_code == 422 and bad.json()["field"] == "status"
        assert api.get("/v1/campaigns/nope/messages").status_code == 404


@covers("POST /v1/campaigns", "POST /v1/campaigns/{campaign_id}/recipients")
def test_a_variable_with_a_default_may_be_missing(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    celery_worker: WorkerProcess,
) -> None:
    """``{{ name | default('friend') }}``: a recipient without ``name`` is accepted, inline
    and appended, and gets the default; ``{{ city }}`` stays required."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        body = {
            "id": "guarded",
            "provider": "local",
            "subject": "Hi {{ name | default('friend') }}",
            "html": "<p>{% if city is defined %}{{ city }}{% endif %}</p>",
            "recipients": [{"email": "a@example.com"}],
            "draft": True,
        }
        answer = api.post("/v1/campaigns", json=body)
        assert answer.status_code == 201, answer.text
        lines = ndjson(
            [{"email": "b@example.com"}, {"email": "c@example.com", "vars": {"name": "Cy"}}]
        )
        result = api.post("/v1/campaigns/guarded/recipients", content=lines).json()
        assert (result["appended"], result["rejected"]) == (2, 0), result
        assert api.post("/v1/campaigns/guarded/start").status_code == 200
        wait_for_campaign(api, "guarded", lambda s: s["status"] == "completed")
    subjects = sorted(str(m.message["Subject"]) for m in smtp.messages)
    assert subjects == ["Hi Cy", "Hi friend", "Hi friend"]
    with api_client(api_server) as api:
        required = {**body, "id": "required", "subject": "Hi {{ name }}"}
        answer = api.post("/v1/campaigns", json=required)
        assert answer.status_code == 422 and "name" in answer.json()["detail"]
