"""The OpenAPI description of provider configurations: one schema per kind (DESIGN §2, §4).

Documentation only. ``PUT /v1/providers/{nickname}`` still reads its body as a JSON
object and ``providers.config`` validates it; this module writes into the document what
that validation accepts, so that a client generated from it knows each kind's fields:

* ``ProviderConfig``, the body of the PUT: a union discriminated by ``kind`` of
  ``SmtpProviderConfig``, ``SesProviderConfig``... Each is derived from the kind's
  pydantic model (types, defaults, enums, bounds, patterns), with a description of each
  field and the requirements the model's own validators add: ``host`` for ``smtp``,
  ``preference_center_url`` with ``custom``, ``username`` with basic auth, ``body``
  (POST) or ``query`` (GET) for Generic HTTP. ``nickname`` may be left out (the path's).
* ``ProviderViewByKind``, what a read answers: ``ProviderView`` (nickname, kind,
  ``callback_url``, ``warnings``, ``connects_to``) with every field of the kind, always
  written; a secret shows as the mask, never its value.

``tests/test_review_c9_provider_schemas.py`` checks over HTTP that the real validation
accepts and refuses what these schemas say.
"""

from __future__ import annotations

import copy
from typing import Any, Final, get_args

from pydantic.json_schema import JsonSchemaMode
from pydantic_core import to_jsonable_python

from providers.config import (
    SECRET_MASK,
    SNS_TOPIC_ARN_PATTERN,
    AnyProviderConfig,
    ProviderBase,
    SmtpFamilyBase,
)
from providers.http_config import GET_MANDATORY, POST_MANDATORY, RESERVED_HEADERS

_SCHEMAS: Final = "#/components/schemas/"
REQUEST_UNION: Final = "ProviderConfig"
VIEW_UNION: Final = "ProviderViewByKind"
VIEW_BASE: Final = "ProviderView"  # dispatch.api.schemas.ProviderView: the common fields

# The models by kind, in the order of the union (smtp, ses, sendgrid, gmail, http).
KIND_MODELS: Final[dict[str, type[ProviderBase]]] = {
    model.model_fields["kind"].default: model for model in get_args(AnyProviderConfig)
}


def request_name(kind: str) -> str:
    return f"{kind.capitalize()}ProviderConfig"


def view_name(kind: str) -> str:
    return f"{kind.capitalize()}ProviderView"


def _placeholders(names: tuple[str, ...]) -> str:
    return ", ".join(f"`$${n}`" for n in names)


_SECRET = (
    f"Secret: stored encrypted, never returned (a read shows `{SECRET_MASK}` when one is set, "
    f'`""` when not). Given as `{SECRET_MASK}` it keeps the secret stored; left out when '
    'replacing a provider of the same kind, the stored one is kept; `""` clears it.'
)
_CREDENTIAL_VALUES = (
    "A value given as it is (no `$$` placeholder) under a name holding auth, key, token, "
    "secret, passw, signature or credential is a secret: stored encrypted, shown as "
    f"`{SECRET_MASK}` by a read, and `{SECRET_MASK}` given back keeps it."
)

# What each field is, for every kind that has it; KIND_DESCRIPTIONS adds to it.
DESCRIPTIONS: Final[dict[str, str]] = {
    "kind": "The provider's kind; it decides which fields apply.",
    "nickname": (
        "The provider's name (`[a-z0-9-]{1,64}`). May be left out: the path's is taken; "
        "if given it must be the path's."
    ),
    "from_name": (
        "Sender display name of messages whose campaign gives none (no line break or "
        "control character); empty: none."
    ),
    "from_address": (
        "Sender address of messages whose campaign gives none, checked on save; empty: "
        "each campaign must give its own (saved with a warning)."
    ),
    "reply_to": "Reply-To address of messages whose campaign gives none; empty: none.",
    "preference_center": (
        "`none`: messages carry no unsubscribe link. `system` or `custom`: each carries "
        "its recipient's (List-Unsubscribe, RFC 8058, one-click); the preferences link "
        "leads to dispatch's page (`system`) or to `preference_center_url` (`custom`)."
    ),
    "preference_center_url": (
        "The custom preference center, which gets the recipient's token in its `token` "
        "query parameter; an http:// or https:// URL, required when `preference_center` "
        "is `custom`."
    ),
    "max_connections": "Connections to the provider open at once, at most.",
    "rate_per_second": "Messages a second, at most; 0: no pacing beyond `max_connections`.",
    "daily_quota": "Messages in any 24 hours (a rolling window), at most; null: no limit.",
    "daily_recipient_quota": (
        "Recipients in any 24 hours (each message's to, cc and bcc counted), at most; "
        "null: no limit."
    ),
    "tls_verify": (
        "Check the certificates of the provider's TLS connections (STARTTLS, SMTPS, "
        "https://); false skips the checks (for tests only)."
    ),
    "tls_ca": (
        "PEM certificates of a private CA, trusted instead of the default CAs; checked "
        "on save. Empty: the default CAs."
    ),
    # SMTP kinds
    "host": "The SMTP server: a host name or IP address alone (no scheme, port or path).",
    "port": (
        "The SMTP port; 0: the preset of `security` (465 for `tls`, else 587). RFC 8314's "
        "ports refuse the other security: 465 takes `tls` only, 25 and 587 anything but "
        "`tls`."
    ),
    "security": (
        "`none` (plain SMTP), `starttls` (plain SMTP upgraded with STARTTLS) or `tls` "
        "(SMTPS: TLS from connect). null: what `port` speaks (465: `tls`; 25, 587: "
        "`starttls`), else the kind's preset."
    ),
    "username": "The SMTP login; empty: no login.",
    "password": "The SMTP password.",
    "timeout": (
        "Seconds an SMTP connection or reply may take (then `SMTP timeout`), but the reply "
        "to the end of a message's content (`data_timeout`)."
    ),
    "data_timeout": (
        "Seconds the reply to the end of a message's content (the final `.` of DATA) may "
        "take, the sending of the content included: the server may check the message "
        "first, and RFC 5321 §4.5.3.2.6 asks for 10 minutes. No reply in time leaves the "
        "message `unknown` (it may have been taken; it is never resent). Shorter than "
        "`timeout`: `timeout` is waited (saved with a warning)."
    ),
    "max_messages_per_connection": (
        "Messages sent over one SMTP session before it is closed and another opened; 0: no limit."
    ),
    "max_recipients_per_message": "Recipients (to, cc and bcc) a message may have; 0: no limit.",
    # ses
    "region": (
        "The SES region (`us-east-1`); with an empty `host`, the server is "
        "email-smtp.<region>.amazonaws.com."
    ),
    "configuration_set": (
        "SES configuration set of every message (header X-SES-CONFIGURATION-SET); empty: none."
    ),
    "sns_topic_arns": (
        "ARNs of the SNS topics SES publishes events to (checked on save): a callback "
        "from another topic is refused; empty: every SNS callback is refused."
    ),
    # sendgrid
    "webhook_public_key": (
        "Public key of SendGrid's Signed Event Webhook (base64 DER, as SendGrid shows "
        "it), checked on save; empty: event signatures are not checked."
    ),
    # http
    "method": (
        "`POST`: each request carries the JSON `body`; `GET`: the message is in `query` "
        "(no body, no batching)."
    ),
    "endpoint": (
        "The http:// or https:// URL requests go to; no `$$` placeholder, no user info, "
        "no credential in its query (give it in `query`). An address that is private, "
        "loopback or link-local is refused unless the service allows them."
    ),
    "auth": "`basic`: HTTP basic auth with `username` and `password`; `none`: no auth.",
    "headers": (
        "Headers of each request; values may hold `$$` placeholders. Names are RFC 9110 "
        "tokens, given once (case-insensitively); "
        + ", ".join(sorted(RESERVED_HEADERS))
        + " are refused, and Authorization with auth `basic`. "
        + _CREDENTIAL_VALUES
    ),
    "query": (
        "Query parameters added to `endpoint`; values may hold `$$` placeholders, but "
        "not content ones (`$$HTML`...). With GET they must hold "
        + _placeholders(GET_MANDATORY)
        + ". "
        + _CREDENTIAL_VALUES
    ),
    "body": (
        "The JSON template of a POST request, a JSON value (not a string of JSON), using "
        + _placeholders(POST_MANDATORY)
        + "; required for POST, null or left out for GET. With `batch`, it holds one "
        "array with one template object using `$$To`, rendered once per message (DESIGN "
        "§4). `$$UnsubscribeURL` and `$$PreferencesURL` need a `preference_center` other "
        "than `none`. " + _CREDENTIAL_VALUES
    ),
    "batch": "POST only: send up to `batch_size` messages a request (DESIGN §4).",
    "batch_size": "Messages a batch request carries, at most.",
    # read-only fields of a view, accepted and ignored when a read is saved back
    "callback_url": "Where the provider posts its events (generated; read-only).",
    "warnings": "What is saved but worth knowing (read-only).",
    "connects_to": "SMTP kinds: where it connects, presets applied (read-only).",
}

# What a field is for one kind, said after (or instead of, for a leading "=") the above.
KIND_DESCRIPTIONS: Final[dict[tuple[str, str], str]] = {
    ("smtp", "host"): "Required.",
    ("ses", "host"): (
        "Empty: email-smtp.<region>.amazonaws.com; an amazonaws.com host that is no SES "
        "SMTP endpoint is refused."
    ),
    ("ses", "port"): "SES's own 2465 takes `tls` only, and 2587 anything but `tls`.",
    ("ses", "username"): "=The SMTP username made in the SES console (not an IAM access key).",
    ("ses", "password"): "=The SMTP password made in the SES console (not an IAM secret key).",
    ("ses", "max_recipients_per_message"): "SES takes 50.",
    ("sendgrid", "host"): "Empty: smtp.sendgrid.net.",
    ("sendgrid", "username"): "=The literal `apikey` for SendGrid's relay.",
    ("sendgrid", "password"): "=The SendGrid API key.",
    ("sendgrid", "max_messages_per_connection"): "SendGrid takes 100.",
    ("gmail", "host"): "Empty: smtp.gmail.com.",
    ("gmail", "username"): "=The Gmail (or Google Workspace) address.",
    ("gmail", "password"): (
        "=An app password; given as Google shows it (four groups of four letters, "
        "spaced), it is saved without the spaces."
    ),
    ("gmail", "daily_quota"): "Google Workspace's limit is 2,000.",
    ("gmail", "daily_recipient_quota"): "Google Workspace's limit is 10,000.",
    ("gmail", "max_recipients_per_message"): "Gmail takes 100.",
    ("http", "username"): (
        "=The basic-auth user name; required (not empty, no colon) with auth `basic`."
    ),
    ("http", "password"): "=The basic-auth password.",
    ("http", "timeout"): "=Seconds a request may take.",
}

# What each kind is (the model's docstring speaks to developers).
KIND_SUMMARIES: Final[dict[str, str]] = {
    "smtp": "Any SMTP server.",
    "ses": (
        "Amazon SES through its SMTP interface (SMTP credentials, not IAM keys); its "
        "events come through SNS."
    ),
    "sendgrid": "SendGrid's SMTP relay: username `apikey`, password the API key.",
    "gmail": "Gmail or Google Workspace with an app password; its daily limits preset.",
    "http": (
        "Generic HTTP (DESIGN §4): each message, or batch of messages, sent as one HTTP "
        "request filled in from `body`, `headers` and `query`."
    ),
}

_VIEW_ONLY: Final = ("callback_url", "warnings", "connects_to")
_VIEW_DESCRIPTION: Final = (
    "A {kind} provider as read: every field written, each secret as `{mask}` (set) or "
    '`""` (not set), never its value. Saved back as it is, it keeps the secrets.'
)


def describe(kind: str, name: str) -> str:
    """The description of field ``name`` of ``kind`` (a secret's says how it is kept)."""
    text = DESCRIPTIONS[name]
    extra = KIND_DESCRIPTIONS.get((kind, name), "")
    if extra.startswith("="):
        text, extra = extra[1:], ""
    if name in KIND_MODELS[kind].secret_fields:
        extra = f"{extra} {_SECRET}".strip()
    return f"{text} {extra}".strip()


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with pydantic's ``$defs`` references replaced by what they stand for."""
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _inline(v, defs) for k, v in schema.items() if k not in ("title", "$defs")}
    ref = out.pop("$ref", None)
    if ref is not None:
        out = {**_inline(defs[ref.removeprefix("#/$defs/")], defs), **out}
    return out


def _fields(kind: str, mode: JsonSchemaMode) -> tuple[dict[str, Any], list[str]]:
    """The kind's properties as pydantic gives them (``mode`` validation or
    serialization), kind first, each with its default and description; and the names
    pydantic requires."""
    model = KIND_MODELS[kind]
    generated = model.model_json_schema(mode=mode)
    defs = generated.get("$defs", {})
    properties: dict[str, Any] = {}
    for name in ("kind", *(n for n in generated["properties"] if n != "kind")):
        schema = _inline(generated["properties"][name], defs)
        field = model.model_fields[name]
        if "default" not in schema and not field.is_required():  # a default_factory's
            schema["default"] = to_jsonable_python(field.get_default(call_default_factory=True))
        schema["description"] = describe(kind, name)
        properties[name] = schema
    return properties, list(generated.get("required", []))


def _conditions(kind: str) -> list[dict[str, Any]]:
    """What the models' validators require beyond pydantic's ``required``, as
    ``if``/``then`` (``else``) of JSON Schema 2020-12."""

    def given(name: str, value: str) -> dict[str, Any]:
        return {"properties": {name: {"const": value}}, "required": [name]}

    rules: list[dict[str, Any]] = [
        {
            "if": given("preference_center", "custom"),
            "then": {
                "properties": {"preference_center_url": {"pattern": "^https?://"}},
                "required": ["preference_center_url"],
            },
        }
    ]
    if kind == "http":
        rules += [
            {
                "if": given("auth", "basic"),
                "then": {
                    "properties": {"username": {"minLength": 1, "pattern": "^[^:]*$"}},
                    "required": ["username"],
                },
            },
            {
                "if": given("method", "GET"),
                "then": {
                    "properties": {
                        "body": {"type": "null"},
                        "batch": {"const": False},
                        "query": {"minProperties": 1},
                    },
                    "required": ["query"],
                },
                "else": {"properties": {"body": {"not": {"type": "null"}}}, "required": ["body"]},
            },
        ]
    return rules


def request_schema(kind: str) -> dict[str, Any]:
    """What ``PUT /v1/providers/{nickname}`` accepts for ``kind``."""
    properties, required = _fields(kind, "validation")
    required = ["kind", *(n for n in required if n != "nickname")]
    del properties["kind"]["default"]  # (the tag: required)
    if kind == "smtp":  # the presets of the other kinds fill an empty host
        properties["host"]["minLength"] = 1
        del properties["host"]["default"]  # ("" is refused)
        required.append("host")
    if kind == "ses":
        properties["sns_topic_arns"]["items"]["pattern"] = SNS_TOPIC_ARN_PATTERN
    if kind == "http":
        properties["endpoint"]["pattern"] = "^[Hh][Tt][Tt][Pp][Ss]?://"
    for name in _VIEW_ONLY:  # a read saved back: ignored
        properties[name] = {"readOnly": True, "description": f"{DESCRIPTIONS[name]} Ignored."}
    return {
        "type": "object",
        "title": request_name(kind),
        "description": KIND_SUMMARIES[kind],
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        "allOf": _conditions(kind),
    }


def view_schema(kind: str) -> dict[str, Any]:
    """What a read of a ``kind`` provider answers (every field written)."""
    properties, _ = _fields(kind, "serialization")
    for name in KIND_MODELS[kind].secret_fields:
        properties[name] = {
            "type": "string",
            "enum": [SECRET_MASK, ""],
            "description": f"{SECRET_MASK} when a secret is set, empty when not.",
        }
    properties["nickname"]["description"] = "The provider's name."
    if issubclass(KIND_MODELS[kind], SmtpFamilyBase):
        properties["connects_to"] = {"$ref": _SCHEMAS + "ConnectsTo"}
    else:
        properties["connects_to"] = {"type": "null"}
    properties["connects_to"]["description"] = DESCRIPTIONS["connects_to"]
    for item in properties.values():
        item.pop("default", None)  # always written
        item.pop("writeOnly", None)
    return {
        "title": view_name(kind),
        "description": _VIEW_DESCRIPTION.format(kind=kind, mask=SECRET_MASK),
        "allOf": [
            {"$ref": _SCHEMAS + VIEW_BASE},
            {"type": "object", "properties": properties, "required": list(properties)},
        ],
    }


def _union(name_of: Any, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "oneOf": [{"$ref": _SCHEMAS + name_of(kind)} for kind in KIND_MODELS],
        "discriminator": {
            "propertyName": "kind",
            "mapping": {kind: _SCHEMAS + name_of(kind) for kind in KIND_MODELS},
        },
    }


def _media(operation: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    part = operation["requestBody"] if status is None else operation["responses"][status]
    schema: dict[str, Any] = part["content"]["application/json"]
    return schema


def add_provider_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """Put the schemas of each kind in ``document`` and point the provider routes' body
    and answers at them (their own validation is unchanged: see the module's doc)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for kind in KIND_MODELS:
        schemas[request_name(kind)] = request_schema(kind)
        schemas[view_name(kind)] = view_schema(kind)
    schemas[REQUEST_UNION] = _union(
        request_name, "A provider configuration: `kind` and that kind's fields, flat."
    )
    schemas[VIEW_UNION] = _union(view_name, "A provider as read, by kind.")
    union_ref = {"$ref": _SCHEMAS + VIEW_UNION}
    item = document["paths"]["/v1/providers/{nickname}"]
    body = _media(item["put"])
    said = {k: v for k, v in body["schema"].items() if k in ("description", "examples")}
    body["schema"] = {"$ref": _SCHEMAS + REQUEST_UNION, **said}
    for operation, status in ((item["put"], "200"), (item["put"], "201"), (item["get"], "200")):
        _media(operation, status)["schema"] = copy.deepcopy(union_ref)
    schemas["ProviderList"]["properties"]["items"]["items"] = copy.deepcopy(union_ref)
    return document
