"""POST /v1/suppressions (a streamed bulk import) and GET /v1/suppressions' reason and
source filters, through the real app over HTTP on the real Redis, and the client's
add_suppressions and filtered iter_suppressions."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import redis

from dispatch import store
from dispatch.suppressions import MAX_REASON
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.test_review_d13_replaced_entry import EMAIL, _own_unsubscribe

BOM = b"\xef\xbb\xbf"
OWN_UNSUBSCRIBE = {
    "email": "own@example.com",
    "reason": "unsubscribed",
    "source": "callback:mail:list-unsubscribe",
    "ts": 1.0,
}
COMPLAINT = {"email": "pre@example.com", "reason": "spam", "source": "callback:mail", "ts": 2.0}


def _entries(r: redis.Redis) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in r.hgetall(store.SUPPRESSIONS_HASH).items()}


def _ndjson(*lines: Any) -> bytes:
    return b"\r\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines) + b"\r\n"


@covers("POST /v1/suppressions")
def test_an_ndjson_import_adds_the_good_lines_and_names_each_bad_one(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A body written by a Windows tool (BOM, CRLF) with good and bad lines mixed: every
    good address is added with its own reason or the request's, caselessly and in IDNA
    form; an existing entry keeps its first reason but a person's own unsubscribe is
    replaced; each bad line is counted and named by its line, its neighbours kept."""
    redis_client.hset(store.SUPPRESSIONS_HASH, "pre@example.com", orjson.dumps(COMPLAINT))
    redis_client.hset(store.SUPPRESSIONS_HASH, "own@example.com", orjson.dumps(OWN_UNSUBSCRIBE))
    body = BOM + _ndjson(
        {"email": "Ann@Example.COM"},  # 1
        {"email": "not-an-address"},  # 2
        b"",  # 3: blank, skipped but counted
        {"email": "bob@Bücher.example", "reason": "hard_bounce"},  # 4
        {"email": "ann@example.com", "reason": "other"},  # 5: ann's first entry stands
        {"email": "cy@example.com", "reason": "   "},  # 6
        b'{"email": "dee@example.com"',  # 7: cut short
        "eve@example.com",  # 8: a bare string, not an object
        {"email": "fay@example.com", "reason": "x" * (MAX_REASON + 1)},  # 9
        {"email": "PRE@example.com"},  # 10: the complaint stays
        {"email": "own@example.com"},  # 11: the own unsubscribe is replaced
        {"email": "gil@example.com", "why": "x"},  # 12
        {"email": "  "},  # 13
        b'{"email": "h\xe9l@example.com"}',  # 14: Latin-1, not UTF-8
        {"email": "ivy@example.com"},  # 15
    )
    with api_client(api_server) as api:
        answer = api.post(
            "/v1/suppressions",
            params={"reason": "old tool", "source": "import:acme"},
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["added"], result["already_suppressed"], result["invalid"]) == (3, 3, 8)
    assert result["errors_truncated"] is False
    named = [(e["line"], e["index"], e["field"]) for e in result["errors"]]
    assert named == [
        (2, None, "email"),
        (6, None, "reason"),
        (7, None, "body"),
        (8, None, "body"),
        (9, None, "reason"),
        (12, None, "why"),
        (13, None, "email"),
        (14, None, "body"),
    ]
    messages = {e["line"]: e["message"] for e in result["errors"]}
    assert "no local@domain" in messages[2]
    assert messages[6] == "must not be blank"
    assert "not valid JSON" in messages[7]
    assert messages[8] == "must be a JSON object, not a string"
    assert "UTF-8" in messages[14]

    entries = _entries(redis_client)
    assert set(entries) == {
        "ann@example.com",
        "bob@xn--bcher-kva.example",
        "ivy@example.com",
        "pre@example.com",
        "own@example.com",
    }
    assert (entries["ann@example.com"]["reason"], entries["ann@example.com"]["source"]) == (
        "old tool",
        "import:acme",
    )
    assert entries["bob@xn--bcher-kva.example"]["reason"] == "hard_bounce"
    assert entries["pre@example.com"] == COMPLAINT
    assert (entries["own@example.com"]["reason"], entries["own@example.com"]["source"]) == (
        "old tool",
        "import:acme",
    )


@covers("POST /v1/suppressions")
def test_an_array_names_its_bad_items_by_index_and_an_overlong_one_alone(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A JSON array (gzip-compressed, with a BOM): an item longer than the item limit is
    refused alone, by its index, and its neighbours are added."""
    items: list[Any] = [
        {"email": "a@example.com"},
        {"email": "b@example.com", "detail": "r" * 20_000},  # over MAX_ITEM_BYTES
        {"email": "c@example.com"},
        {"email": "@"},
    ]
    body = gzip.compress(BOM + orjson.dumps(items, option=orjson.OPT_INDENT_2))
    with api_client(api_server) as api:
        answer = api.post(
            "/v1/suppressions",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["added"], result["already_suppressed"], result["invalid"]) == (2, 0, 2)
    assert [(e["index"], e["line"], e["field"]) for e in result["errors"]] == [
        (1, None, "body"),
        (3, None, "email"),
    ]
    assert "longer than 16384 bytes" in result["errors"][0]["message"]
    entries = _entries(redis_client)
    assert set(entries) == {"a@example.com", "c@example.com"}
    assert (entries["a@example.com"]["reason"], entries["a@example.com"]["source"]) == (
        "manual",
        "api",
    )


@covers("POST /v1/suppressions")
def test_thousands_of_lines_count_every_one_and_list_the_first_1000_problems_in_order(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Several Redis round trips: every good address is added, every bad one counted,
    and the first 1,000 bad lines are the ones listed, in line order (an address refused
    by the store and a line refused by its parse interleave)."""
    lines: list[Any] = []
    for i in range(3000):
        if i % 3 == 0:
            lines.append({"email": f"bad{i}@"})  # refused when stored
        elif i % 3 == 1 and i < 2400:
            lines.append({"email": f"p{i}@example.com", "reason": ""})  # refused when read
        else:
            lines.append({"email": f"p{i}@example.com"})
    with api_client(api_server) as api:
        answer = api.post("/v1/suppressions", content=_ndjson(*lines))
    result = answer.json()
    bad = [n for n, line in enumerate(lines, 1) if "bad" in line["email"] or "reason" in line]
    assert (result["added"], result["invalid"]) == (3000 - len(bad), len(bad))
    assert result["errors_truncated"] is True
    assert [e["line"] for e in result["errors"]] == bad[:1000]
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 3000 - len(bad)


@covers("POST /v1/suppressions")
def test_a_broken_body_keeps_what_came_before_and_bad_requests_are_refused(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with api_client(api_server) as api:
        cut = api.post("/v1/suppressions", content=b'[{"email": "a@example.com"}, {"email": "x@"')
        blank_reason = api.post("/v1/suppressions", params={"reason": " "}, content=b"[]")
        empty = api.post("/v1/suppressions", content=BOM + b"\r\n")
        form = api.post("/v1/suppressions", files={"file": ("a.txt", b"a@example.com")})
        strange = api.post("/v1/suppressions", content=b"[]", headers={"Content-Encoding": "br"})
        blank_put = api.put("/v1/suppressions/z@example.com", json={"source": "  "})
    with api_client(api_server, token=None) as anonymous:
        refused = anonymous.post("/v1/suppressions", content=_ndjson({"email": "n@example.com"}))

    assert cut.status_code == 422 and cut.json()["field"] == "body"
    assert "the 1 new addresses before it were added" in cut.json()["detail"]
    assert (blank_reason.status_code, blank_reason.json()["field"]) == (422, "reason")
    assert (empty.status_code, empty.json()["field"]) == (422, "body")
    assert (form.status_code, form.json()["field"]) == (422, "content-type")
    assert (strange.status_code, strange.json()["field"]) == (422, "content-encoding")
    assert (blank_put.status_code, blank_put.json()["field"]) == (422, "source")
    assert refused.status_code == 401
    assert set(_entries(redis_client)) == {"a@example.com"}


@covers("GET /v1/suppressions")
def test_the_list_filters_by_reason_and_source_page_by_page(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A filtered walk finds exactly the matching entries; its pages are short (the
    filter keeps what one scan step read) yet the cursor goes on to the end."""
    for i in range(300):
        entry = {
            "email": f"p{i}@example.com",
            "reason": "hard_bounce" if i % 3 == 0 else "manual",
            "source": "import:a" if i % 2 == 0 else "api",
            "ts": 1.0,
        }
        redis_client.hset(store.SUPPRESSIONS_HASH, entry["email"], orjson.dumps(entry))
    with api_client(api_server) as api:

        def walk(**filters: str) -> tuple[list[str], list[int]]:
            seen: list[str] = []
            sizes: list[int] = []
            cursor: str | None = "0"
            while cursor is not None:
                params = {"cursor": cursor, "limit": "50", **filters}
                page = api.get("/v1/suppressions", params=params)
                assert page.status_code == 200, page.text
                seen += [e["email"] for e in page.json()["items"]]
                sizes.append(len(page.json()["items"]))
                cursor = page.json()["next_cursor"]
            return seen, sizes

        bounced, sizes = walk(reason="hard_bounce")
        both, _ = walk(reason="hard_bounce", source="import:a")
        none, _ = walk(source="Import:a")  # exact: not caseless
        too_long = api.get("/v1/suppressions", params={"reason": "x" * (MAX_REASON + 1)})

    assert sorted(set(bounced)) == sorted(f"p{i}@example.com" for i in range(0, 300, 3))
    assert len(sizes) > 1 and max(sizes) < 50  # short pages, and more than one
    assert sorted(set(both)) == sorted(f"p{i}@example.com" for i in range(0, 300, 6))
    assert none == []
    assert (too_long.status_code, too_long.json()["field"]) == (422, "reason")


@covers("POST /v1/suppressions", "GET /v1/suppressions")
def test_the_client_imports_and_walks_a_filtered_list(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    redis_client.hset(store.SUPPRESSIONS_HASH, "pre@example.com", orjson.dumps(COMPLAINT))
    items: list[Any] = [
        "Ann@Example.com",
        {"email": "bob@example.com", "reason": "hard_bounce"},
        "no-address",
        {"email": "pre@example.com"},
        {"email": "cy@example.com", "reason": object()},  # cannot be written as JSON
        "dee@example.com",
    ]
    with dispatch_client(api_server) as client:
        result = client.add_suppressions(iter(items), reason="esp export", source="import:esp")
        imported = sorted(e.email for e in client.iter_suppressions(10, source="import:esp"))
        bounced = [e.email for e in client.iter_suppressions(reason="hard_bounce")]
        spam = [e.email for e in client.iter_suppressions(reason="spam", source="callback:mail")]

    assert (result.added, result.already_suppressed, result.invalid) == (3, 1, 2)
    assert [(e.line, e.field) for e in result.errors] == [(3, "email"), (5, "reason")]
    assert imported == ["ann@example.com", "bob@example.com", "dee@example.com"]
    assert bounced == ["bob@example.com"]
    assert spam == ["pre@example.com"]
    assert _entries(redis_client)["ann@example.com"]["reason"] == "esp export"


@covers("POST /v1/suppressions")
def test_a_list_exported_imports_as_it_is(api_server: ApiServer, redis_client: redis.Redis) -> None:
    """Entries as the list gives them (a bounce's, with its detail, campaign and meta)
    import into another deployment's list as they are: each address with its reason,
    the entry this import's (its source, its time); a key no entry has is still refused."""
    with api_client(api_server) as api:
        for email, reason in (("ann@example.com", "hard_bounce"), ("bob@example.com", "spam")):
            assert api.put(f"/v1/suppressions/{email}", json={"reason": reason}).status_code in (
                200,
                201,
            )
        bounce = {**_entries(redis_client)["ann@example.com"], "detail": "550 5.1.1 no such user"}
        bounce.update(campaign_id="c1", meta="ann@example.com|1|2|20261125|0|c1|0|")
        listed = [bounce, _entries(redis_client)["bob@example.com"]]
        redis_client.delete(store.SUPPRESSIONS_HASH)  # (the other deployment's list)
        answer = api.post(
            "/v1/suppressions",
            params={"source": "restore"},
            content=orjson.dumps([*listed, {"email": "c@example.com", "reasn": "typo"}]),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["added"], result["invalid"]) == (2, 1), result
    assert [(e["index"], e["field"]) for e in result["errors"]] == [(2, "reasn")]
    entries = _entries(redis_client)
    assert {e: (v["reason"], v["source"]) for e, v in entries.items()} == {
        "ann@example.com": ("hard_bounce", "restore"),
        "bob@example.com": ("spam", "restore"),
    }


@covers("POST /v1/suppressions")
def test_an_exported_own_unsubscribe_imported_again_stays_the_persons(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A list exported and imported again (on the same deployment, or restored on
    another): a person's own unsubscribe keeps its source, so the preference center's
    "Subscribe again" still lifts it (the import's source in its place took that away);
    an entry that only claims the reason keeps the import's source."""
    token = _own_unsubscribe(api_server, redis_client)
    exported = _entries(redis_client)[EMAIL]
    claimed = {"email": "ops@example.com", "reason": "unsubscribed", "source": "crm"}
    with api_client(api_server) as api:
        answer = api.post(
            "/v1/suppressions",
            params={"source": "restore"},
            content=orjson.dumps([exported, claimed]),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["added"], answer.json()["already_suppressed"]) == (1, 1)
    entries = _entries(redis_client)
    assert entries[EMAIL]["source"] == exported["source"]
    assert entries["ops@example.com"]["source"] == "restore"
    with api_client(api_server, token=None) as page:
        lifted = page.post(f"/preferences/{token}", data={"action": "resubscribe"})
    assert lifted.status_code == 200, lifted.text
    assert EMAIL not in _entries(redis_client)
