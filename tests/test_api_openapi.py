"""The OpenAPI document validates, and every route in it is covered by a test."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi.routing import APIRoute, iter_route_contexts
from openapi_spec_validator import validate

import tests
from dispatch.api.app import create_app
from dispatch.api.body_limits import MAX_API_BODY_BYTES
from tests.api_server import ApiServer
from tests.api_support import api_client, covers

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Routers whose tests must declare what they cover with @covers (the rest predate it).
DECLARING_MODULES = {
    "dispatch.api.providers",
    "dispatch.api.campaigns",
    "dispatch.api.suppressions",
    "dispatch.api.app",
    "dispatch.api.unsubscribe_tokens",
}
TESTS_DIR = Path(tests.__file__).parent


def _document(api_server: ApiServer) -> dict[str, Any]:
    with api_client(api_server, token=None) as api:  # the document itself is public
        answer = api.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def test_openapi_document_validates_and_docs_are_served(api_server: ApiServer) -> None:
    document = _document(api_server)
    validate(document)  # raises naming the first problem (OpenAPI 3.1 schema + semantics)
    assert document["openapi"].startswith("3.")
    with api_client(api_server, token=None) as api:
        docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schemes = document["paths"]["/v1/campaigns"]["post"]["responses"]
    assert {"201", "401", "409", "422"} <= set(schemes)


@covers("GET /healthz", "GET /metrics")
def test_health_and_metrics(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with api_client(api_server, token=None) as api:  # operations endpoints need no token
        assert api.get("/healthz").json() == {"status": "ok"}
        metrics = api.get("/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]


def _declared_routes() -> dict[str, list[str]]:
    """Route -> the tests that declare it with @covers, across every test module."""
    declared: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules([str(TESTS_DIR)]):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.{info.name}")
        for name, obj in vars(module).items():
            for route in getattr(obj, "covered_routes", ()):
                declared.setdefault(route, []).append(f"{info.name}.{name}")
    return declared


def _mentioned_in_tests(path: str) -> bool:
    """Whether a test module other than this one requests a path with this static prefix."""
    prefix = re.split(r"\{", path, maxsplit=1)[0]
    for test_file in TESTS_DIR.glob("test_*.py"):
        if test_file.name != Path(__file__).name and prefix in test_file.read_text():
            return True
    return False


def test_every_route_in_the_document_is_covered_by_a_test(api_server: ApiServer) -> None:
    document = _document(api_server)
    routes = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    # Included routers' routes are only seen through their contexts (FastAPI 0.165):
    # create_app().routes held the app's own two, so no router here had to declare.
    modules = {
        f"{method} {route.path_format}": route.endpoint.__module__
        for route in iter_route_contexts(create_app().routes)
        if isinstance(route.original_route, APIRoute) and route.endpoint is not None
        for method in route.methods or ()
    }
    assert "POST /v1/campaigns" in modules
    declared = _declared_routes()
    stale = sorted(set(declared) - routes)
    assert not stale, f"@covers names routes that are not in the document: {stale}"
    uncovered = []
    for route in sorted(routes):
        if route in declared:
            continue
        if modules.get(route) not in DECLARING_MODULES and _mentioned_in_tests(route.split()[1]):
            continue
        uncovered.append(route)
    assert not uncovered, f"routes no test covers: {uncovered}"


def _schema_of(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    answer = document["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = answer["content"]["application/json"]["schema"]
    return schema


def test_answers_are_typed_as_they_come_for_generated_clients(api_server: ApiServer) -> None:
    """What a client generator (openapi-python-client, openapi-generator) reads: every
    field the API always writes is required (``purged_at`` and ``next_cursor`` were
    "maybe absent", every counter ``int | Unset``), message states are an enum, the
    operation ids are the route names (``create_campaign``, not
    ``create_campaign_v1_campaigns_post``), and a Redis outage's 503 is listed."""
    from dispatch.message_pages import MESSAGE_STATUSES

    document = _document(api_server)
    schemas = document["components"]["schemas"]
    for name in ("CampaignSummary", "CampaignPage", "MessagePage", "MessageOutcome",
                 "ErrorBody", "AppendResult", "SuppressionPage", "ProviderView"):  # fmt: skip
        schema = schemas[name]
        assert set(schema["required"]) == set(schema["properties"]), name
    assert schemas["CampaignSummary"]["properties"]["purged_at"]["anyOf"] == [
        {"type": "number"},
        {"type": "null"},
    ]
    assert tuple(schemas["MessageStatus"]["enum"]) == MESSAGE_STATUSES
    assert schemas["MessageOutcome"]["properties"]["status"] == {
        "$ref": "#/components/schemas/MessageStatus"
    }
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids)) and "create_campaign" in ids and "list_messages" in ids
    for path, method, _ in operations:
        if path.startswith("/v1/") and not path.startswith("/v1/callbacks/"):
            assert _schema_of(document, path, method, 503) == {
                "$ref": "#/components/schemas/ErrorBody"
            }, (method, path)


def test_real_answers_match_the_document(api_server: ApiServer, redis_client: redis.Redis) -> None:
    """Answers over HTTP, success and error, validate against the schemas the document
    gives for their route and status."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = _document(api_server)
    registry = Registry().with_resource("urn:dispatch", Resource(document, DRAFT202012))

    def check(answer: Any, path: str, method: str) -> None:
        schema = _schema_of(document, path, method, answer.status_code)
        ref = {"$ref": "urn:dispatch" + schema["$ref"]} if "$ref" in schema else schema
        Draft202012Validator(ref, registry=registry).validate(answer.json())

    with api_client(api_server) as api:
        provider = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                    "from_address": "a@example.com"}  # fmt: skip
        check(api.put("/v1/providers/p", json=provider), "/v1/providers/{nickname}", "put")
        body = {"id": "doc-1", "provider": "p", "subject": "s", "html": "h", "draft": True}
        check(api.post("/v1/campaigns", json=body), "/v1/campaigns", "post")
        check(api.post("/v1/campaigns", json={**body, "html": "x"}), "/v1/campaigns", "post")
        check(api.post("/v1/campaigns", json={"id": "x"}), "/v1/campaigns", "post")
        appended = api.post(
            "/v1/campaigns/doc-1/recipients", json=[{"email": "a@example.com"}, {"email": "bad"}]
        )
        check(appended, "/v1/campaigns/{campaign_id}/recipients", "post")
        check(api.get("/v1/campaigns/doc-1"), "/v1/campaigns/{campaign_id}", "get")
        check(api.get("/v1/campaigns/nope"), "/v1/campaigns/{campaign_id}", "get")
        check(api.get("/v1/campaigns?limit=1"), "/v1/campaigns", "get")
        messages = "/v1/campaigns/{campaign_id}/messages"
        check(api.get("/v1/campaigns/doc-1/messages"), messages, "get")
        check(api.get("/v1/campaigns/doc-1/messages?status=nope"), messages, "get")
        check(api.post("/v1/campaigns/doc-1/pause"), "/v1/campaigns/{campaign_id}/pause", "post")
        check(api.put("/v1/suppressions/s@example.com"), "/v1/suppressions/{email}", "put")
        check(api.get("/v1/suppressions"), "/v1/suppressions", "get")
        imported = api.post("/v1/suppressions", json=[{"email": "i@example.com"}, {"email": "x"}])
        check(imported, "/v1/suppressions", "post")
        check(
            api.get("/v1/providers", headers={"Authorization": "Bearer no"}), "/v1/providers", "get"
        )


# Routes whose error answers this test cannot bring about, and why.
NO_ERROR_CASE = {
    "GET /healthz": "its 503 needs Redis down (test_api_integration stops a Redis for that)",
    "GET /metrics": "answers 200 whatever happens",
}
OVER_API_LIMIT = MAX_API_BODY_BYTES + 1


def _over_the_limit_in_chunks() -> Iterator[bytes]:
    """A body over the API's limit without a Content-Length (found while reading)."""
    chunk = b" " * (1024 * 1024)
    for _ in range(OVER_API_LIMIT // len(chunk) + 1):
        yield chunk


@covers(
    "POST /v1/callbacks/{nickname}/{token}",
    "GET /v1/callbacks/{nickname}/{token}",
    "GET /u/{token}",
    "POST /u/{token}",
    "GET /preferences/{token}",
    "POST /preferences/{token}",
)
def test_every_error_a_route_answers_is_in_the_document(
    api_server: ApiServer, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    """Each route's real error cases, over HTTP: the status is one the document lists for
    that route, with the answer's media type and, for JSON, a body of its schema. The
    callback routes listed only 200 and a 422 they never answer (none of their 400, 502,
    503), the pages no 404, 503 or 413, and the HTML of the pages as JSON."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    from dispatch.unsubscribe import make_token

    document = _document(api_server)
    registry = Registry().with_resource("urn:dispatch", Resource(document, DRAFT202012))
    seen: set[str] = set()

    def check(answer: httpx.Response, method: str, template: str) -> None:
        route = f"{method.upper()} {template}"
        seen.add(route)
        where = (route, answer.status_code, answer.text[:300])
        assert answer.status_code >= 300, where  # an error case, as the table meant
        responses = document["paths"][template][method]["responses"]
        assert str(answer.status_code) in responses, where
        media = answer.headers.get("content-type", "").partition(";")[0]
        content = responses[str(answer.status_code)].get("content", {})
        if not answer.content:
            return
        assert media in content, (*where, media, list(content))
        if media == "application/json":
            schema = content[media]["schema"]
            rooted = json.loads(json.dumps(schema).replace('"#/', '"urn:dispatch#/'))
            Draft202012Validator(rooted, registry=registry).validate(answer.json())

    token = make_token("doc-err", 0, "a@example.com", "default")
    web, gen = paths["web"], paths["gen"]
    provider = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                "from_address": "a@example.com"}  # fmt: skip
    draft = {"id": "doc-err", "provider": "p", "subject": "s", "html": "h", "draft": True}
    json_type = {"Content-Type": "application/json"}
    with api_client(api_server) as api, api_client(api_server, token=None) as anonymous:
        assert api.put("/v1/providers/p", json=provider).status_code == 201
        assert api.post("/v1/campaigns", json=draft).status_code == 201
        assert api.post("/v1/campaigns", json={**draft, "id": "doc-done"}).status_code == 201
        assert api.post("/v1/campaigns/doc-done/cancel").status_code == 200
        cases: list[tuple[str, str, httpx.Response]] = [
            ("put", "/v1/providers/{nickname}", api.put("/v1/providers/p", json={"kind": "x"})),
            ("put", "/v1/providers/{nickname}", api.put("/v1/providers/BAD", json=provider)),
            ("put", "/v1/providers/{nickname}",
             api.put("/v1/providers/p", content=b"{", headers=json_type)),
            ("put", "/v1/providers/{nickname}", anonymous.put("/v1/providers/p", json=provider)),
            ("get", "/v1/providers/{nickname}", api.get("/v1/providers/nope")),
            ("get", "/v1/providers/{nickname}", api.get("/v1/providers/BAD")),
            ("delete", "/v1/providers/{nickname}", api.delete("/v1/providers/nope")),
            ("get", "/v1/providers", anonymous.get("/v1/providers")),
            ("post", "/v1/providers/{nickname}/test",
             api.post("/v1/providers/nope/test", json={"to": "a@example.com"})),
            ("post", "/v1/providers/{nickname}/test",
             api.post("/v1/providers/p/test", json={"to": "nobody"})),
            ("post", "/v1/campaigns", api.post("/v1/campaigns", json={**draft, "subject": "x"})),
            ("post", "/v1/campaigns", api.post("/v1/campaigns", json={"provider": "p"})),
            ("post", "/v1/campaigns", api.post("/v1/campaigns", content=b"{}")),
            ("post", "/v1/campaigns", api.post("/v1/campaigns", content=b" " * OVER_API_LIMIT,
                                               headers=json_type)),
            ("get", "/v1/campaigns", api.get("/v1/campaigns?limit=0")),
            ("get", "/v1/campaigns", api.get("/v1/campaigns?status=nope")),
            ("get", "/v1/campaigns/{campaign_id}", api.get("/v1/campaigns/nope")),
            ("get", "/v1/campaigns/{campaign_id}", api.get("/v1/campaigns/a%20b")),
            ("post", "/v1/campaigns/{campaign_id}/recipients",
             api.post("/v1/campaigns/nope/recipients", json=[])),
            ("post", "/v1/campaigns/{campaign_id}/recipients",
             api.post("/v1/campaigns/doc-err/recipients", content=b"")),
            ("post", "/v1/campaigns/{campaign_id}/recipients",
             api.post("/v1/campaigns/doc-done/recipients", json=[{"email": "a@example.com"}])),
            *[
                (method, f"/v1/campaigns/{{campaign_id}}/{operation}",
                 api.post(f"/v1/campaigns/{campaign}/{operation}"))
                for operation in ("start", "pause", "resume", "cancel", "retry-failed")
                for campaign, method in (("nope", "post"), ("doc-done", "post"))
                if (operation, campaign) != ("cancel", "doc-done")  # that one is a repeat: 200
            ],
            *[
                ("get", "/v1/campaigns/{campaign_id}/messages",
                 api.get(f"/v1/campaigns/{campaign}/messages{query}"))
                for campaign, query in (("nope", ""), ("doc-err", "?limit=0"),
                                        ("doc-err", "?limit=1001"), ("doc-err", "?cursor=-1"),
                                        ("doc-err", "?limit=x"), ("doc-err", "?status=x"))
            ],
            *[
                ("post", "/v1/campaigns/{campaign_id}/test",
                 api.post(f"/v1/campaigns/{campaign}/test", json=payload))
                for campaign, payload in (("nope", {"to": "a@example.com"}),
                                          ("doc-err", {"to": "nobody"}),
                                          ("doc-err", {"to": "a@example.com", "seq": 5}),
                                          ("doc-err", {"to": "a@example.com", "seq": -1}))
            ],
            ("get", "/v1/suppressions", api.get("/v1/suppressions?cursor=x")),
            ("get", "/v1/suppressions", api.get("/v1/suppressions?limit=0")),
            ("post", "/v1/suppressions", api.post("/v1/suppressions", content=b"")),
            ("post", "/v1/suppressions", api.post("/v1/suppressions?reason=%20", json=[])),
            ("post", "/v1/suppressions", anonymous.post("/v1/suppressions", json=[])),
            ("get", "/v1/suppressions/{email}", api.get("/v1/suppressions/a@example.com")),
            ("put", "/v1/suppressions/{email}", api.put("/v1/suppressions/not-an-address")),
            ("put", "/v1/suppressions/{email}",
             api.put("/v1/suppressions/a@example.com", json={"reason": ""})),
            ("put", "/v1/suppressions/{email}",
             api.put("/v1/suppressions/a@example.com", content=_over_the_limit_in_chunks(),
                     headers=json_type)),
            ("delete", "/v1/suppressions/{email}", api.delete("/v1/suppressions/a@example.com")),
            ("get", "/v1/preferences/{email}", api.get("/v1/preferences/not-an-address")),
            ("put", "/v1/preferences/{email}",
             api.put("/v1/preferences/a@example.com", json={"opted_out": ["no-such"]})),
            ("put", "/v1/preferences/{email}", anonymous.put("/v1/preferences/a@example.com")),
            ("get", "/v1/unsubscribe-tokens/{token}", api.get("/v1/unsubscribe-tokens/not-one")),
            ("get", "/v1/unsubscribe-tokens/{token}",
             api.get("/v1/unsubscribe-tokens/" + "a" * 4097)),
            ("get", "/v1/unsubscribe-tokens/{token}",
             anonymous.get("/v1/unsubscribe-tokens/not-one")),
            ("post", "/v1/callbacks/{nickname}/{token}",
             anonymous.post("/v1/callbacks/gen/wrong-token", json={})),
            ("post", "/v1/callbacks/{nickname}/{token}", anonymous.post(gen, content=b"{")),
            ("post", "/v1/callbacks/{nickname}/{token}",
             anonymous.post(web, json={"version": "v2", "type": "nope", "email": "a@b.c"})),
            ("post", "/v1/callbacks/{nickname}/{token}",
             anonymous.post(gen, content=b" " * (8 * 1024 * 1024 + 1))),
            ("get", "/v1/callbacks/{nickname}/{token}", anonymous.get("/v1/callbacks/gen/x")),
            ("get", "/u/{token}", anonymous.get("/u/not-a-token")),
            ("post", "/u/{token}", anonymous.post("/u/not-a-token")),
            ("get", "/preferences/{token}", anonymous.get("/preferences/not-a-token")),
            ("post", "/preferences/{token}", anonymous.post("/preferences/not-a-token")),
            ("post", "/preferences/{token}",
             anonymous.post(f"/preferences/{token}", content=b"a" * (64 * 1024 + 1))),
        ]  # fmt: skip
        for method, template, answer in cases:
            check(answer, method, template)
    operations = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert operations - seen == set(NO_ERROR_CASE), sorted(operations - seen)
