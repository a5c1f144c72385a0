"""Campaign lifecycle: create (idempotent by id), append recipients, start, read status."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import jinja2
import jinja2.nodes
import orjson
import redis
from pydantic import TypeAdapter, ValidationError

from dispatch import payload_checks, store, suppressions
from dispatch.models import (
    COUNTER_NAMES,
    CampaignContent,
    CampaignRequest,
    CampaignStatus,
    Recipient,
    campaign_request,
    recipient_vars,
)
from dispatch.provider_store import ProviderNotFoundError, load_provider
from dispatch.recipient_pages import PAGE, line_safe, stored_count
from dispatch.rendering import SERVICE_NAMES, CompiledContent, RenderError
from dispatch.settings import get_settings
from dispatch.suppressions import suppression_key
from providers.addresses import InvalidAddressError, normalize_address
from providers.config import (
    FIELD_PROBLEMS,
    LONE_SURROGATE_PROBLEM,
    NOT_FINITE_PROBLEM,
    WIDE_INTEGER_PROBLEM,
    HttpConfig,
    ProviderBase,
    check_display_name,
    find_lone_surrogate,
    find_not_finite,
    find_wide_integer,
)
from providers.http_config import required_recipient_vars

APPEND_CHUNK = 1000
EnqueueBatch = Callable[[str, int], None]


# Campaigns with an expires_at, by that time (the housekeeping task expires them).
class CampaignError(ValueError):
    """The campaign is invalid; ``field`` names what is at fault (HTTP 422)."""

    def __init__(
        self, message: str, field: str = "", problems: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.problems = tuple(problems)  # (field, message) each, when there are several


class CampaignConflictError(CampaignError):
    """The id is taken by a campaign with other content (HTTP 409)."""


class CampaignNotFoundError(KeyError):
    """No campaign has that id."""


class CampaignStateError(CampaignError):
    """The operation does not fit the campaign's status (HTTP 409)."""


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


_TIMES = ("send_at", "expires_at")


def _fingerprint(request: CampaignRequest, *, times_as_given: bool = False) -> str:
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
    for start in range(0, len(request.recipients), APPEND_CHUNK):
        chunk = request.recipients[start : start + APPEND_CHUNK]
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


def _offset_given(request: CampaignRequest) -> bool:
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
    ``orjson.JSONDecodeError``, :class:`CampaignError` naming the integer.
    """
    data = orjson.loads(raw)
    if len(raw) - len(raw.translate(None, _DIGITS)) >= 19 and _LONG_NUMBER.search(raw):
        _refuse_unwritable(json.loads(raw), "")
    if raw.count(b"[") + raw.count(b"{") > MAX_VARS_DEPTH:  # (else it cannot be too deep)
        _refuse_too_deep(data, "", 1)
    return data


_RECIPIENT: TypeAdapter[Recipient] = TypeAdapter(Recipient)
_RECIPIENTS: TypeAdapter[list[Recipient]] = TypeAdapter(list[Recipient])


def validate_content(request: CampaignRequest) -> CompiledContent:
    """Compile the templates and check that every variable they use can be resolved.

    Raises :class:`CampaignError` naming the template part or the unknown variable.
    """
    compiled = _compile(request)
    _check_template_names(request, compiled)
    return compiled


def _compile(request: CampaignRequest) -> CompiledContent:
    try:
        compiled = CompiledContent(
            subject=request.subject, html=request.html, text=request.text, amp=request.amp
        )
    except RenderError as exc:
        raise CampaignError(str(exc), field=str(exc).split(":", 1)[0]) from exc
    _check_subject_text(request.subject)
    return compiled


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


def _names_from_recipients(request: CampaignRequest, compiled: CompiledContent) -> set[str]:
    """The template names only recipients' vars can fill."""
    return compiled.required - set(request.vars) - SERVICE_NAMES


def _check_template_names(request: CampaignRequest, compiled: CompiledContent) -> None:
    needed = _names_from_recipients(request, compiled)
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


def _check_sender(content: CampaignContent, provider: ProviderBase) -> None:
    """A message needs a From address: the campaign's, or its provider's default (an HTTP
    payload's mandatory ``$$FromAddress`` would be sent empty). Raises :class:`CampaignError`."""
    if provider.sends_from_address() and not (content.from_address or provider.from_address):
        raise CampaignError(
            f"the campaign must give one: provider {content.provider!r} has none to default to",
            field="from_address",
        )


def _check_recipients_per_message(content: CampaignContent, provider: ProviderBase) -> None:
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


class SuppressedCopyError(CampaignStateError):
    """A Cc or Bcc address is on the suppression list (HTTP 409, field ``cc`` or ``bcc``)."""


def _check_copies_not_suppressed(content: CampaignContent, r: redis.Redis) -> None:
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


def _every_recipient_has(recipients: list[Recipient], names: set[str]) -> bool:
    """Whether each recipient's vars hold all of ``names``: one pass for the template's
    and the payload's names (the checks that name what is missing run only if not)."""
    if names:
        for r in recipients:
            if not names <= recipient_vars(r).keys():
                return False
    return True


# A campaign is stored whole or not at all, in one step with the claim of its id: a
# repeat of the same request (a client retrying, two identical posts at once) finds it
# complete, never an id whose content is still being written (that answered 404), and
# a creation that fails half-way cannot leave an id claimed with no campaign under it.
# Returns nil once stored, else the fingerprint already under that id.
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'fingerprint', ARGV[1]) == 0 then
  return redis.call('HGET', KEYS[1], 'fingerprint')
end
redis.call('HSET', KEYS[1], 'content', ARGV[2], 'provider', ARGV[3], 'status', 'draft',
           'created_at', ARGV[4], 'reason', '')
for i = 9, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], 0) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[7])
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'send_at', ARGV[8]) end
return false
"""


def create_campaign(
    request: CampaignRequest,
    *,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
) -> tuple[str, bool]:
    """Store a campaign and, unless it is a draft or has no recipients, start it.

    Returns ``(campaign_id, created)``; re-posting the same id with the same content
    returns ``created=False`` and changes nothing. Raises :class:`CampaignError` (422),
    :class:`CampaignConflictError` and :class:`SuppressedCopyError` (409).
    """
    r = client or store.sync_client()
    try:
        provider = load_provider(request.provider, r)
    except ProviderNotFoundError:
        raise CampaignError(f"provider {request.provider!r} does not exist", "provider") from None
    compiled = _compile(request)
    campaign_id = request.id or secrets.token_hex(8)
    content = request.content(campaign_id)
    _check_sender(content, provider)
    _check_recipients_per_message(content, provider)
    names = _names_from_recipients(request, compiled)
    if isinstance(provider, HttpConfig):
        names |= required_recipient_vars(provider, content.vars)
    complete = _every_recipient_has(request.recipients, names)
    if not complete:
        _check_template_names(request, compiled)
    # (Its campaign-level placeholders are checked whatever the recipients hold.)
    payload_checks.check_campaign_payload(content, [] if complete else request.recipients, provider)
    fingerprint = _fingerprint(request)
    stored = r.hget(store.campaign_key(campaign_id), "fingerprint")
    # Stored by a version that hashed the times as given: a repeat all the same.
    if (
        stored not in (None, fingerprint)
        and _offset_given(request)
        and stored == _fingerprint(request, times_as_given=True)
    ):
        fingerprint = stored
    if stored != fingerprint:
        _check_copies_not_suppressed(content, r)  # (a repeat is answered as before)
    now = time.time()
    expired = content.expires_at is not None and content.expires_at.timestamp() <= now
    # Only a repeat of a campaign stored before its expiry is answered (as a repeat).
    if expired and stored != fingerprint:
        raise CampaignError("must be in the future", "expires_at")
    found = r.eval(
        _CREATE,
        6,
        store.campaign_key(campaign_id),
        store.counters_key(campaign_id),
        store.CAMPAIGNS_ZSET,
        store.CATEGORIES_SET,
        store.EXPIRING_ZSET,
        store.KEPT_ZSET,
        fingerprint,
        content.model_dump_json(),
        content.provider,  # read with the campaign by each batch run
        repr(now),
        campaign_id,
        content.category,
        "" if content.expires_at is None else repr(content.expires_at.timestamp()),
        "" if content.send_at is None else repr(content.send_at.timestamp()),
        *COUNTER_NAMES,
    )
    if found is not None:
        if found != fingerprint:
            raise CampaignConflictError(
                f"campaign {campaign_id!r} exists with other content", field="id"
            )
        if request.recipients and (request.draft or content.send_at is not None):
            _complete_draft(campaign_id, request, r, enqueue)
            return campaign_id, False
        resume_at = _await_fill(campaign_id, r) if request.recipients else None
        if resume_at is not None:
            with background_enqueuer(enqueue) as send:
                _append_and_send(campaign_id, request.recipients, r, send, resume_at)
        return campaign_id, False
    if request.recipients:
        later = content.send_at is not None and content.send_at > datetime.now(UTC)
        if request.draft or later:
            append_recipients(campaign_id, request.recipients, client=r)
            if not request.draft:
                start_campaign(campaign_id, client=r, enqueue=enqueue)
        else:
            with background_enqueuer(enqueue) as send:
                _append_and_send(campaign_id, request.recipients, r, send)
    return campaign_id, True


def _complete_draft(
    campaign_id: str, request: CampaignRequest, r: redis.Redis, enqueue: EnqueueBatch | None
) -> None:
    """A repeat of the request that posted a draft (or a campaign for later) with its
    list: that request stores the whole list while the campaign is a draft, then starts
    it unless it is a draft. If it stopped half-way (Redis failed, the process died), the
    campaign is still a draft with part of the list: the repeat stores the rest (the
    addresses stored are skipped) and starts it as that request would have. Once the
    campaign has started (by that request, or by the client), the repeat changes nothing.
    """
    if get_status(campaign_id, r) is not CampaignStatus.DRAFT:
        return
    with contextlib.suppress(CampaignStateError):  # started meanwhile: it has its list
        append_recipients(campaign_id, request.recipients, client=r)
        if not request.draft:
            start_campaign(campaign_id, client=r, enqueue=enqueue)


def create_from_task(body: Any, task_id: str | None) -> str:
    """``create_campaign`` for the ``dispatch.enqueue_campaign`` task, with the JSON of
    ``POST /v1/campaigns``; returns the campaign's id.

    A body without an ``id`` takes the task's: a task run again (its worker died before
    acknowledging it) is a repeat of the same campaign, not a second one sent to the
    same recipients, and the caller can follow it by the id ``send_task`` gave it.
    Raises :class:`CampaignError` naming the field (an invalid body too), and
    :class:`CampaignConflictError`.
    """
    if isinstance(body, dict) and body.get("id") is None and task_id:
        body = {**body, "id": task_id}
    try:
        request = campaign_request(body)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        field, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CampaignError(f"{field}: {message}{more}", field=field) from None
    try:
        return create_campaign(request)[0]
    except CampaignError as exc:
        # The caller reads only the text: name the field first, as the API's detail does.
        if exc.field and not str(exc).startswith(f"{exc.field}: "):
            exc.args = (f"{exc.field}: {exc}",)
        raise


# A filler (the request that posted a campaign with its list) whose progress stopped
# this long ago is taken for dead: a repeat of the same request takes over from there.
FILL_STALE_SECONDS = 30.0
INTERRUPTED_REASON = (
    "creation interrupted: post the same request again to store the rest of its recipients"
)

_TAKE_OVER_FILL = """
if redis.call('HEXISTS', KEYS[1], 'appending') == 0 then return false end
local t = tonumber(redis.call('TIME')[1])
if t - tonumber(redis.call('HGET', KEYS[1], 'filled_at') or '0') < tonumber(ARGV[1]) then
  return false
end
redis.call('HSET', KEYS[1], 'filled_at', t, 'reason', '')
return redis.call('HGET', KEYS[1], 'filled') or '0'
"""


# The start of a campaign posted with its list, unless it ended since it was stored (a
# cancel landing in between stands: the filling finds it ended and stops). ARGV: the
# active index's score and member, then the fields to set, name and value.
_START_FILLING = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur == 'cancelled' or cur == 'expired' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def _append_and_send(
    campaign_id: str,
    recipients: list[Recipient],
    r: redis.Redis,
    enqueue: EnqueueBatch,
    resume_at: int | None = None,
) -> None:
    """Start at once and enqueue each batch as soon as its recipients are stored.

    The first messages leave while a long list is still being stored. The campaign
    carries an ``appending`` mark meanwhile, so that it cannot complete between two
    chunks (its ``queued`` counter can touch 0 while later batches are not stored yet),
    and how far into ``recipients`` it got (``filled``, written with each chunk). When
    this fails half-way (Redis, the process), what is stored sends and the campaign
    waits, ``appending``: a repeat of the request resumes at ``resume_at`` (the stored
    addresses are skipped), and it completes once the whole list is stored.
    """
    key = store.campaign_key(campaign_id)
    # A fill taken over keeps the size its batches were cut to (the setting may differ).
    cut = r.hget(key, "batch_size") if resume_at is not None else None
    size = int(cut or get_settings().batch_size)
    appender = RecipientAppender(campaign_id, r, filling=True)
    if resume_at is None:
        now = datetime.now(UTC)
        resume_at = 0
        started = {
            "status": CampaignStatus.RUNNING.value,
            "send_date": now.strftime("%Y%m%d"),
            "started_at": str(now.timestamp()),
            "batch_size": str(size),
            "appending": "1",
            "filled": "0",
            "filled_at": str(int(now.timestamp())),
        }
        fields = [part for pair in started.items() for part in pair]
        keys = (key, store.ACTIVE_ZSET)
        r.eval(_START_FILLING, len(keys), *keys, now.timestamp(), campaign_id, *fields)
    else:
        appender.know_stored()
    stored = stored_count(r, campaign_id)
    enqueued = stored // size
    position = resume_at
    try:
        for chunk in _chunks(recipients[resume_at:], size):
            stored += appender.add(chunk, (position, position + len(chunk)))[0]
            position += len(chunk)
            while (enqueued + 1) * size <= stored:
                enqueue(campaign_id, enqueued)
                enqueued += 1
    except CampaignStateError:
        if get_status(campaign_id, r) in (CampaignStatus.CANCELLED, CampaignStatus.EXPIRED):
            # Ended while it was stored (cancelled, or expired by a batch): the rest will
            # never be sent. What is stored settles through its batches; the campaign
            # was made and answers as it stands.
            batches = math.ceil(stored / size)
            pipe = r.pipeline()
            pipe.hset(key, "batches", str(batches))
            pipe.hdel(key, "appending", "filled", "filled_at")
            pipe.execute()
            for batch in range(enqueued, batches):
                enqueue(campaign_id, batch)
            return
        raise  # another request took the filling over: it carries on
    except Exception:
        # What is stored sends; the campaign waits for a repeat of the request.
        with contextlib.suppress(Exception):
            batches = math.ceil(stored / size)
            r.hset(
                key,
                mapping={"batches": str(batches), "reason": INTERRUPTED_REASON, "filled_at": "0"},
            )
            for batch in range(enqueued, batches):
                enqueue(campaign_id, batch)
        raise
    batches = math.ceil(stored / size)
    pipe = r.pipeline()
    pipe.hset(key, "batches", str(batches))
    pipe.hdel(key, "appending", "filled", "filled_at")
    pipe.execute()
    # A fill taken over enqueues every batch: the dead filler's may have been lost
    # (a batch enqueued twice finds its lease taken, or nothing left to send).
    for batch in range(0 if resume_at else enqueued, batches):
        enqueue(campaign_id, batch)
    finish_if_done(campaign_id, r)


FILL_WAIT_LIMIT_SECONDS = 600.0  # a repeat waits this long at most for a live filler


def _await_fill(campaign_id: str, r: redis.Redis) -> int | None:
    """A repeat of the request that posted a campaign with its list answers with the
    whole list stored: it waits while the first request still stores it, and takes over
    (returns where to resume) once that one failed or died. None: nothing left to store."""
    deadline = time.monotonic() + FILL_WAIT_LIMIT_SECONDS
    while True:
        resume_at = _take_over_fill(campaign_id, r)
        if resume_at is not None:
            return resume_at
        if not r.hexists(store.campaign_key(campaign_id), "appending"):
            return None
        if time.monotonic() > deadline:
            return None  # answered as it stands; a later repeat can still take over
        time.sleep(0.2)


def _take_over_fill(campaign_id: str, r: redis.Redis) -> int | None:
    """Where to resume filling a campaign whose filler stopped (failed, or died: no
    progress for :data:`FILL_STALE_SECONDS`); None when it needs none or one is alive."""
    at = r.eval(_TAKE_OVER_FILL, 1, store.campaign_key(campaign_id), FILL_STALE_SECONDS)
    return None if at is None else int(at)


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
        try:
            recipient = _RECIPIENT.validate_python(data)
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


_APPEND = r"""
-- Appends go to drafts; and to a campaign create_campaign is still filling while its
-- first batches already send (the 'appending' mark), paused meanwhile or not.
local status = redis.call('HGET', KEYS[1], 'status')
local filling = (status == 'running' or status == 'paused')
  and redis.call('HEXISTS', KEYS[1], 'appending') == 1
if status ~= 'draft' and not filling then return {-1} end
-- Filling: ARGV[6] is how far into its list the filler had got, ARGV[7] how far this
-- chunk takes it; another filler that took over (this one seemed dead) moved it: stop.
local progress = ARGV[6] ~= nil and ARGV[6] ~= ''
if progress and redis.call('HGET', KEYS[1], 'filled') ~= ARGV[6] then return {-2} end
-- ARGV: n, check ('1': skip the addresses the campaign has, through its addresses set;
-- '0': the caller knows they are new), then n address keys and their n documents, one
-- per line (recipient_pages). Stored as pages of PAGE lines (ARGV[5]).
local find, sub, concat = string.find, string.sub, table.concat
local n, keys, docs, PAGE = tonumber(ARGV[1]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local function lines(blob)
  local out, pos = {}, 1
  while true do
    local nl = find(blob, '\n', pos, true)
    if not nl then out[#out + 1] = sub(blob, pos); return out end
    out[#out + 1] = sub(blob, pos, nl - 1)
    pos = nl + 1
  end
end
local PIECE = 2000  -- arguments per command: Lua's C stack holds a few thousand
local out, count = {0}, n
if ARGV[2] == '1' then
  local ks = lines(keys)
  local known = {}
  for first = 1, n, PIECE do
    local last = math.min(n, first + PIECE - 1)
    local part = redis.call('SMISMEMBER', KEYS[3], unpack(ks, first, last))
    for i = 1, #part do
      if part[i] == 1 then
        known[first + i - 1] = true
        out[#out + 1] = first + i - 1
      end
    end
  end
  if #out > 1 then  -- keep the new ones
    local ds, new_keys, new_docs = lines(docs), {}, {}
    for i = 1, n do
      if not known[i] then
        new_keys[#new_keys + 1] = ks[i]
        new_docs[#new_docs + 1] = ds[i]
      end
    end
    ks, count = new_keys, #new_keys
    keys, docs = concat(new_keys, '\n'), concat(new_docs, '\n')
  end
  for first = 1, count, PIECE do
    redis.call('SADD', KEYS[3], unpack(ks, first, math.min(count, first + PIECE - 1)))
  end
end
if progress then
  redis.call('HSET', KEYS[1], 'filled', ARGV[7], 'filled_at', redis.call('TIME')[1])
end
if count == 0 then return out end
-- The end of the k-th line of a blob (its line break, or one past the end).
local function line_end(blob, k)
  local pos = 0
  for _ = 1, k do pos = find(blob, '\n', pos + 1, true) or #blob + 1 end
  return pos
end
local total = tonumber(redis.call('HGET', KEYS[4], 'total') or '0')
local room = (PAGE - total % PAGE) % PAGE  -- lines the last page still takes
local left = count
while left > 0 do
  local take = room > 0 and math.min(room, left) or math.min(PAGE, left)
  local k_end, d_end = #keys + 1, #docs + 1
  if take < left then k_end, d_end = line_end(keys, take), line_end(docs, take) end
  local k, d = sub(keys, 1, k_end - 1), sub(docs, 1, d_end - 1)
  if room > 0 then
    redis.call('LSET', KEYS[5], -1, redis.call('LINDEX', KEYS[5], -1) .. '\n' .. k)
    redis.call('LSET', KEYS[2], -1, redis.call('LINDEX', KEYS[2], -1) .. '\n' .. d)
    room = 0
  else
    redis.call('RPUSH', KEYS[5], k)
    redis.call('RPUSH', KEYS[2], d)
  end
  keys, docs, left = sub(keys, k_end + 1), sub(docs, d_end + 1), left - take
end
out[1] = count
redis.call('HINCRBY', KEYS[4], 'total', count)
redis.call('HINCRBY', KEYS[4], 'queued', count)
return out
"""


def stored_recipient(recipient: Recipient) -> str:
    """How a recipient is stored: compact JSON text (orjson, and pydantic's encoder for
    the unusual value orjson cannot write). Its address key is stored beside it, in
    ``store.address_keys_key`` at the same position.

    Text, not bytes: a chunk's thousand small orjson bytes kept alive cost about 2.5 µs
    each to allocate on this machine; their str copies about 0.1 µs.
    """
    try:
        return orjson.dumps(recipient).decode()
    except TypeError:
        return _RECIPIENT.dump_json(recipient).decode()


class RecipientAppender:
    """Appends checked recipients to a draft campaign, one address at most once.

    Each :meth:`add` is one atomic script call: it refuses to append once the campaign
    has left ``draft``, and skips an address the campaign already has (DESIGN §5: no
    recipient is sent the same campaign twice), which also makes a retried append safe.
    """

    def __init__(
        self, campaign_id: str, client: redis.Redis | None = None, *, filling: bool = False
    ) -> None:
        """Raises :class:`CampaignNotFoundError`, :class:`CampaignStateError`."""
        self.r = client or store.sync_client()
        self.campaign_id = campaign_id
        content = load_content(campaign_id, self.r)
        if not filling:
            self._check_open(get_status(campaign_id, self.r))
        try:
            provider: ProviderBase | None = load_provider(content.provider, self.r)
        except ProviderNotFoundError:
            provider = None  # the campaign pauses when it sends; recipients are still data
        self.checker = RecipientChecker(content, provider)
        self._keys = [
            store.campaign_key(campaign_id),
            store.recipients_key(campaign_id),
            store.addresses_key(campaign_id),
            store.counters_key(campaign_id),
            store.address_keys_key(campaign_id),
        ]
        self._script = self.r.register_script(_APPEND)
        # Filling a campaign create_campaign has just made: the addresses so far are all
        # here (and not in Redis: nothing else can append to it).
        self._seen: set[str] | None = set() if filling else None

    def know_stored(self) -> None:
        """Filling again after an interruption: the addresses stored so far count."""
        pages = self.r.lrange(store.address_keys_key(self.campaign_id), 0, -1)
        self._seen = {key for page in pages for key in str(page).split("\n")}

    def _check_open(self, status: CampaignStatus) -> None:
        if status is not CampaignStatus.DRAFT:
            raise CampaignStateError(
                f"campaign {self.campaign_id!r} is {status}: recipients can only be appended "
                "to a draft",
                field="status",
            )

    def add(
        self, recipients: Sequence[Recipient], progress: tuple[int, int] | None = None
    ) -> tuple[int, list[int]]:
        """Append ``recipients`` (checked); returns how many were appended and the
        positions (0-based, within ``recipients``) of those skipped as duplicates.

        ``progress``: filling, the positions in the campaign's posted list before and
        after these recipients (stored with them: a repeat of the request resumes there).
        Raises :class:`CampaignStateError` when the campaign has left ``draft``, or when
        another filler took the campaign over.
        """
        if not recipients and progress is None:
            return 0, []
        keys = [suppression_key(r["email"]) for r in recipients]
        # An address twice (in the chunk, or for a campaign being filled in any chunk
        # before): the first one counts. ``kept``: the positions left (None: all).
        repeated: list[int] = []
        kept: list[int] | None = None
        known: set[str] = self._seen if self._seen is not None else set()
        fresh = set(keys)
        if len(fresh) == len(keys) and known.isdisjoint(fresh):
            if self._seen is not None:
                self._seen |= fresh
        else:
            kept = []
            for position, key in enumerate(keys):
                if key in known:
                    repeated.append(position)
                else:
                    known.add(key)
                    kept.append(position)
            keys = [keys[i] for i in kept]
            recipients = [recipients[i] for i in kept]
        if not keys and progress is None:
            return 0, repeated
        docs = "\n".join(map(stored_recipient, recipients))
        check = "1" if self._seen is None else "0"  # filled: every address is known here
        key_lines = "\n".join(keys)
        if key_lines.count("\n") != len(keys) - 1:  # an address with a line break
            key_lines = "\n".join(map(line_safe, keys))
        args: list[str | int] = [len(keys), check, key_lines, docs, PAGE]
        if progress is not None:
            args += [str(progress[0]), str(progress[1])]
        result = [int(x) for x in self._script(keys=self._keys, args=args)]
        if result[0] == -1:
            self._check_open(get_status(self.campaign_id, self.r))
        if result[0] == -2:
            raise CampaignStateError(
                f"campaign {self.campaign_id!r} is being filled by another request",
                field="status",
            )
        stored = [p - 1 if kept is None else kept[p - 1] for p in result[1:]]
        return result[0], sorted(stored + repeated)


def append_recipients(
    campaign_id: str, recipients: Iterable[Recipient], *, client: redis.Redis | None = None
) -> int:
    """Append recipients to a draft campaign, streaming in chunks; returns how many were
    appended (addresses the campaign already has are skipped).

    The recipients are taken as they are: an inline list of ``POST /v1/campaigns`` was
    checked with the campaign (``validate_content``), and an address that cannot be sent
    to fails alone at send time (``SMTP invalid email ID``). The streamed append checks
    each one first (:class:`RecipientChecker`) to report it by line. Raises
    :class:`CampaignNotFoundError`, :class:`CampaignStateError` if it has started.
    """
    appender = RecipientAppender(campaign_id, client)
    count = 0
    for chunk in _chunks(recipients, APPEND_CHUNK):
        count += appender.add(chunk)[0]
    return count


def _chunks(items: Iterable[Recipient], size: int) -> Iterator[list[Recipient]]:
    if isinstance(items, list):  # sliced: no step per recipient
        for start in range(0, len(items), size):
            yield items[start : start + size]
        return
    chunk: list[Recipient] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Start (or schedule) a draft or scheduled campaign in one step: the status check, the
# count of its recipients and the move out of ``draft`` cannot interleave with an append
# (whose script refuses once the status left ``draft``), so every recipient stored is in
# a batch. Read apart, an append landing between them stored recipients past the last
# batch: never sent, the campaign ``running`` for ever. ARGV: the size of a batch (empty:
# schedule for ARGV[2] instead), send_at's timestamp, the campaign id, send date, now.
# Returns {batches, ''}, or {-1, status} when the status does not allow it. The draft's
# set of addresses goes with the draft: nothing appends once it has left (76 bytes a
# recipient, kept until the purge otherwise).
_START = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'draft' and cur ~= 'scheduled' then return {-1, cur or ''} end
redis.call('UNLINK', KEYS[5])
if ARGV[1] == '' then
  redis.call('HSET', KEYS[1], 'status', 'scheduled')
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  return {0, ''}
end
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local batches = math.ceil(total / tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'status', 'running', 'send_date', ARGV[4], 'started_at', ARGV[5],
           'batches', batches, 'batch_size', ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
return {batches, ''}
"""


def watch_active(r: redis.Redis, campaign_id: str) -> None:
    """The campaign went ``running`` again (resumed, failed messages retried)."""
    r.zadd(store.ACTIVE_ZSET, {campaign_id: time.time()})


# Takes a campaign off the active index only if it is finished at that moment: a resume
# or retry between the sweep's read and this puts it back running (and adds it again).
_UNWATCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'paused' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def unwatch_finished(r: redis.Redis, campaign_id: str) -> bool:
    """Take a finished (or vanished) campaign off the active index; False if it is not."""
    return bool(
        r.eval(_UNWATCH, 2, store.campaign_key(campaign_id), store.ACTIVE_ZSET, campaign_id)
    )


def start_campaign(
    campaign_id: str, *, client: redis.Redis | None = None, enqueue: EnqueueBatch | None = None
) -> int:
    """Start a draft (or release a scheduled) campaign; returns the number of batches.

    A campaign whose ``send_at`` is in the future becomes ``scheduled`` and is released
    by beat. Raises :class:`CampaignNotFoundError`, :class:`CampaignStateError` when it
    is not a draft or scheduled.
    """
    r = client or store.sync_client()
    content = load_content(campaign_id, r)
    now = datetime.now(UTC)
    later = content.send_at is not None and content.send_at > now
    batches, found = r.eval(
        _START,
        5,
        store.campaign_key(campaign_id),
        store.counters_key(campaign_id),
        store.SCHEDULED_ZSET,
        store.ACTIVE_ZSET,
        store.addresses_key(campaign_id),
        "" if later else str(get_settings().batch_size),
        repr(content.send_at.timestamp()) if content.send_at is not None else "0",
        campaign_id,
        now.strftime("%Y%m%d"),
        repr(now.timestamp()),
    )
    if int(batches) < 0:
        raise CampaignStateError(
            f"campaign {campaign_id!r} is {found}: it cannot be started", field="status"
        )
    if later:
        return 0
    if not batches:
        finish_if_done(campaign_id, r)
        return 0
    with batch_enqueuer(enqueue) as send:
        for batch in range(int(batches)):
            send(campaign_id, batch)
    return int(batches)


def enqueue_batch(campaign_id: str, batch: int) -> None:
    """Hand one batch to the workers (the ``dispatch.send_batch`` task)."""
    from dispatch.tasks import send_batch

    send_batch.apply_async(
        (campaign_id, batch), queue=store.SENDS_QUEUE, priority=store.batch_priority(batch)
    )


@contextmanager
def background_enqueuer(enqueue: EnqueueBatch | None = None) -> Iterator[EnqueueBatch]:
    """:func:`batch_enqueuer` run by a thread of its own, in order: the caller goes on
    storing recipients while each batch is handed out (both round trips wait behind the
    workers' scripts in Redis; one after the other, they doubled a long list's storing).
    Every batch is out when the block ends; the first error of the thread is raised
    then.
    """
    todo: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with batch_enqueuer(enqueue) as send:
                while (job := todo.get()) is not None:
                    send(*job)
        except BaseException as exc:  # reported to the caller at the end of the block
            failed.append(exc)
            while todo.get() is not None:
                pass

    thread = threading.Thread(target=run, name="enqueue-batches", daemon=True)
    thread.start()
    try:
        yield lambda campaign_id, batch: todo.put((campaign_id, batch))
    finally:
        todo.put(None)
        thread.join()
    if failed:
        raise failed[0]


@contextmanager
def batch_enqueuer(enqueue: EnqueueBatch | None = None) -> Iterator[EnqueueBatch]:
    """``enqueue``, or (None) :func:`enqueue_batch` for a block that hands out many
    batches: one producer serves them all, each still published at once. kombu's Redis
    transport otherwise builds a Redis client for every message (about 0.4 ms a batch).
    """
    if enqueue is not None:
        yield enqueue
        return
    from dispatch.celery_app import app
    from dispatch.tasks import send_batch

    with app.producer_or_acquire() as producer, producer.batch(max_size=64) as published:

        def send(campaign_id: str, batch: int) -> None:
            send_batch.apply_async(
                (campaign_id, batch),
                queue=store.SENDS_QUEUE,
                priority=store.batch_priority(batch),
                producer=producer,
            )
            published.flush()

        yield send


def load_content(campaign_id: str, client: redis.Redis | None = None) -> CampaignContent:
    """The campaign's content; raises :class:`CampaignNotFoundError`."""
    raw = (client or store.sync_client()).hget(store.campaign_key(campaign_id), "content")
    if raw is None:
        raise CampaignNotFoundError(campaign_id)
    return CampaignContent.model_validate_json(raw)


def get_status(campaign_id: str, client: redis.Redis | None = None) -> CampaignStatus:
    """The campaign's status; raises :class:`CampaignNotFoundError`."""
    raw = (client or store.sync_client()).hget(store.campaign_key(campaign_id), "status")
    if raw is None:
        raise CampaignNotFoundError(campaign_id)
    return CampaignStatus(str(raw))


def get_counters(campaign_id: str, client: redis.Redis | None = None) -> dict[str, int]:
    raw = (client or store.sync_client()).hgetall(store.counters_key(campaign_id))
    return {name: int(raw.get(name, 0)) for name in COUNTER_NAMES}


# The fields of a campaign's hash its summary reads (never ``content``: a page of the
# list would read every campaign's templates).
# (send_at and expires_at: stored beside the content since 2026-11-24, null before)
_SUMMARY_FIELDS = (
    "status", "reason", "created_at", "send_date", "purged_at", "provider", "send_at",
    "expires_at",
)  # fmt: skip


def _summary_of(
    campaign_id: str, fields: Sequence[str | None], counters: Mapping[str, str], r: redis.Redis
) -> dict[str, Any]:
    """A summary from the values of :data:`_SUMMARY_FIELDS` and the counters' hash."""
    status, reason, created_at, send_date, purged_at, provider, send_at, expires_at = fields
    if provider is None:  # (stored before campaigns kept their provider beside the content)
        provider = load_content(campaign_id, r).provider
    return {
        "id": campaign_id,
        "provider": provider,
        "status": status,
        "reason": reason or "",
        "created_at": float(created_at or 0),
        "send_date": send_date or "",
        "purged_at": None if purged_at is None else float(purged_at),
        "send_at": None if send_at is None else float(send_at),
        "expires_at": None if expires_at is None else float(expires_at),
        **{name: int(counters.get(name, 0)) for name in COUNTER_NAMES},
    }


def _read_summaries(r: redis.Redis, ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """The summaries of ``ids`` in one round trip; None for a campaign that is absent or
    whose creation is still under way (no ``content`` yet)."""
    pipe = r.pipeline(transaction=False)
    for campaign_id in ids:
        pipe.hexists(store.campaign_key(campaign_id), "content")
        pipe.hmget(store.campaign_key(campaign_id), _SUMMARY_FIELDS)
        pipe.hgetall(store.counters_key(campaign_id))
    found = pipe.execute()
    return [
        _summary_of(campaign_id, found[3 * i + 1], found[3 * i + 2], r) if found[3 * i] else None
        for i, campaign_id in enumerate(ids)
    ]


def campaign_summary(campaign_id: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """Status, reason and counters of a campaign (``GET /v1/campaigns/{id}``)."""
    r = client or store.sync_client()
    summary = _read_summaries(r, [campaign_id])[0]
    if summary is None:
        raise CampaignNotFoundError(campaign_id)
    return summary


def list_campaigns(
    *,
    cursor: int = 0,
    limit: int = 50,
    status: CampaignStatus | None = None,
    client: redis.Redis | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Summaries of campaigns, newest first, and the cursor of the next page (None: done).

    ``cursor`` 0 starts at the newest; another (a page's next cursor) is how many
    campaigns are older than the last one shown. Counted from the oldest, it stays true
    while campaigns are created (they come after every other), so no campaign is shown
    twice or skipped across pages. With ``status`` a page holds only the campaigns of
    that status among the ``limit`` it looked at, so it may be short. A page is read in
    one round trip (two commands a campaign each in turn took 0.5 s for a page of 1000).
    """
    r = client or store.sync_client()
    count = int(r.zcard(store.CAMPAIGNS_ZSET))
    end = min(cursor, count) if cursor > 0 else count  # (a cursor past the end: from the newest)
    start = max(0, end - limit)
    ids = [str(i) for i in r.zrange(store.CAMPAIGNS_ZSET, start, end - 1)[::-1]] if end else []
    items = [
        summary
        for summary in _read_summaries(r, ids)
        if summary is not None and (status is None or summary["status"] == status.value)
    ]
    return items, (start or None)


def batch_count(campaign_id: str, client: redis.Redis | None = None) -> int:
    """How many batches a started campaign has (0 before it starts)."""
    raw = (client or store.sync_client()).hget(store.campaign_key(campaign_id), "batches")
    return int(raw or 0)


_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'appending') == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'queued') or '0') > 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at', ARGV[1])
return 1
"""


def finish_if_done(campaign_id: str, client: redis.Redis | None = None) -> bool:
    """Mark a running campaign ``completed`` once no message is left queued (atomic)."""
    r = client or store.sync_client()
    keys = [store.campaign_key(campaign_id), store.counters_key(campaign_id)]
    return bool(r.eval(_FINISH, 2, *keys, str(time.time())))


def set_status(
    campaign_id: str, status: CampaignStatus, reason: str = "", client: redis.Redis | None = None
) -> None:
    (client or store.sync_client()).hset(
        store.campaign_key(campaign_id), mapping={"status": status.value, "reason": reason}
    )
