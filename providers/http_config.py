"""Rules of the Generic HTTP configuration: placeholder analysis, validation, campaign checks.

The model itself is :class:`providers.config.HttpConfig` (one model per kind lives in
``providers.config``); its validator calls :func:`config_problems` on save. This module
answers three questions:

* where does a configuration use which placeholders (:func:`placeholder_usage`);
* is a configuration acceptable (:func:`config_problems`, errors refused on save) and what
  should the user hear anyway (:func:`config_warnings`);
* can a campaign fill every custom placeholder (:func:`check_placeholders`, at campaign
  creation, answered as HTTP 422 naming the placeholder).

Batch mode (DESIGN §4): the body holds exactly one array of message objects, found
anywhere in the body as the one array whose object uses ``$$To``; it must hold exactly one
template object, rendered once per message. Everything outside it (the globals), the
headers and the query are rendered once per request, so they may use campaign-level
placeholders only: ``$$CampaignID``, ``$$FromName``, ``$$FromAddress``,
``$$ReplyToAddress``, ``$$cc``, ``$$bcc`` and custom names set in the campaign's vars.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from providers.config import (
    WIDE_INTEGER_PROBLEM,
    HttpConfig,
    find_wide_integer,
    is_loopback_host,
    secret_paths,
    secret_value,
)
from providers.placeholders import (
    CAMPAIGN_LEVEL_SYSTEM,
    CONTENT_PLACEHOLDERS,
    LINK_PLACEHOLDERS,
    PER_MESSAGE_SYSTEM,
    SYSTEM_PLACEHOLDERS,
    Path,
    find_names,
    is_custom,
    names_in,
    value_at,
    walk_strings,
)

__all__ = [
    "HttpConfig",
    "PlaceholderProblem",
    "PlaceholderUsage",
    "check_placeholders",
    "config_problems",
    "config_warnings",
    "find_message_array",
    "placeholder_usage",
    "required_recipient_vars",
]

POST_MANDATORY: Final = ("To", "Subject", "FromName", "FromAddress", "HTML")
GET_MANDATORY: Final = ("To", "Subject", "FromName", "FromAddress")
_LINK_NAME: Final = "UnsubscribeURL"  # the name a problem with the links is filed under
# RFC 9110 §5.1 (was RFC 7230 §3.2): a field name is a token.
HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Framing and connection headers belong to the HTTP client; a user value would break the
# request or smuggle another one.
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
     "trailer", "upgrade"}
)  # fmt: skip
# RFC 9110 §5.5: no control character but HTAB in a field value. h11 refuses CR, LF, NUL,
# VT and FF (every request then failed, the header's value, a credential, in each
# message's detail) and sends the others, which an RFC-following server may refuse.
CONTROL_IN_HEADER_VALUE: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def _listed(names: Iterable[str]) -> str:
    return ", ".join(f"$${n}" for n in sorted(names))


def _show(path: Path) -> str:
    return "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


# --- where placeholders are used ------------------------------------------------------


def find_message_array(body: Any) -> tuple[Path | None, list[str]]:
    """Locate the message array of a batch body: ``(path, problems)``.

    The message array is the one array (at any depth, outermost) holding an object that
    uses ``$$To``; it must hold exactly that one template object.
    """
    found: list[Path] = []

    def visit(value: Any, path: Path) -> None:
        if isinstance(value, list):
            if any(isinstance(item, dict) and "To" in names_in(item) for item in value):
                found.append(path)
                return
            for index, item in enumerate(value):
                visit(item, (*path, index))
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, (*path, key))

    visit(body, ())
    if not found:
        return None, [
            "body: batch mode needs one array holding the message template object, which "
            'uses $$To (as "msgs": [{"to": "$$To", ...}] in the seed)'
        ]
    if len(found) > 1:
        where = ", ".join(_show(p) for p in found)
        return None, [f"body: batch mode needs exactly one message array; found {where}"]
    path = found[0]
    items = value_at(body, path)
    if len(items) != 1 or not isinstance(items[0], dict):
        return None, [
            f"{_show(path)}: the message array must hold exactly one template object "
            "(it is rendered once per message)"
        ]
    return path, []


@dataclass(frozen=True, slots=True)
class PlaceholderUsage:
    """Placeholder names by location in one configuration.

    ``body_message`` is the whole body without batching, the array's template object with
    it; ``body_globals`` is the rest of a batch body. ``in_names`` are placeholders written
    in object keys and header or query names, which are never substituted.
    """

    batch: bool
    message_array: Path | None
    body_globals: frozenset[str]
    body_message: frozenset[str]
    headers: frozenset[str]
    query: frozenset[str]
    in_names: frozenset[str]

    @property
    def body(self) -> frozenset[str]:
        return self.body_globals | self.body_message

    @property
    def every(self) -> frozenset[str]:
        return self.body | self.headers | self.query

    @property
    def per_message(self) -> frozenset[str]:
        """Names rendered once per message (message scope)."""
        if self.batch:
            return self.body_message
        return self.every

    @property
    def per_request(self) -> frozenset[str]:
        """Names rendered once per batch request (campaign scope); empty without batching."""
        if self.batch:
            return self.body_globals | self.headers | self.query
        return frozenset()

    def locations(self, name: str) -> list[str]:
        """Where ``name`` is used, for messages: ``body``, ``body globals``, ``headers``..."""
        places = []
        if name in self.body_globals:
            places.append("body globals")
        if name in self.body_message:
            places.append("message template" if self.batch else "body")
        if name in self.headers:
            places.append("headers")
        if name in self.query:
            places.append("query")
        return places


def _text_names(texts: Iterable[str]) -> frozenset[str]:
    return frozenset(name for text in texts for name in find_names(text))


def placeholder_usage(config: HttpConfig) -> PlaceholderUsage:
    """Analyse where ``config`` uses placeholders (no validation: see :func:`config_problems`)."""
    body = config.body
    array: Path | None = None
    if config.batch and config.method == "POST":
        array, _ = find_message_array(body)
    if array is not None:
        globals_ = names_in(body, skip=array)
        message = names_in(value_at(body, array)[0])
    else:
        globals_, message = frozenset(), names_in(body)
    key_names = {n for _, text, is_key in walk_strings(body) if is_key for n in find_names(text)}
    key_names |= _text_names(config.headers) | _text_names(config.query)
    return PlaceholderUsage(
        batch=array is not None,
        message_array=array,
        body_globals=globals_,
        body_message=message,
        headers=_text_names(config.headers.values()),
        query=_text_names(config.query.values()),
        in_names=frozenset(key_names),
    )


# --- validation on save ------------------------------------------------------------------


def _endpoint_problems(endpoint: str) -> list[str]:
    if not endpoint.lower().startswith(("http://", "https://")):
        return ["endpoint: must start with http:// or https://"]
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in endpoint):
        return ["endpoint: spaces and control characters are not allowed"]
    if find_names(endpoint):
        return [
            f"endpoint: placeholders are not substituted in the endpoint "
            f"({_listed(find_names(endpoint))}); use query"
        ]
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        return [f"endpoint: not a valid URL ({exc})"]
    if not url.host:
        return ["endpoint: a host is required"]
    if url.userinfo:
        return ["endpoint: credentials in the URL are not allowed; use auth 'basic'"]
    return []


def _header_problems(config: HttpConfig) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for name, value in config.headers.items():
        lower = name.lower()
        if not HEADER_NAME_RE.fullmatch(name):
            problems.append(f"headers: {name!r} is not a valid header name (RFC 9110 token)")
        elif lower in RESERVED_HEADERS:
            problems.append(f"headers: {name} is set by the HTTP client and cannot be configured")
        elif lower == "authorization" and config.auth == "basic":
            problems.append("headers: Authorization conflicts with auth 'basic'")
        if lower in seen:
            problems.append(f"headers: {name} is given twice (names are case-insensitive)")
        seen.add(lower)
        if CONTROL_IN_HEADER_VALUE.search(value):
            problems.append(f"headers: the value of {name} holds a line break or control character")
    return problems


def _link_problems(config: HttpConfig, usage: PlaceholderUsage) -> list[str]:
    """Why ``config`` cannot fill ``$$UnsubscribeURL`` / ``$$PreferencesURL``: no
    preference center, or a place rendered once per batch request."""
    problems = []
    links = usage.every & LINK_PLACEHOLDERS
    if links and config.preference_center == "none":  # (a saved one: config_warnings)
        problems.append(
            f"preference_center: 'none' leaves {_listed(links)} without a value; set it to "
            "'system' or 'custom' (each message then carries its recipient's own link)"
        )
    return problems + _link_place_problems(usage)


def _link_place_problems(usage: PlaceholderUsage) -> list[str]:
    """The link placeholders in places a batch request renders once (not per message)."""
    if not usage.batch:
        return []
    return [
        _per_request_problem(field, names & LINK_PLACEHOLDERS)
        for field, names in _per_request_places(usage)
        if names & LINK_PLACEHOLDERS
    ]


def _per_request_places(usage: PlaceholderUsage) -> tuple[tuple[str, frozenset[str]], ...]:
    """Where a batch request's placeholders are rendered once per request, by field."""
    return (("body", usage.body_globals), ("headers", usage.headers), ("query", usage.query))


def _per_request_problem(field: str, names: Iterable[str]) -> str:
    place = " in the global keys outside the message array" if field == "body" else ""
    return (
        f"{field}: per-message placeholders are not allowed in batch mode "
        f"({_listed(names)}){place}: this part is rendered once per request; move them "
        "into the message template object"
    )


def config_problems(config: HttpConfig) -> list[str]:
    """Every reason to refuse ``config`` on save, each naming the field and the problem."""
    problems = _endpoint_problems(config.endpoint)
    if config.auth == "basic" and not config.username:
        problems.append("username: required with auth 'basic'")
    if config.auth == "basic" and ":" in config.username:
        # RFC 7617 §2: the first colon of "user:password" ends the user-id.
        problems.append(
            "username: a basic-auth user name cannot hold a colon (RFC 7617 §2: the server "
            "would read the name up to it and the rest as the password)"
        )
    problems += _header_problems(config)
    if isinstance(config.body, str) and config.body.lstrip().startswith(("{", "[")):
        problems.append("body: give the JSON template as a JSON value, not as a string")
    wide = find_wide_integer(config.body, "body")
    if wide is not None:
        problems.append(f"body: {WIDE_INTEGER_PROBLEM} (at {wide})")

    usage = placeholder_usage(config)
    problems += _link_problems(config, usage)
    content_in_query = usage.query & CONTENT_PLACEHOLDERS
    if content_in_query:
        problems.append(
            f"query: content placeholders are not allowed in a URL ({_listed(content_in_query)}): "
            "its length makes requests fail at random; use POST"
        )
    if config.method == "GET":
        if config.body is not None:
            problems.append("body: a GET request carries no body; use query")
        if config.batch:
            problems.append("batch: batching needs method POST")
        missing = set(GET_MANDATORY) - usage.query
        if missing:
            problems.append(f"query: mandatory placeholders missing: {_listed(missing)}")
        return problems

    if config.body is None:
        return [*problems, f"body: required for POST, holding {_listed(POST_MANDATORY)}"]
    where = ""  # each problem names its field first ("body: ..."), once
    if config.batch:
        array, array_problems = find_message_array(config.body)
        problems += array_problems
        if array is None:
            return problems
        where = f" in the message template object ({_show((*array, 0))})"
        for field, names in _per_request_places(usage):
            wrong = names & PER_MESSAGE_SYSTEM - LINK_PLACEHOLDERS  # see _link_problems
            if wrong:
                problems.append(_per_request_problem(field, wrong))
    # The sender is the same for every message of a request (campaign level), so a batch
    # body may carry it once in its global keys, as many batch APIs take it.
    missing = (
        set(POST_MANDATORY) - usage.body_message - (usage.body_globals & CAMPAIGN_LEVEL_SYSTEM)
    )
    if missing:
        problems.append(f"body: mandatory placeholders missing{where}: {_listed(missing)}")
    return problems


def config_warnings(config: HttpConfig) -> list[str]:
    """Things a valid ``config`` should still tell its user."""
    usage = placeholder_usage(config)
    warnings: list[str] = []
    if not config.from_address and "FromAddress" in usage.every:
        warnings.append(
            "from_address is empty: every campaign must give its own ($$FromAddress would be "
            "sent empty)"
        )
    links = usage.every & LINK_PLACEHOLDERS
    if links and config.preference_center == "none":  # (saved before they were refused)
        warnings.append(
            f"{_listed(links)} filled from each recipient's vars, as when saved: with "
            "preference_center 'none' dispatch has no link for them (refused if saved now; "
            "set 'system' or 'custom' for dispatch's links, or rename them for your own)"
        )
    if config.preference_center != "none" and _LINK_NAME not in usage.every:
        # DESIGN §6 promises List-Unsubscribe on every message of a center; an HTTP
        # provider sends only what its payload holds (Gmail and Yahoo ask it of bulk mail).
        warnings.append(
            f"preference_center: {config.preference_center!r}, but no $${_LINK_NAME} in "
            "the payload: its messages carry no List-Unsubscribe (RFC 8058 one-click) "
            "unless the ESP adds its own; place it where the ESP takes a message's headers, "
            'e.g. {"List-Unsubscribe": "<$$UnsubscribeURL>", "List-Unsubscribe-Post": '
            '"List-Unsubscribe=One-Click"}'
        )
    if "MessageID" not in usage.per_message:
        warnings.append(
            "$$MessageID is not used: callbacks cannot be attributed to messages "
            "(no delivery tracking)"
        )
    if config.auth == "none" and (config.username or config.password.get_secret_value()):
        warnings.append(
            "username and password are not sent while auth is 'none'; set auth 'basic' to send them"
        )
    if usage.in_names:
        warnings.append(
            f"placeholders in keys and header or query names are not substituted: "
            f"{_listed(usage.in_names)}"
        )
    warnings += _exposure_warnings(config)
    folded = {name.lower(): name for name in SYSTEM_PLACEHOLDERS}
    for name in sorted(usage.every):
        system = folded.get(name.lower())
        if is_custom(name) and system is not None:
            warnings.append(
                f"$${name} is a custom placeholder (names are case-sensitive); "
                f"did you mean $${system}?"
            )
    return warnings


def _exposure_warnings(config: HttpConfig) -> list[str]:
    """Credentials sent to another machine in the clear (``http://``), as an SMTP login
    over security 'none' is warned of, or over TLS that checks no certificate."""
    try:
        url = httpx.URL(config.endpoint)
    except httpx.InvalidURL:  # (refused on save; a stored one is warned of elsewhere)
        return []
    if url.scheme != "http":
        return config.unchecked_tls_warnings(url.host, url.scheme == "https")
    sent = [
        ".".join(path)
        for path in secret_paths(config)
        if path != ("password",) and secret_value(config, path)
    ]
    if config.auth == "basic":
        sent.insert(0, "auth 'basic' (username and password)")
    if not sent or is_loopback_host(url.host):
        return []
    return [
        f"endpoint is http://: {', '.join(sent)} go to {url.host} in the clear, readable "
        "by anyone on the way (and every message with them); use https://"
    ]


# --- campaign-time check -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaceholderProblem:
    """A custom placeholder a campaign cannot fill."""

    name: str
    message: str


def required_recipient_vars(config: HttpConfig, campaign_vars: Mapping[str, Any]) -> frozenset[str]:
    """Custom names every recipient's vars must hold, given the campaign's vars.

    For recipients appended after creation: a recipient lacking one would fail at send.
    """
    usage = placeholder_usage(config)
    return frozenset(n for n in usage.per_message if is_custom(n) and n not in campaign_vars)


def check_placeholders(
    config: HttpConfig,
    campaign_vars: Mapping[str, Any],
    recipient_vars: Iterable[Collection[str]] = (),
) -> list[PlaceholderProblem]:
    """Every custom placeholder the campaign cannot fill, each naming the placeholder.

    ``recipient_vars`` holds each recipient's vars (a mapping, or just its names).
    A per-message placeholder must come from the recipient's vars or the campaign's; a
    placeholder of a batch request's globals, headers or query from the campaign's vars
    only. Recipients appended later are checked with :func:`required_recipient_vars`.
    A campaign's value used in a header must be one a header can carry (no line break or
    control character; a recipient's own such value fails that message alone).
    """
    usage = placeholder_usage(config)
    # A configuration saved before the link placeholders were system ones (it is not
    # checked when read back, see providers.config STORED) may have one where a batch
    # request renders once: no message's link can go there.
    problems = [PlaceholderProblem(_LINK_NAME, why) for why in _link_place_problems(usage)]
    # A campaign's value no header can carry would fail every message it fills as
    # ``Invalid message`` (in a batch, all of them), and retry-failed skips those.
    problems += [
        PlaceholderProblem(
            name,
            f"$${name} (in the headers): the campaign's value holds a line break or control "
            "character, which a header value cannot carry",
        )
        for name in sorted(usage.headers & campaign_vars.keys())
        if isinstance(value := campaign_vars[name], str) and CONTROL_IN_HEADER_VALUE.search(value)
    ]
    per_request = sorted(n for n in usage.per_request if is_custom(n) and n not in campaign_vars)
    required = sorted(n for n in usage.per_message if is_custom(n) and n not in campaign_vars)
    missing_count = dict.fromkeys(required, 0)
    first_missing: dict[str, int] = {}
    in_recipients: set[str] = set()
    for index, names in enumerate(recipient_vars):
        for name in required:
            if name not in names:
                missing_count[name] += 1
                first_missing.setdefault(name, index)
        if per_request:  # (most payloads have none: skip the work per recipient)
            in_recipients.update(n for n in per_request if n in names)

    for name in per_request:
        where = " and ".join(p for p in usage.locations(name) if p != "message template")
        if name in in_recipients:
            message = (
                f"$${name} is used in the {where} of batch requests, which take campaign-level "
                f"values only, but is set only in recipients' vars: set it in the campaign's vars"
            )
        else:
            message = f"$${name} (in the {where}) has no value: set it in the campaign's vars"
        problems.append(PlaceholderProblem(name, message))
    for name in required:
        count = missing_count[name]
        if count:
            where = " and ".join(usage.locations(name))
            problems.append(
                PlaceholderProblem(
                    name,
                    f"$${name} (in the {where}) has no value for {count} recipient(s), first "
                    f"recipient #{first_missing[name]}: set it in every recipient's vars or in "
                    "the campaign's vars",
                )
            )
    return problems
