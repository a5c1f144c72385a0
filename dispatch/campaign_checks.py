"""A campaign's checks before it is stored: its fields, templates, sender, copies,
recipients (one at a time, for a streamed append) and the fingerprint of a repeat."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any, Final

import jinja2
import jinja2.nodes
import orjson
import redis
from pydantic import TypeAdapter, ValidationError

from dispatch import payload_checks, suppressions
from dispatch.campaign_errors import CampaignError, SuppressedCopyError
from dispatch.models import CampaignContent, CampaignRequest, Recipient, recipient_vars
from dispatch.rendering import SERVICE_NAMES, CompiledContent, RenderError
from dispatch.template_sandbox import check_template_size
from providers.addresses import InvalidAddressError, normalize_address
from providers.config import (
    FIELD_PROBLEMS,
    LONE_SURROGATE_PROBLEM,
    NOT_FINITE_PROBLEM,
    SMTP_KINDS,
    WIDE_INTEGER_PROBLEM,
    HttpConfig,
    ProviderBase,
    check_display_name,
    find_lone_surrogate,
    find_not_finite,
    find_wide_integer,
)
from providers.http_config import required_recipient_vars

# The recipients are hashed this many at a time, each chunk as one JSON array: the
# fingerprints stored depend on it (a different size would make every repeat a conflict).
FINGERPRINT_CHUNK = 1000


# "field: message", our validators' convention for a model-level problem: the field is a
# name or a path into it (``body.msgs[0]``).
_NAMED_PROBLEM = re.compile(r"(?P<field>[A-Za-z_]\w*(?:\.\w+|\[\d+\])*): (?P<message>.+)", re.S)


_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words (``an array``)."""
    for kind, name in ((bool, "a boolean"), (int | float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "an array" if isinstance(value, list | tuple) else "null" if value is None else "that"


def validation_problems(
    errors: Iterable[Mapping[str, Any]], *, drop_prefix: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """``(field, message)`` for each error of a pydantic ``ValidationError.errors()``.

    The field is the dotted location (``recipients.3.email``) without ``drop_prefix``
    (the tag a discriminated union puts in front, ``smtp.port``). A model-level error
    (no location) whose message starts with ``field: `` (our validators' convention) is
    attributed to that field, which then leaves the message: every field is named once.
    One that holds several such problems (:data:`providers.config.FIELD_PROBLEMS`) gives
    one pair each.
    """
    out: list[tuple[str, str]] = []
    for err in errors:
        loc = [str(part) for part in err["loc"]]
        ctx = err.get("ctx") or {}
        messages = ctx.get(FIELD_PROBLEMS) or [str(err["msg"]).removeprefix("Value error, ")]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = [str(ctx.get("discriminator", "kind")).strip("'")]
            messages = [_tag_problem(ctx)]
        elif drop_prefix and tuple(loc[: len(drop_prefix)]) == drop_prefix:
            loc = loc[len(drop_prefix) :]
        if not loc and err["type"] in _NOT_AN_OBJECT:
            messages = [f"must be a JSON object, not {_json_type(err.get('input'))}"]
        for message in messages:
            field = ".".join(loc)
            named = _NAMED_PROBLEM.fullmatch(message)
            if named and (not loc or named["field"] == loc[-1]):
                field = ".".join([*loc[:-1], named["field"]]) if loc else named["field"]
                message = named["message"]
            out.append((field or "body", message))
    return out


def _tag_problem(ctx: Mapping[str, Any]) -> str:
    """What is wrong with a provider's ``kind`` (the only tagged union), in words: pydantic
    says "Unable to extract tag using discriminator 'kind'" for one left out."""
    kinds = ", ".join((*SMTP_KINDS, "http"))
    if "tag" in ctx:
        return f"{ctx['tag']!r} is no kind of provider: one of {kinds}"
    return f"missing: the provider's kind, one of {kinds}"


_TIMES = ("send_at", "expires_at")


def request_fingerprint(request: CampaignRequest, *, times_as_given: bool = False) -> str:
    """A hash of everything but the id: the same id with the same content is a repeat.
    ``times_as_given``: the hash versions before b5ac507 (2026-11-23) stored, which read
    ``send_at`` and ``expires_at`` in the offset the request gave.

    The content's keys are sorted; the recipients (possibly a million) are hashed in
    their order, a chunk at a time (one orjson call each).

    Raises :class:`CampaignError` naming an integer beyond 64 bits in the vars (orjson
    cannot write one here, nor in a provider's payload, and reads one back as a float)
    or a text holding a lone UTF-16 surrogate (no UTF-8 for it: nothing can store or
    send it).
    """
    _refuse_too_deep(request.vars, "vars")
    # Before pydantic writes the vars: it wrote a key holding a lone surrogate at the top
    # as three U+FFFD (the campaign stored another var than given, without a word) and
    # raised UnicodeEncodeError for one deeper (a 500).
    found = find_lone_surrogate(request.vars, "vars")
    if found is not None:
        raise CampaignError(LONE_SURROGATE_PROBLEM, field=found)
    # Times as instants: a repeat may give them in another offset (a client's local time).
    utc = {name: at.astimezone(UTC) for name in _TIMES if (at := getattr(request, name))}
    utc = {} if times_as_given else utc
    body = request.model_copy(update=utc).model_dump(mode="json", exclude={"id", "recipients"})
    try:
        written = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        _refuse_unwritable(body, "")
        raise
    if b"null" in written:  # (orjson writes NaN and infinity as null)
        _refuse_not_finite(request.vars, "vars")
    digest = hashlib.sha256(written)
    for start in range(0, len(request.recipients), FINGERPRINT_CHUNK):
        chunk = request.recipients[start : start + FINGERPRINT_CHUNK]
        try:
            # Wrapped so deep that orjson's own limit is MAX_VARS_DEPTH for the vars: the
            # depth is checked without a walk of every recipient (3 µs each).
            written = orjson.dumps(_deepened(chunk))[_DEEPEN:-_DEEPEN]
        except TypeError:  # a value only pydantic's encoder writes, or one nested too deep
            _refuse_too_deep(dict(enumerate(chunk, start)), "recipients", 2)
            _refuse_unwritable(chunk, "recipients", offset=start)
            written = _RECIPIENTS.dump_json(chunk)
        if b"null" in written:
            _refuse_not_finite(dict(enumerate(chunk, start)), "recipients")
        digest.update(written)
    return digest.hexdigest()


def offset_given(request: CampaignRequest) -> bool:
    """Whether ``send_at`` or ``expires_at`` was given in an offset other than UTC's."""
    return any((at := getattr(request, name)) and at.utcoffset() for name in _TIMES)


def _refuse_not_finite(value: Any, path: str) -> None:
    """Raise :class:`CampaignError` naming the first NaN or infinity in ``value``: JSON
    has none (the CLI's YAML and the Celery task's JSON reader take them), and stored it
    would silently become null."""
    found = find_not_finite(value, path)
    if found is not None:
        raise CampaignError(NOT_FINITE_PROBLEM, field=found)


def _refuse_unwritable(value: Any, path: str, offset: int = 0) -> None:
    """Raise :class:`CampaignError` naming the first integer beyond 64 bits or the first
    text holding a lone surrogate in ``value`` (a list whose first item is item
    ``offset`` of ``path``)."""
    if offset:
        value = dict(enumerate(value, offset))
    found = find_wide_integer(value, path)
    if found is not None:
        raise CampaignError(WIDE_INTEGER_PROBLEM, field=found)
    found = find_lone_surrogate(value, path)
    if found is not None:
        raise CampaignError(LONE_SURROGATE_PROBLEM, field=found or "body")


# How deep a value in vars may nest arrays and objects. orjson, which stores and sends
# them, writes at most 254 levels (with the levels around vars: the list of recipients, a
# recipient); a deeper value made a 500 when it was stored.
MAX_VARS_DEPTH = 128
TOO_DEEP_PROBLEM: Final = f"nested more than {MAX_VARS_DEPTH} arrays or objects deep"


# orjson writes at most 254 levels of arrays and objects; a list of recipients in that
# many lists less 3 (the list, a recipient, its vars) and MAX_VARS_DEPTH fails to write
# exactly when a recipient nests a value deeper than _refuse_too_deep allows.
_ORJSON_MAX_DEPTH = 254
_DEEPEN = _ORJSON_MAX_DEPTH - 3 - MAX_VARS_DEPTH


def _deepened(value: Any) -> Any:
    """``value`` inside :data:`_DEEPEN` lists."""
    for _ in range(_DEEPEN):
        value = [value]
    return value


def _refuse_too_deep(value: Any, path: str, wrapping: int = 0) -> None:
    """Raise :class:`CampaignError` naming the first value nested more than
    :data:`MAX_VARS_DEPTH` deep in ``value`` (``wrapping`` levels above the vars: a
    recipient, a position in a list of them). Iterative: Python's own recursion limit is
    about as deep as what it reads."""
    stack: list[tuple[Any, str, int]] = [(value, path, -wrapping)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict):
            pairs: Iterable[tuple[Any, Any]] = item.items()
        elif isinstance(item, list | tuple):
            pairs = enumerate(item)
        else:
            continue
        if depth > MAX_VARS_DEPTH:
            raise CampaignError(TOO_DEEP_PROBLEM, field=where)
        stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in pairs)


# A run of 19 digits: where a JSON integer beyond 64 bits could be (-2**63 has 19). Looked
# for only in a document with 19 digits in all (counting them is a quarter of the search).
_LONG_NUMBER = re.compile(rb"\d{19}")
_DIGITS = b"0123456789"


def load_recipient(raw: bytes) -> Any:
    """One streamed recipient document, parsed.

    orjson reads an integer beyond 64 bits as a float, silently; the rare document with
    a run of 19 digits is read again exactly (``json``) to refuse one. Raises
    ``orjson.JSONDecodeError``, :class:`CampaignError` naming the integer, or the first
    byte that is not UTF-8.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        _refuse_not_utf8(raw)
        raise
    if len(raw) - len(raw.translate(None, _DIGITS)) >= 19 and _LONG_NUMBER.search(raw):
        _refuse_unwritable(json.loads(raw), "")
    if raw.count(b"[") + raw.count(b"{") > MAX_VARS_DEPTH:  # (else it cannot be too deep)
        _refuse_too_deep(data, "", 1)
    return data


def _refuse_not_utf8(raw: bytes) -> None:
    """Raise :class:`CampaignError` naming the first byte of ``raw`` that is not UTF-8:
    orjson says "surrogates not allowed" at "column 1" whatever the byte and wherever it
    is (a Latin-1 "é" in a name, a body saved as UTF-16). The column counts characters,
    as an editor does; in a recipient written over several lines (a JSON array's element)
    its line is told too, counted from the recipient's first."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = " (UTF-16, by its byte order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        before = raw[: exc.start].decode("utf-8")  # (all UTF-8 up to the first such byte)
        lines = before.count("\n")
        column = len(before) - before.rfind("\n")  # (rfind: -1 on the first line)
        where = f"column {column}"
        if lines:
            where = f"line {lines + 1}, {where} of this recipient"
        raise CampaignError(
            f"not UTF-8 text{utf16}: byte 0x{raw[exc.start]:02x} at {where}; "
            "send the body as UTF-8",
            field="body",
        ) from None


RECIPIENT: TypeAdapter[Recipient] = TypeAdapter(Recipient)
_RECIPIENTS: TypeAdapter[list[Recipient]] = TypeAdapter(list[Recipient])
_SEARCHED_AT_ONCE = 1000  # recipients checked again at a time by first_request_errors


def first_request_errors(body: dict[str, Any], exc: ValidationError, limit: int) -> list[Any]:
    """The errors of ``exc`` (``CampaignRequest``'s refusal of ``body``), or when there
    are more than ``limit``: those of its fields but ``recipients``, then those of the
    recipients in order until about ``limit``, found by checking ``body`` again piece by
    piece. ``exc.errors()`` builds every error at once, holding the interpreter: 8 s for
    the 600,000 of 300,000 recipients with a misnamed key.
    """
    if exc.error_count() <= limit:
        return exc.errors(include_url=False)
    found: list[Any] = []
    fields = {k: v for k, v in body.items() if k != "recipients"}
    try:
        CampaignRequest.model_validate(fields)
    except ValidationError as others:
        found += others.errors(include_url=False)[:limit]
    recipients = body.get("recipients")
    at = 0
    while isinstance(recipients, list) and at < len(recipients) and len(found) < limit:
        try:
            _RECIPIENTS.validate_python(recipients[at : at + _SEARCHED_AT_ONCE])
        except ValidationError as some:
            found += [
                {**e, "loc": ("recipients", at + int(e["loc"][0]), *e["loc"][1:])}
                for e in some.errors(include_url=False)
            ]
        at += _SEARCHED_AT_ONCE
    return found


def check_campaign(
    request: CampaignRequest, provider: ProviderBase, campaign_id: str
) -> CampaignContent:
    """The campaign's content under ``campaign_id``, once it passed every check of its
    own and against ``provider`` (templates, sender, recipients a message, the template
    variables and ``$$`` placeholders each recipient needs); not those that depend on
    what is stored (a repeat, suppressed copies, AMP without HTML for a new campaign).
    Raises :class:`CampaignError` naming the field.
    """
    compiled = compile_content(request)
    content = request.content(campaign_id)
    check_sender(content, provider)
    check_recipients_per_message(content, provider)
    names = names_from_recipients(request, compiled)
    if isinstance(provider, HttpConfig):
        names |= required_recipient_vars(provider, content.vars)
    complete = every_recipient_has(request.recipients, names)
    if not complete:
        check_template_names(request, compiled)
    # (Its campaign-level placeholders are checked whatever the recipients hold.)
    payload_checks.check_campaign_payload(content, [] if complete else request.recipients, provider)
    return content


def validate_content(request: CampaignRequest) -> CompiledContent:
    """Compile the templates and check that every variable they use can be resolved.

    Raises :class:`CampaignError` naming the template part or the unknown variable.
    """
    compiled = compile_content(request)
    check_amp_has_html(request)
    check_template_names(request, compiled)
    return compiled


def compile_content(request: CampaignRequest) -> CompiledContent:
    for part in ("subject", "html", "text", "amp"):
        try:  # before Jinja2 compiles it: a huge template takes the API's memory
            check_template_size(getattr(request, part))
        except ValueError as exc:
            raise CampaignError(f"{part}: {exc}", field=part) from None
    try:
        compiled = CompiledContent(
            subject=request.subject, html=request.html, text=request.text, amp=request.amp
        )
    except RenderError as exc:
        raise CampaignError(str(exc), field=str(exc).split(":", 1)[0]) from exc
    _check_subject_text(request.subject)
    return compiled


# amp.dev, "Structure and rendering of AMP emails": some mail clients render only the last
# part of a multipart/alternative; the AMP part goes before the HTML one, and without an
# HTML part it is the last: those clients would show every recipient the AMP source.
AMP_WITHOUT_HTML: Final = (
    "an AMP part needs an html part beside it: mail clients that show only the last "
    "part of a message would show the AMP source (the AMP part goes before the html one)"
)


def check_not_expired(content: CampaignContent, now: float) -> None:
    """Raises :class:`CampaignError` on ``expires_at`` when it is not after ``now``."""
    if content.expires_at is not None and content.expires_at.timestamp() <= now:
        raise CampaignError("must be in the future", "expires_at")


def check_amp_has_html(request: CampaignRequest) -> None:
    """Raises :class:`CampaignError` on ``amp`` for an AMP part with no HTML part."""
    if request.amp.strip() and not request.html.strip():
        raise CampaignError(AMP_WITHOUT_HTML, field="amp")


_TEMPLATE_PARSER = jinja2.Environment(autoescape=False)  # parses only (the syntax is Jinja2's)


def _check_subject_text(subject: str) -> None:
    """Refuse a line break (or another control character) written in the subject
    template itself: every message would fail (a header cannot carry it). One that a
    value brings fails that message alone; the rendered subject is stripped, so line
    breaks around it are harmless. Call once the template compiles.
    """
    ast = _TEMPLATE_PARSER.parse(subject.strip())
    for node in ast.find_all(jinja2.nodes.TemplateData):
        try:
            check_display_name(node.data)
        except ValueError as exc:
            raise CampaignError(f"{exc} ({node.data!r})", field="subject") from None


def names_from_recipients(request: CampaignRequest, compiled: CompiledContent) -> set[str]:
    """The template names only recipients' vars can fill."""
    return compiled.required - set(request.vars) - SERVICE_NAMES


def check_template_names(request: CampaignRequest, compiled: CompiledContent) -> None:
    needed = names_from_recipients(request, compiled)
    lacking: dict[str, int] = dict.fromkeys(needed, 0)  # recipients without each name
    first: dict[str, int] = {}
    if request.recipients and needed:
        # A name is resolvable if the campaign or every recipient provides it (one pass).
        for index, r in enumerate(request.recipients):
            names = recipient_vars(r).keys()
            if not needed <= names:
                for name in needed - names:
                    lacking[name] += 1
                    first.setdefault(name, index)
    unknown = sorted(first)
    if unknown:
        total = len(request.recipients)
        raise CampaignError(
            "unknown template variable(s): "
            + "; ".join(
                f"{name} ({compiled.used_at.get(name, 'template')}): missing from the campaign "
                f"vars and from the vars of {lacking[name]} of {total} recipient(s), first "
                f"#{first[name]}; give it there, or write {{{{ {name} | default('') }}}}"
                for name in unknown
            ),
            field="vars",
        )


def check_sender(content: CampaignContent, provider: ProviderBase) -> None:
    """A message needs a From address: the campaign's, or its provider's default (an HTTP
    payload's mandatory ``$$FromAddress`` would be sent empty). Raises :class:`CampaignError`."""
    if provider.sends_from_address() and not (content.from_address or provider.from_address):
        raise CampaignError(
            f"the campaign must give one: provider {content.provider!r} has none to default to",
            field="from_address",
        )


def check_recipients_per_message(content: CampaignContent, provider: ProviderBase) -> None:
    """Cc and Bcc go with every message: past the provider's recipients per message (SES
    50, Gmail 100), every one would fail. Raises :class:`CampaignError`."""
    limit = getattr(provider, "max_recipients_per_message", 0)
    count = 1 + len(content.cc) + len(content.bcc)
    if limit and count > limit:
        raise CampaignError(
            f"each message would have {count} recipients (to, cc and bcc); provider "
            f"{content.provider!r} allows {limit} per message",
            field="bcc" if content.bcc else "cc",
        )


def check_copies_not_suppressed(content: CampaignContent, r: redis.Redis) -> None:
    """Cc and Bcc get a copy of every message: an address that bounced, complained or
    unsubscribed would get one per recipient. Raises :class:`SuppressedCopyError`."""
    for field, addresses in (("cc", content.cc), ("bcc", content.bcc)):
        for address in addresses:
            entry = suppressions.get(address, client=r)
            if entry is not None:
                raise SuppressedCopyError(
                    f"{entry.get('email', address)} is on the suppression list "
                    f"({suppressions.describe(entry)}): each message of the campaign would "
                    f"send it a copy. Take it out of {field}, or remove the entry "
                    f"(DELETE /v1/suppressions/{address})",
                    field=field,
                )


def every_recipient_has(recipients: list[Recipient], names: set[str]) -> bool:
    """Whether each recipient's vars hold all of ``names``: one pass for the template's
    and the payload's names (the checks that name what is missing run only if not)."""
    if names:
        for r in recipients:
            if not names <= recipient_vars(r).keys():
                return False
    return True


class RecipientChecker:
    """Checks recipients of one campaign one by one before they are appended.

    A recipient must be a valid ``Recipient`` document with a sendable address, and its
    ``vars`` must supply every template variable (and, for the ``http`` kind, every
    per-message ``$$`` placeholder) the campaign's own ``vars`` do not (DESIGN §3: an
    unresolvable name is reported up front, never at send time).
    """

    def __init__(self, content: CampaignContent, provider: ProviderBase | None = None) -> None:
        try:
            compiled = CompiledContent(
                subject=content.subject, html=content.html, text=content.text, amp=content.amp
            )
        except RenderError as exc:  # the content was checked when it was stored
            raise CampaignError(str(exc), field=str(exc).split(":", 1)[0]) from exc
        self.required = frozenset(compiled.required - set(content.vars) - SERVICE_NAMES)
        self.used_at = compiled.used_at
        # The http kind's per-message $$ placeholders that only recipients can fill.
        self.placeholders: frozenset[str] = frozenset()
        if isinstance(provider, HttpConfig):
            self.placeholders = required_recipient_vars(provider, content.vars)

    def check(self, data: Any) -> Recipient:
        """The recipient; raises :class:`CampaignError` naming the field at fault."""
        if not isinstance(data, dict):  # as pydantic says it, at a fifth of the cost
            raise CampaignError(f"must be a JSON object, not {_json_type(data)}", field="body")
        try:
            recipient = RECIPIENT.validate_python(data)
        except ValidationError as exc:
            field, message = validation_problems(exc.errors())[0]
            raise CampaignError(message, field=field) from None
        try:
            normalize_address(recipient["email"])
        except InvalidAddressError as exc:
            raise CampaignError(str(exc), field="email") from None
        names = recipient_vars(recipient).keys()
        missing = self.required - names
        if missing:
            name = min(missing)
            raise CampaignError(
                f"template variable {name!r} ({self.used_at.get(name, 'template')}) is in "
                "neither the campaign vars nor this recipient's vars",
                field=f"vars.{name}",
            )
        missing = self.placeholders - names
        if missing:
            name = min(missing)
            raise CampaignError(
                f"placeholder $${name} of the provider's payload is in neither the campaign "
                "vars nor this recipient's vars",
                field=f"vars.{name}",
            )
        return recipient
