"""Review C9: the OpenAPI document types each provider kind, as the real validation takes it.

``PUT /v1/providers/{nickname}`` took "an object" in the document: a generated client
knew no field. Its body is now a union of one schema per kind (``ProviderConfig``), and
a read one per kind too (``ProviderViewByKind``). These tests hold the schemas to the
real API over HTTP: every configuration built from a schema (its required fields, each
optional field, each enum value) is one the API accepts, and each one leaving out what
the schema requires (or giving a value outside an enum, or a field it does not list) is
refused with a 422 naming that field; the schema says the same as the API every time.
"""

from __future__ import annotations

import base64
import copy
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dispatch.api.provider_schemas import KIND_MODELS, request_name, view_name
from providers.config import SECRET_MASK
from tests.api_server import ApiServer
from tests.api_support import api_client, covers

URN = "urn:dispatch"
KINDS = ("smtp", "ses", "sendgrid", "gmail", "http")
POST_BODY = {"to": "$$To", "subject": "$$Subject", "from": "$$FromName",
             "addr": "$$FromAddress", "html": "$$HTML", "id": "$$MessageID"}  # fmt: skip
BATCH_BODY = {"campaign": "$$CampaignID", "msgs": [POST_BODY]}
GET_QUERY = {"to": "$$To", "subject": "$$Subject", "from": "$$FromName", "addr": "$$FromAddress"}


def _public_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


# A valid value other than the default for each field a schema lists (one it gains must
# get one here); the values of the fields a schema requires are among them.
SAMPLES: dict[str, Any] = {
    "nickname": "as-the-path",  # (put in the path too)
    "from_name": "Acme Deals",
    "from_address": "deals@acme.example",
    "reply_to": "help@acme.example",
    "preference_center": "system",
    "preference_center_url": "https://prefs.acme.example/p",
    "max_connections": 2,
    "rate_per_second": 5,  # an integer where the schema says number
    "daily_quota": 10,
    "daily_recipient_quota": 20,
    "tls_verify": False,
    "host": "smtp.acme.example",
    "port": 2525,
    "security": "starttls",
    "username": "mailer",
    "password": "s3cret",
    "timeout": 12.5,
    "data_timeout": 120,
    "max_messages_per_connection": 7,
    "max_recipients_per_message": 9,
    "region": "eu-west-1",
    "configuration_set": "marketing",
    "sns_topic_arns": ["arn:aws:sns:eu-west-1:123456789012:ses-events"],
    "method": "POST",
    "endpoint": "https://esp.example/send",
    "auth": "none",
    "headers": {"X-Campaign": "$$CampaignID", "X-Api-Key": "k3y"},
    "query": {"utm_source": "mail"},
    "body": POST_BODY,
    "batch": True,
    "batch_size": 50,
}
# What a value needs beside it (a batch body holds the message array).
COMPANIONS: list[tuple[str, Any, dict[str, Any]]] = [("batch", True, {"body": BATCH_BODY})]
# The value of a field a condition requires: (field of the `if`, its value or None for
# the `else`, field required).
CONDITIONAL_SAMPLES: dict[tuple[str, Any, str], Any] = {
    ("preference_center", "custom", "preference_center_url"): "https://prefs.acme.example/p",
    ("auth", "basic", "username"): "hook",
    ("method", "GET", "query"): GET_QUERY,
    ("method", None, "body"): POST_BODY,
}
_count = itertools.count()


def _with(config: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """``config`` with ``name`` set to ``value``, and what the value needs beside it."""
    given = {**config, name: value}
    for field, needing, needs in COMPANIONS:
        if (field, needing) == (name, value):
            given.update(needs)
    return given


class Schemas:
    """The served document's provider schemas, and what they say of a configuration."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = document["components"]["schemas"]
        registry: Registry[Any] = Registry().with_resource(URN, Resource(document, DRAFT202012))
        self.registry = registry

    def request(self, kind: str) -> dict[str, Any]:
        schema: dict[str, Any] = self.components[request_name(kind)]
        return schema

    def validator(self, name: str) -> Draft202012Validator:
        ref = {"$ref": f"{URN}#/components/schemas/{name}"}
        return Draft202012Validator(ref, registry=self.registry)

    def accepts(self, kind: str, config: dict[str, Any]) -> bool:
        return self.validator("ProviderConfig").is_valid(config) and self.validator(
            request_name(kind)
        ).is_valid(config)

    def satisfy(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` completed as the schema's conditions ask (what they require added,
        what they want null left out)."""
        config = copy.deepcopy(config)
        for rule in self.request(kind)["allOf"]:
            (field, condition), = rule["if"]["properties"].items()  # fmt: skip
            matched = Draft202012Validator(rule["if"]).is_valid(config)
            branch = rule["then"] if matched else rule.get("else", {})
            value = condition["const"] if matched else None
            wanted = branch.get("properties", {})
            for name in branch.get("required", []):
                if config.get(name) is None and (name not in config or "not" in wanted[name]):
                    config[name] = CONDITIONAL_SAMPLES[(field, value, name)]
            for name, schema in wanted.items():
                if schema.get("type") == "null":
                    config.pop(name, None)
                elif "const" in schema:
                    config[name] = schema["const"]
        return config

    def required(self, kind: str, config: dict[str, Any]) -> list[str]:
        """The fields the schema requires of ``config``: always, and by its conditions."""
        names = list(self.request(kind)["required"])
        for rule in self.request(kind)["allOf"]:
            matched = Draft202012Validator(rule["if"]).is_valid(config)
            names += (rule["then"] if matched else rule.get("else", {})).get("required", [])
        return names

    def minimal(self, kind: str) -> dict[str, Any]:
        """Only what the schema requires of ``kind``."""
        given = {"kind": kind}
        given.update((n, SAMPLES[n]) for n in self.request(kind)["required"] if n != "kind")
        return self.satisfy(kind, given)


@pytest.fixture
def schemas(api_server: ApiServer) -> Schemas:
    with api_client(api_server, token=None) as anonymous:
        document = anonymous.get("/openapi.json").json()
    validate(document)  # OpenAPI 3.1 (schemas, $refs, discriminators, examples' shape)
    return Schemas(document)


def _put(api: httpx.Client, kind: str, config: dict[str, Any]) -> httpx.Response:
    """Saved under a nickname of its own (a replacement has rules of its own)."""
    nickname = f"{kind}-{next(_count)}"
    if config.get("nickname") == SAMPLES["nickname"]:
        config = {**config, "nickname": nickname}
    return api.put(f"/v1/providers/{nickname}", json=config)


def _fields_named(answer: httpx.Response) -> list[str]:
    return [problem["field"] for problem in answer.json()["errors"]]


def _enum(schema: dict[str, Any]) -> list[Any]:
    values = list(schema.get("enum", []))
    for option in schema.get("anyOf", []):
        values += option.get("enum", [])
    return values


class Checker:
    """Puts configurations to the real API and holds each answer to the schema's word."""

    def __init__(self, api: httpx.Client, schemas: Schemas) -> None:
        self.api, self.schemas, self.saved = api, schemas, 0

    def accepted(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        assert self.schemas.accepts(kind, config), (kind, config)
        answer = _put(self.api, kind, config)
        assert answer.status_code == 201, (kind, config, answer.text)
        view: dict[str, Any] = answer.json()
        self.schemas.validator("ProviderViewByKind").validate(view)
        self.saved += 1
        return view

    def refused(self, kind: str, config: dict[str, Any], field: str) -> None:
        assert not self.schemas.accepts(kind, config), (kind, config)
        answer = _put(self.api, kind, config)
        assert answer.status_code == 422, (kind, config, answer.text)
        assert field in _fields_named(answer), (kind, field, answer.text)


@covers("PUT /v1/providers/{nickname}")
@pytest.mark.parametrize("kind", KINDS)
def test_what_the_schema_of_a_kind_allows_the_api_accepts_and_what_it_requires_it_refuses(
    api_server: ApiServer,
    redis_client: redis.Redis,
    schemas: Schemas,
    trusted_cert: tuple[Path, Path],
    kind: str,
) -> None:
    samples = {**SAMPLES, "tls_ca": trusted_cert[0].read_text(),
               "webhook_public_key": _public_key()}  # fmt: skip
    request = schemas.request(kind)
    properties = {n: s for n, s in request["properties"].items() if not s.get("readOnly")}
    with api_client(api_server) as api:
        check = Checker(api, schemas)
        minimal = schemas.minimal(kind)
        check.accepted(kind, minimal)
        # Each field the schema requires, always or by a condition, left out: refused.
        for name in schemas.required(kind, minimal):
            check.refused(kind, {k: v for k, v in minimal.items() if k != name}, name)
        for name, schema in properties.items():
            if name == "kind":
                continue
            # Each optional field, with its default and with another value: accepted.
            values = [samples[name], *([schema["default"]] if "default" in schema else [])]
            for value in [*values, *_enum(schema)]:  # and each value of an enum
                check.accepted(kind, schemas.satisfy(kind, _with(minimal, name, value)))
            if _enum(schema):  # a value the enum does not list: refused, the field named
                check.refused(kind, {**minimal, name: "not-listed"}, name)
        # Each condition's requirement, its condition met without it: refused.
        for rule in request["allOf"]:
            (field, condition), = rule["if"]["properties"].items()  # fmt: skip
            given = schemas.satisfy(kind, {**minimal, field: condition["const"]})
            for name in rule["then"].get("required", []):
                check.refused(kind, {k: v for k, v in given.items() if k != name}, name)
        check.refused(kind, {**minimal, "not_a_field": 1}, "not_a_field")
        answer = api.put("/v1/providers/path-name", json={**minimal, "nickname": "other-name"})
        assert answer.status_code == 422 and _fields_named(answer) == ["nickname"]
        # Everything given at once.
        everything = dict(minimal)
        for name in sorted(properties.keys() - {"kind", "body"}):
            everything = _with(everything, name, samples[name])
        view = check.accepted(kind, schemas.satisfy(kind, everything))
    assert set(properties) == {"kind", "nickname", *KIND_MODELS[kind].model_fields}
    assert check.saved > len(properties)
    for name in KIND_MODELS[kind].secret_fields:
        assert view[name] == SECRET_MASK and request["properties"][name]["writeOnly"] is True


def test_the_kinds_are_a_discriminated_union_with_every_field_described(
    api_server: ApiServer, schemas: Schemas
) -> None:
    """A generator reads the union's mapping; every field says what it is, and the
    routes' body and answers point at the union."""
    components = schemas.components
    for union, name_of in (("ProviderConfig", request_name), ("ProviderViewByKind", view_name)):
        assert components[union]["discriminator"] == {
            "propertyName": "kind",
            "mapping": {k: f"#/components/schemas/{name_of(k)}" for k in KINDS},
        }
    for kind in KINDS:
        request = schemas.request(kind)
        assert request["additionalProperties"] is False and request["required"][0] == "kind"
        view = components[view_name(kind)]["allOf"][1]
        for name, schema in [*request["properties"].items(), *view["properties"].items()]:
            assert len(schema.get("description", "")) > 10, (kind, name)
        assert set(view["required"]) == set(view["properties"])  # a read writes them all
    item = schemas.document["paths"]["/v1/providers/{nickname}"]
    body = item["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/ProviderConfig"
    assert [example["kind"] for example in body["examples"]] == list(KINDS)
    for example in body["examples"]:
        assert schemas.accepts(example["kind"], example), example
    union = {"$ref": "#/components/schemas/ProviderViewByKind"}
    for operation, status in ((item["put"], "200"), (item["put"], "201"), (item["get"], "200")):
        assert operation["responses"][status]["content"]["application/json"]["schema"] == union
    assert components["ProviderList"]["properties"]["items"]["items"] == union


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}", "GET /v1/providers")
def test_the_examples_are_accepted_and_reads_match_their_kinds_view(
    api_server: ApiServer, redis_client: redis.Redis, schemas: Schemas
) -> None:
    """Each kind's example saves; its read and the list conform to the kind's view, the
    secrets (password, a credential header) masked as the schema says."""
    body = schemas.document["paths"]["/v1/providers/{nickname}"]["put"]["requestBody"]
    with api_client(api_server) as api:
        for example in body["content"]["application/json"]["schema"]["examples"]:
            kind = example["kind"]
            saved = api.put(f"/v1/providers/example-{kind}", json=example)
            assert saved.status_code == 201, (kind, saved.text)
            read = api.get(f"/v1/providers/example-{kind}").json()
            schemas.validator(view_name(kind)).validate(read)
            assert read == saved.json()
        listed = api.get("/v1/providers").json()
    schemas.validator("ProviderList").validate(listed)
    http = next(item for item in listed["items"] if item["kind"] == "http")
    assert http["headers"]["X-Api-Key"] == SECRET_MASK
    assert http["password"] == ""  # none given
    assert {item["password"] for item in listed["items"] if item is not http} == {SECRET_MASK}
    for item in listed["items"]:  # a view of one kind is no view of another
        others = [k for k in KINDS if k != item["kind"]]
        assert not any(schemas.validator(view_name(k)).is_valid(item) for k in others)
