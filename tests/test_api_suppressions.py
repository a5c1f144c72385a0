"""/v1/suppressions over HTTP on the real app, and a suppressed address skipped by a campaign."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider, wait_for_campaign
from tests.callback_support import inbox_empty, post, save_providers
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


@covers(
    "PUT /v1/suppressions/{email}",
    "GET /v1/suppressions/{email}",
    "DELETE /v1/suppressions/{email}",
)
def test_suppress_read_and_remove_one_address(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with api_client(api_server) as api:
        created = api.put(
            "/v1/suppressions/Jane+news@Example.COM",
            json={"reason": "asked by phone", "source": "support"},
        )
        assert created.status_code == 201, created.text
        entry = created.json()
        assert (entry["email"], entry["reason"], entry["source"]) == (
            "jane+news@example.com",
            "asked by phone",
            "support",
        )
        assert entry["ts"] > 0
        again = api.put("/v1/suppressions/jane+news@example.com", json={"reason": "other"})
        assert again.status_code == 200 and again.json()["reason"] == "asked by phone"
        assert api.get("/v1/suppressions/JANE+NEWS@example.com").json() == entry
        default = api.put("/v1/suppressions/bob@example.com")  # no body: a manual entry
        assert default.status_code == 201
        assert (default.json()["reason"], default.json()["source"]) == ("manual", "api")

        assert api.delete("/v1/suppressions/jane+news@example.com").status_code == 204
        missing = api.get("/v1/suppressions/jane+news@example.com")
        assert missing.status_code == 404 and missing.json()["field"] == "email"
        assert api.delete("/v1/suppressions/jane+news@example.com").status_code == 404

        bad = api.put("/v1/suppressions/not-an-address")
        assert bad.status_code == 422 and bad.json()["field"] == "email"
        bad = api.put("/v1/suppressions/x@example.com", json={"reason": ""})
        assert bad.status_code == 422 and bad.json()["field"] == "reason"
        bad = api.put("/v1/suppressions/x@example.com", json={"why": "no"})
        assert bad.status_code == 422 and bad.json()["field"] == "why"


@covers("PUT /v1/suppressions/{email}")
@pytest.mark.parametrize(
    ("email", "problem"),
    [
        ("@@@", "no local@domain"),
        (" @ ", "no local@domain"),
        ("a@b", "domain is not a valid host name"),
        ("a@exa mple.com", "domain is not a valid host name"),
        ("x\r\nBcc@example.com", "local part has characters we cannot send to"),
        ("x\n@example.com", "local part has characters we cannot send to"),
    ],
)
def test_what_is_not_an_address_is_not_suppressed(
    api_server: ApiServer, redis_client: redis.Redis, email: str, problem: str
) -> None:
    """An entry that no recipient can match is refused, and CR/LF never reach the list."""
    with api_client(api_server) as api:
        answer = api.put(f"/v1/suppressions/{quote(email, safe='@')}", json={"reason": "r"})

    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == "email" and body["detail"].startswith("email: ")
    assert problem in body["detail"]
    assert body["errors"] == [{"field": "email", "message": body["detail"][len("email: ") :]}]
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0


@covers("GET /v1/suppressions/{email}", "DELETE /v1/suppressions/{email}")
def test_both_spellings_of_a_domain_are_one_entry_for_a_non_ascii_local_part(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """Callbacks may report an address we cannot send to (non-ASCII local part): its
    entry is still one, whether the domain comes in Unicode or in IDNA form."""
    paths = save_providers(redis_client)
    with api_client(api_server) as api:
        for email in ("Jöhn@Bücher.Example", "JÖHN@xn--bcher-kva.example"):
            legacy = {"event": "hardbounce", "data": [{"e": email}]}
            assert post(api, paths["mail"], legacy).status_code == 200
        wait_for(lambda: inbox_empty(redis_client), timeout=60)

        assert redis_client.hkeys(store.SUPPRESSIONS_HASH) == ["jöhn@xn--bcher-kva.example"]
        for email in ("jöhn@bücher.example", "Jöhn@XN--BCHER-KVA.example"):
            found = api.get(f"/v1/suppressions/{quote(email, safe='@')}")
            assert found.status_code == 200, email
            assert found.json()["email"] == "jöhn@xn--bcher-kva.example"
        assert api.delete(f"/v1/suppressions/{quote('jöhn@bücher.example')}").status_code == 204
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0


@covers("GET /v1/suppressions", "PUT /v1/suppressions/{email}")
def test_list_pages_through_every_entry(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with api_client(api_server) as api:
        for i in range(250):
            assert api.put(f"/v1/suppressions/p{i}@example.com").status_code == 201
        seen: list[str] = []
        cursor: str | None = "0"
        pages = 0
        while cursor is not None:
            page = api.get("/v1/suppressions", params={"cursor": cursor, "limit": 60}).json()
            seen += [e["email"] for e in page["items"]]
            cursor = page["next_cursor"]
            pages += 1
        assert sorted(set(seen)) == sorted(f"p{i}@example.com" for i in range(250))
        assert pages > 1
        bad = api.get("/v1/suppressions", params={"cursor": "abc"})
        assert bad.status_code == 422 and bad.json()["field"] == "cursor"
    with api_client(api_server, token=None) as anonymous:
        assert anonymous.get("/v1/suppressions").status_code == 401


@covers("PUT /v1/suppressions/{email}", "POST /v1/campaigns")
def test_a_suppressed_address_is_skipped_by_a_campaign(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        api.put("/v1/suppressions/user3@example.com", json={"reason": "hard bounce"})
        body = {"id": "supp-1", "provider": "local", "subject": "s", "html": "h",
                "recipients": recipients(10)}  # fmt: skip
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "supp-1", lambda s: s["status"] == "completed")
        assert (done["sent"], done["suppressed"]) == (9, 1)
        assert "user3@example.com" not in {m.rcpt_tos[0] for m in smtp.messages}
