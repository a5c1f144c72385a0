"""The published contract (``/openapi.json``) against what the real API answers (review Q7).

Integrators generate clients from the document: every answer's status must be one its
operation declares, with the headers the document promises, a media type it lists and,
for JSON, a body of the schema given for that status. ``tests/test_api_openapi.py``
checks the error answers of each route this way; here every operation also succeeds,
is refused without its token, is sent a body over the limit, meets a Redis that does
not answer, and meets a provider whose stored secret the key no longer reads.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import pytest
import redis
from jsonschema import Draft202012Validator
from redis.backoff import NoBackoff
from redis.retry import Retry
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dispatch import retention, store
from dispatch.api.app import create_app
from dispatch.api.body_limits import MAX_API_BODY_BYTES
from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer, free_port
from tests.worker import WorkerProcess, wait_for

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
URN = "urn:dispatch"
JSON_TYPE = {"Content-Type": "application/json"}
PROVIDER = {"kind": "smtp", "host": "127.0.0.1", "security": "none",
            "from_address": "deals@acme.example"}  # fmt: skip
CREDENTIALS = {"username": "u", "password": "pw"}  # stored encrypted
# DESIGN §4's Generic HTTP example, as given there: a saved provider.
DESIGN_HTTP_EXAMPLE = {
    "kind": "http", "method": "POST", "endpoint": "https://esp.example/send", "auth": "none",
    "headers": {"Authorization": "Bearer k", "X-Campaign": "$$CampaignID"}, "batch": True,
    "body": {"cid": "432", "msgs": [{"to": "$$To", "mid": "$$MessageID", "name": "$$name",
             "content": "$$HTML", "heading": "$$Subject", "from": "$$FromName",
             "senderaddr": "$$FromAddress"}]},
    "from_name": "Acme Deals", "from_address": "deals@acme.example",
}  # fmt: skip


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def _answer(response: httpx.Response) -> Answer:
    headers = {name.lower(): value for name, value in response.headers.items()}
    request = response.request
    return Answer(request.method, request.url.path, response.status_code, headers, response.read())


class Contract:
    """The served document, and what it says of one real answer."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry = Registry().with_resource(URN, Resource(document, DRAFT202012))
        self.operations = [
            (method.upper(), template, re.compile(f"^{re.sub(r'{[^/]+?}', '[^/]+', template)}$"))
            for template, item in document["paths"].items()
            for method in item
            if method in HTTP_METHODS
        ]  # fmt: skip

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for declared, template, pattern in self.operations:
            if declared == method and pattern.match(path):
                return template, self.document["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path}: no operation of the document")

    def problems(self, answer: Answer) -> list[str]:
        """What in ``answer`` the document does not say (empty: it conforms)."""
        template, operation = self.operation(answer.method, answer.path)
        where = f"{answer.method} {template} {answer.status}"
        response = operation["responses"].get(str(answer.status))
        if response is None:
            return [f"{where}: status not declared ({answer.body[:200]!r})"]
        found = [
            f"{where}: declared header {name} missing"
            for name in response.get("headers", {})
            if name.lower() not in answer.headers
        ]
        content = response.get("content", {})
        media = answer.headers.get("content-type", "").partition(";")[0].strip()
        if not answer.body:
            if content:
                found.append(f"{where}: no body, the document gives {sorted(content)}")
            return found
        if media not in content:
            return [*found, f"{where}: {media or 'no type'} is not one of {sorted(content)}"]
        if media == "application/json":
            schema = json.loads(json.dumps(content[media]["schema"]).replace('"#/', f'"{URN}#/'))
            validator = Draft202012Validator(schema, registry=self.registry)
            found += [
                f"{where}: {error.message[:200]} at {list(error.absolute_path)}"
                for error in validator.iter_errors(json.loads(answer.body))
            ]
        return found


def _contract(api_server: ApiServer) -> Contract:
    with api_client(api_server, token=None) as anonymous:
        document = anonymous.get("/openapi.json").json()
    return Contract(document)


# The operations that stream their body: any size (no 413).
STREAMED = {("POST", "/v1/campaigns/{campaign_id}/recipients"), ("POST", "/v1/suppressions")}


def _declaring_too_much(server: ApiServer, method: str, path: str, token: str | None) -> Answer:
    """The answer to a request whose Content-Length is over the API's limit, its body
    never sent: the limit is judged from the header."""
    connection = h11.Connection(h11.CLIENT)
    over = str(MAX_API_BODY_BYTES + 1)
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
               ("Content-Length", over), ("Connection", "close")]  # fmt: skip
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    status, answer_headers, body = 0, {}, b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(connection.send(h11.Request(method=method, target=path, headers=headers)))
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return Answer(method, path, status, answer_headers, body)


def _concrete(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``, or by the value
    given for the whole template (``"/v1/callbacks/{nickname}/{token}"``: a real URL)."""
    if template in values:
        return values[template]
    return re.sub(r"\{([^/]+?)\}", lambda m: values[m.group(1)], template)


def _corrupt_secret(r: redis.Redis, nickname: str) -> None:
    """The provider's stored password as a key that no longer fits leaves it."""
    stored = json.loads(r.get(store.provider_key(nickname)) or "{}")
    assert set(stored["password"]) == {"enc"}
    stored["password"] = {"enc": "gAAAAAB-not-made-with-this-key"}
    r.set(store.provider_key(nickname), json.dumps(stored))


def test_every_operation_answers_as_the_document_says(
    api_server: ApiServer,
    redis_client: redis.Redis,
    paths: dict[str, str],
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """Each operation succeeds, is refused without its token and with a body over the
    limit, and meets the cases found in review: every answer conforms. Found: a probe of
    a callback URL whose provider's secret cannot be read answered an undeclared 500, a
    purged campaign's test message an undeclared 410, every /v1 route (GET ones too) a
    413 only five declared, and the pages and the probe Starlette's plain-text 413
    (the preference form declares an HTML one)."""
    contract = _contract(api_server)
    smtp.handler.rcpt_reply = lambda address: "550 5.1.1 no such user" if "bad" in address else None
    answers: list[Answer] = []
    seen_success: set[str] = set()
    with api_client(api_server) as api, api_client(api_server, token=None) as anonymous:

        def call(method: str, path: str, client: httpx.Client = api, **kwargs: Any) -> Answer:
            answer = _answer(client.request(method, path, **kwargs))
            answers.append(answer)
            if answer.status < 400:
                template, _ = contract.operation(method, answer.path)
                seen_success.add(f"{method} {template}")
            return answer

        provider = {**PROVIDER, "port": smtp.port, "preference_center": "system"}
        assert call("PUT", "/v1/providers/q7", json=provider).status == 201
        assert call("PUT", "/v1/providers/q7", json=provider).status == 200
        custom = {**provider, "preference_center": "custom",
                  "preference_center_url": "https://prefs.example/center"}  # fmt: skip
        assert call("PUT", "/v1/providers/q7-custom", json=custom).status == 201
        assert call("PUT", "/v1/providers/q7-http", json=DESIGN_HTTP_EXAMPLE).status == 201
        example = contract.document["paths"]["/v1/providers/{nickname}"]["put"]["requestBody"]
        for given in example["content"]["application/json"]["schema"]["examples"]:
            assert call("PUT", "/v1/providers/q7-example", json=given).status in (200, 201)
        call("GET", "/v1/providers/q7")
        call("GET", "/v1/providers")
        call("POST", "/v1/providers/q7/test", json={"to": "me@acme.example"})
        emails = ["a@example.com", "bad@example.com", "c@example.com"]
        listed = [{"email": e, "user_id": e[0], "vars": {}} for e in emails]
        run = {"id": "q7-run", "provider": "q7", "subject": "Hi", "html": "<p>h</p>",
               "recipients": listed}  # fmt: skip
        assert call("POST", "/v1/campaigns", json=run).status == 201
        assert call("POST", "/v1/campaigns", json=run).status == 200
        wait_for(lambda: api.get("/v1/campaigns/q7-run").json()["status"] == "completed")
        call("GET", "/v1/campaigns/q7-run")
        call("GET", "/v1/campaigns?limit=2")
        for query in ("", "?status=failed", "?status=sent&limit=1", "?email=A@example.com"):
            call("GET", f"/v1/campaigns/q7-run/messages{query}")
        call("POST", "/v1/campaigns/q7-run/retry-failed")
        call("POST", "/v1/campaigns/q7-run/test", json={"to": "me@acme.example", "seq": 2})
        draft = {**run, "id": "q7-draft", "draft": True, "recipients": []}
        call("POST", "/v1/campaigns", json=draft)
        ndjson = b'{"email": "d@example.com"}\n{"email": "nobody"}\n'
        call("POST", "/v1/campaigns/q7-draft/recipients", content=ndjson,
             headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
        for operation in ("start", "pause", "resume", "cancel"):
            call("POST", f"/v1/campaigns/q7-draft/{operation}")
        call("PUT", "/v1/suppressions/s@example.com", json={"reason": "asked"})
        call("PUT", "/v1/suppressions/s@example.com")
        call("GET", "/v1/suppressions/s@example.com")
        call("GET", "/v1/suppressions?limit=1")
        call("GET", "/v1/suppressions?reason=asked&source=api")
        imported = b'{"email": "t@example.com"}\n{"email": "nobody"}\n'
        call("POST", "/v1/suppressions?reason=old", content=imported,
             headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
        token = make_token("q7-run", 0, "a@example.com", "default")
        call("GET", f"/v1/unsubscribe-tokens/{token}")
        call("PUT", "/v1/preferences/a@example.com", json={"opted_out": ["default"]})
        call("GET", "/v1/preferences/a@example.com")
        call("DELETE", "/v1/suppressions/s@example.com")
        call("DELETE", "/v1/providers/q7-example")
        for path in paths.values():
            call("GET", path, anonymous)
        event = {"version": "v2", "event": "e", "type": "delivered", "email": "a@example.com",
                 "meta": "a@example.com|0|q7-run|20250101|0|default|0|"}  # fmt: skip
        call("POST", paths["gen"], anonymous, json=event)
        mixed = {"version": "v2", "events": {"success": [event], "failed": [{"type": "nope"}]}}
        call("POST", paths["gen"], anonymous, json=mixed)
        call("POST", paths["web"], anonymous, json=mixed)
        call("GET", f"/preferences/{token}", anonymous)
        call("POST", f"/preferences/{token}", anonymous, data={"action": "save", "shown": "x"})
        call("GET", f"/u/{token}", anonymous)
        call("POST", f"/u/{token}", anonymous)
        call("GET", "/healthz", anonymous)
        call("GET", "/metrics", anonymous)

        # A custom center: the link redirects there (Location, as declared).
        custom_campaign = {**draft, "id": "q7-custom-c", "provider": "q7-custom"}
        call("POST", "/v1/campaigns", json=custom_campaign)
        redirected = call("GET", "/u/" + make_token("q7-custom-c", 0, "a@example.com", "default"),
                          anonymous)  # fmt: skip
        assert redirected.status == 303
        assert redirected.headers["location"].startswith("https://prefs.example/center")
        # A purged campaign's test message: its recipients are gone (410).
        call("POST", "/v1/campaigns", json={**draft, "id": "q7-gone"})
        call("POST", "/v1/campaigns/q7-gone/cancel")
        assert retention.purge(redis_client, "q7-gone")
        assert (
            call("POST", "/v1/campaigns/q7-gone/test", json={"to": "me@acme.example"}).status == 410
        )
        # A provider whose stored secret the key no longer reads: its callback URL's probe
        # is a service failure (500, as the callback itself).
        with_secret = {**provider, **CREDENTIALS}
        assert call("PUT", "/v1/providers/q7-broken", json=with_secret).status == 201
        broken = api.get("/v1/providers/q7-broken").json()["callback_url"]
        _corrupt_secret(redis_client, "q7-broken")
        assert call("GET", httpx.URL(broken).path, anonymous).status == 500

        # Without the token, every operation that declares the bearer scheme: 401.
        values = {"nickname": "q7", "campaign_id": "q7-run", "email": "a@example.com",
                  "token": token, "/v1/callbacks/{nickname}/{token}": paths["gen"]}  # fmt: skip
        secured = [
            (method, template)
            for method, template, _ in contract.operations
            if contract.document["paths"][template][method.lower()].get("security")
        ]
        assert len(secured) >= 20
        for method, template in secured:
            assert call(method, _concrete(template, values), anonymous).status == 401
        # A body over the limit, to every operation but the streamed ones (any size).
        missing = {"nickname": "q7-none", "campaign_id": "q7-none", "email": "n@example.com",
                   "token": "not-a-token",
                   "/v1/callbacks/{nickname}/{token}": "/v1/callbacks/q7/x"}  # fmt: skip
        for method, template, _ in contract.operations:
            if (method, template) not in STREAMED:
                path = _concrete(template, missing)
                answers.append(_declaring_too_much(api_server, method, path, API_TOKEN))

    problems = [problem for answer in answers for problem in contract.problems(answer)]
    assert not problems, "\n".join(problems)
    every = {f"{method} {template}" for method, template, _ in contract.operations}
    assert every - seen_success == set(), sorted(every - seen_success)


def test_the_unsubscribe_link_opens_when_the_providers_secret_cannot_be_read(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A recipient's unsubscribe link (GET /u/<token>) looked up the provider's custom
    center by decrypting all its secrets: with a DISPATCH_SECRET_KEY that no longer read
    them the person got the API's JSON 409 naming the key, an answer the page does not
    declare. The center needs no secret: the confirmation page opens."""
    with api_client(api_server) as api, api_client(api_server, token=None) as anonymous:
        provider = {**PROVIDER, **CREDENTIALS, "port": 2525, "preference_center": "system"}
        assert api.put("/v1/providers/q7-key", json=provider).status_code == 201
        draft = {"id": "q7-key-c", "provider": "q7-key", "subject": "s", "html": "h",
                 "draft": True}  # fmt: skip
        assert api.post("/v1/campaigns", json=draft).status_code == 201
        _corrupt_secret(redis_client, "q7-key")
        page = anonymous.get("/u/" + make_token("q7-key-c", 0, "a@example.com", "default"))
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html") and "a@example.com" in page.text


def test_with_redis_unreachable_every_operation_answers_its_documented_503(
    api_server: ApiServer,
    redis_client: redis.Redis,
    paths: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis does not answer: every operation but /metrics (which reports what it can)
    answers 503, declared with its Retry-After, in the operation's shape."""
    contract = _contract(api_server)
    token = make_token("q7-any", 0, "a@example.com", "default")
    values = {"nickname": "gen", "campaign_id": "q7-any", "email": "a@example.com",
              "token": token, "/v1/callbacks/{nickname}/{token}": paths["gen"]}  # fmt: skip
    bodies: dict[str, Any] = {
        "PUT /v1/providers/{nickname}": {**PROVIDER, "port": 2525},
        "POST /v1/providers/{nickname}/test": {"to": "a@example.com"},
        "POST /v1/campaigns": {"provider": "gen", "subject": "s", "html": "h"},
        "POST /v1/campaigns/{campaign_id}/recipients": [{"email": "a@example.com"}],
        "POST /v1/suppressions": [{"email": "a@example.com"}],
        "POST /v1/campaigns/{campaign_id}/test": {"to": "a@example.com"},
        "PUT /v1/preferences/{email}": {"opted_out": []},
        "POST /v1/callbacks/{nickname}/{token}": {"version": "v2", "type": "delivered",
                                                  "email": "a@example.com", "event": "e"},
    }  # fmt: skip
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), decode_responses=True)
    monkeypatch.setattr(store, "_sync_client", dead)
    answers = []
    with api_client(api_server) as api:
        for method, template, _ in contract.operations:
            body = bodies.get(f"{method} {template}")
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            answers.append(_answer(api.request(method, _concrete(template, values), **kwargs)))
    problems = [problem for answer in answers for problem in contract.problems(answer)]
    assert not problems, "\n".join(problems)
    statuses = {(a.method, contract.operation(a.method, a.path)[0]): a.status for a in answers}
    assert {key for key, status in statuses.items() if status != 503} == {("GET", "/metrics")}


def test_the_document_declares_every_route_its_parameters_and_who_needs_the_token() -> None:
    """Structure a client generator relies on: every schema route is in the document,
    each path parameter declared (required, in the path), the bearer scheme on exactly
    the /v1 routes that check it (not callbacks, pages, operations), every response
    described and every declared header typed; HEAD routes are left out on purpose (they
    answer as their GET), and each has its GET in the document."""
    from fastapi.routing import APIRoute, iter_route_contexts

    app = create_app()
    document = app.openapi()
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {**schemes["HTTPBearer"], "type": "http", "scheme": "bearer"}
    problems: list[str] = []
    routes = [r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, APIRoute)]
    assert len(routes) > 20  # the included routers' too, not only the app's own two
    for route in routes:
        for method in route.methods or ():
            key = f"{method} {route.path_format}"
            item = document["paths"].get(route.path_format, {})
            if not route.include_in_schema:
                if method != "HEAD" or "get" not in item:
                    problems.append(f"{key}: left out, and not a HEAD with its GET")
                continue
            operation = item.get(method.lower())
            if operation is None:
                problems.append(f"{key}: not in the document")
                continue
            names = set(re.findall(r"\{([^/]+?)\}", route.path_format))
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            if names != declared or any(
                not p["required"] for p in operation.get("parameters", ()) if p["in"] == "path"
            ):
                problems.append(f"{key}: path parameters {sorted(declared)}, not {sorted(names)}")
            guarded = route.path.startswith("/v1/") and not route.path.startswith("/v1/callbacks/")
            if bool(operation.get("security")) != guarded:
                problems.append(f"{key}: security {operation.get('security')}")
            if guarded and "401" not in operation["responses"]:
                problems.append(f"{key}: no 401")
            for status, response in operation["responses"].items():
                if not re.fullmatch(r"[1-5]\d\d", status) or not response.get("description"):
                    problems.append(f"{key} {status}: not a described status")
                for name, header in response.get("headers", {}).items():
                    if "schema" not in header:
                        problems.append(f"{key} {status}: header {name} has no schema")
    assert not problems, "\n".join(problems)


def _enum_of(document: dict[str, Any], path: str, name: str) -> list[str]:
    parameters = document["paths"][path]["get"]["parameters"]
    schema = next(p["schema"] for p in parameters if p["name"] == name)
    ref = next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
    enum: list[str] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]["enum"]
    return enum


def test_the_documents_enums_are_what_the_code_takes() -> None:
    """The filters a client offers are the values the routes take, and the kinds the
    provider body names are the registry's."""
    from pydantic import TypeAdapter

    from dispatch.api.schemas import MessageStatus
    from dispatch.models import CampaignStatus
    from providers.config import ProviderConfig

    kinds = TypeAdapter(ProviderConfig).json_schema()["discriminator"]["mapping"]

    document = create_app().openapi()
    assert _enum_of(document, "/v1/campaigns", "status") == [s.value for s in CampaignStatus]
    messages = "/v1/campaigns/{campaign_id}/messages"
    assert _enum_of(document, messages, "status") == [s.value for s in MessageStatus]
    body = document["paths"]["/v1/providers/{nickname}"]["put"]["requestBody"]
    described = body["content"]["application/json"]["schema"]["description"]
    named = re.search(r"`kind` \(([^)]*)\)", described)
    assert named is not None and set(named.group(1).split(", ")) == set(kinds)
