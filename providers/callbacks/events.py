"""The normalized callback event model, the parse result, and helpers every parser shares.

Each parser (``generic``, ``ses``, ``sendgrid``) turns one request body into a
:class:`CallbackResult`: one :class:`CallbackItem` per event index, holding either a
:class:`CallbackEvent` or the error for that index, so one bad event never drops its
neighbours. A request that is bad as a whole (malformed JSON, failed signature, too many
events) raises :class:`CallbackRejected` instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import parseaddr
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, model_validator

from providers.addresses import same_address
from providers.meta import Meta, parse_meta

# DESIGN §6 and the seeds: more than 1000 events in one request is refused with this text.
MAX_EVENTS = 1000
TOO_MANY_EVENTS = "More than allowed events were sent"
# Epoch values above this are milliseconds: as seconds they would be past the year 5000.
_EPOCH_MS_THRESHOLD = 100_000_000_000
# A provider's clock may run a little ahead of ours; an event time further ahead is no
# time the event happened (seconds of another unit, a typo), and would put the event
# after every later one for a consumer that orders by it (README, dispatch:events).
MAX_FUTURE_SECONDS = 3600

_SPACE = re.compile(r"\s")
# A DSN writes a recipient "address-type ; generic-address" (RFC 3464 §2.3.2): rfc822 for
# an Internet address, utf-8 for one with a UTF-8 local part (RFC 6533 §3). A bounce
# processor that passes on its Final-Recipient sends that as the event's email.
_ADDRESS_TYPE = re.compile(r"(?:rfc822|utf-8)\s*;\s*", re.IGNORECASE)
# The fields of an event that are stored, published and compared: they must be text.
_TEXT_FIELDS = (
    "email",
    "meta",
    "campaign_id",
    "description",
    "provider_type",
    "provider_event_id",
    "provider_message_id",
    "url",
)

T = TypeVar("T")


class EventType(StrEnum):
    """What happened to a message, spelled as the generic callback ``type`` (DESIGN §6).

    ``OTHER`` is the bucket for provider events we record and ignore (SendGrid
    ``open``/``processed``/``deferred``, SES ``DeliveryDelay``/``Open``, new names).
    """

    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    SPAM = "spam"
    UNSUBSCRIBED = "unsubscribed"
    CLICKED = "clicked"
    OTHER = "other"


class CallbackRejected(Exception):
    """The request as a whole is refused; answer ``status`` with ``message``.

    400: malformed body, failed authentication or signature, too many events.
    5xx: the service cannot check the request right now (certificate fetch failed, bad
    configuration), so the provider should retry later.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidEvent(ValueError):
    """One event of a request is unusable; its message is reported for that index."""


class CallbackEvent(BaseModel):
    """One normalized callback event for one recipient, with the provider's item kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str  # the parser that built it: "generic", "ses" or "sendgrid"
    type: EventType
    provider_type: str  # the provider's own name for the event: "bounce", "Bounce", "open"
    email: str  # domain lower-cased; compare addresses case-insensitively
    meta: str = ""  # the meta string as received ("" when the provider gave none)
    meta_fields: Meta | None = None  # the parsed meta, None when absent or unparseable
    campaign_id: str = ""
    description: str = ""
    timestamp: AwareDatetime | None = None  # the provider's time for the event
    provider_event_id: str = ""  # the provider's id of this event ("" when none)
    # Whether provider_event_id is the same on every redelivery (SNS MessageId is;
    # SendGrid's sg_event_id is not, PITFALLS).
    id_is_stable: bool = False
    provider_message_id: str = ""  # the provider's id of the message (SES, SendGrid)
    url: str = ""  # the clicked link
    # The provider did not try the message: the address is on its own suppression list
    # (SES ``OnAccountSuppressionList``, reference §1.4), which it does not count against
    # the sender's reputation. The event still suppresses and counts for the campaign.
    not_attempted: bool = False
    notes: tuple[str, ...] = ()  # oddities worth a log line (meta email differs, ...)
    raw: dict[str, Any]  # the provider's item, as received

    def content_hash(self) -> str:
        """SHA-256 over the fields that identify the event, provider event id excluded."""
        parts = [
            self.source,
            self.type.value,
            self.provider_type,
            self.email.casefold(),
            self.meta,
            self.timestamp.isoformat() if self.timestamp else "",
            self.description,
            self.url,
            self.provider_message_id,
        ]
        try:  # the bytes of json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
            encoded = orjson.dumps(parts)
        except TypeError:  # a lone surrogate, which collect() keeps out of events anyway
            text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
            encoded = text.encode("utf-8", "surrogatepass")
        return hashlib.sha256(encoded).hexdigest()

    def dedupe_key(self) -> str:
        """A key equal for every redelivery of this event and different for other events.

        The provider's event id where it is stable, otherwise :meth:`content_hash`.
        Prefix it with the provider nickname before storing it.
        """
        if self.id_is_stable and self.provider_event_id:
            return f"{self.source}:id:{self.provider_event_id}"
        return f"{self.source}:sha256:{self.content_hash()}"

    def same_email(self, other: str) -> bool:
        """Whether ``other`` is this event's recipient (in any spelling: case, NFC, IDNA)."""
        return same_address(self.email, other)


class CallbackItem(BaseModel):
    """The outcome of one event index: an event, or the error for that index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    event: CallbackEvent | None = None
    error: str = ""

    @model_validator(mode="after")
    def _event_or_error(self) -> CallbackItem:
        if (self.event is None) == (not self.error):
            raise ValueError("a callback item holds exactly one of event and error")
        return self


class CallbackResult(BaseModel):
    """Everything one callback request carried.

    ``subscribe_url``: an SNS ``SubscriptionConfirmation``; the caller confirms it with a
    GET to this (already validated) URL. ``ignored``: why a well-formed request carried no
    events (setup and confirmation messages), for the log.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: tuple[CallbackItem, ...] = ()
    subscribe_url: str = ""
    ignored: str = ""

    @property
    def events(self) -> list[CallbackEvent]:
        return [item.event for item in self.items if item.event is not None]

    @property
    def errors(self) -> list[CallbackItem]:
        return [item for item in self.items if item.event is None]

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def processed(self) -> int:
        return len(self.items) - len(self.errors)

    @property
    def failed(self) -> int:
        return len(self.errors)


def collect(
    raw_items: Sequence[T], build: Callable[[T], CallbackEvent]
) -> tuple[CallbackItem, ...]:
    """Build one item per raw event; an :class:`InvalidEvent` becomes that index's error.

    Each event is also checked with :func:`check_text`, so an event that could not be
    stored or published is its index's error rather than the whole request's failure.
    """
    items = []
    for index, raw in enumerate(raw_items):
        try:
            event = check_text(build(raw))
        except InvalidEvent as exc:
            items.append(CallbackItem(index=index, error=str(exc)))
        else:
            items.append(CallbackItem(index=index, event=event))
    return tuple(items)


def is_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8: False when it holds a lone surrogate.

    JSON may escape one (``"\\ud800"``), and ``json.loads`` of bytes lets an encoded one
    through (it decodes with ``surrogatepass``): the result is a ``str`` that no UTF-8
    encoder, JSON serializer or Redis write accepts.
    """
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_text(event: CallbackEvent) -> CallbackEvent:
    """``event``, if every text it carries on is valid Unicode (see :func:`is_text`).

    Raises :class:`InvalidEvent` naming the first field holding a lone surrogate. The
    provider's item (``raw``) is not checked: keys we ignore may hold anything. Notes are
    our own words, quoting values: a lone surrogate in one is escaped instead.
    """
    for name in _TEXT_FIELDS:
        if not is_text(getattr(event, name)):
            raise InvalidEvent(f"Invalid text in {name}: it holds a lone UTF-16 surrogate")
    if all(is_text(note) for note in event.notes):
        return event
    return event.model_copy(update={"notes": tuple(escape_text(note) for note in event.notes)})


def escape_text(value: str) -> str:
    """``value`` with each lone surrogate written as its escape (``\\ud800``): text that
    can be encoded, for messages that quote what a provider sent."""
    return value if is_text(value) else value.encode("utf-8", "backslashreplace").decode()


def json_integer(text: str) -> int | float:
    """A JSON integer (``json.loads``'s ``parse_int``): JSON bounds no number (RFC 8259
    §6), but Python turns no more than ``sys.get_int_max_str_digits()`` digits into an
    int (4300 by default), and ``int`` raised ValueError for the whole body. Longer, it is
    a number too large for any field: a float (infinite), refused where a number is read,
    so that it costs its own event only."""
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        return float(text)
    return int(text)


def load_json(body: bytes | str) -> Any:
    """Parse a request body as JSON; raises :class:`CallbackRejected` when it is not."""
    try:
        return json.loads(body, parse_int=json_integer)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CallbackRejected("invalid payload: body is not valid JSON") from exc


def check_count(count: int, max_events: int | None = MAX_EVENTS) -> None:
    """Raise :class:`CallbackRejected` when a request carries more than ``max_events``."""
    if max_events is not None and count > max_events:
        raise CallbackRejected(TOO_MANY_EVENTS)


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of header ``name`` (case-insensitive) in ``headers``, or None."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def get_str(item: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    """The string at ``key``; numbers are turned into text.

    Raises :class:`InvalidEvent` when it is missing (and ``required``) or not a scalar.
    """
    value = item.get(key)
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"Mandatory parameter missing: {key}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidEvent(f"{key} must be a string")
    return str(value)


def optional_str(item: Mapping[str, Any], key: str, notes: list[str]) -> str:
    """:func:`get_str` for a field the event is useful without: a value that is not a
    scalar is noted in ``notes`` and read as ``""`` instead of refusing the event."""
    try:
        return get_str(item, key)
    except InvalidEvent:
        notes.append(f"{key} ignored: {type(item[key]).__name__}, not a string")
        return ""


def normalize_email(value: object) -> str:
    """The address with its domain lower-cased (the local part is kept as given); of a
    ``"Name" <local@domain>`` (a DSN's or a provider's display form), a
    ``local@domain (Name)`` (RFC 5322 §4.4's name in a comment) or a DSN's
    ``rfc822; local@domain`` (:data:`_ADDRESS_TYPE`), the address: the person the meta
    names, whom the event must suppress.

    Raises :class:`InvalidEvent` ``Invalid email format`` when it is not ``local@domain``.
    """
    if not isinstance(value, str):
        raise InvalidEvent("Invalid email format")
    address = value.strip()
    if typed := _ADDRESS_TYPE.match(address):
        address = address[typed.end() :]
    if (address.endswith(">") and "<" in address) or (address.endswith(")") and "(" in address):
        address = parseaddr(address)[1] or address
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or _SPACE.search(address):
        raise InvalidEvent(f"Invalid email format: {value!r}")
    return f"{local}@{domain.lower()}"


def parse_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from epoch seconds (or milliseconds) or an ISO 8601 string.

    None and "" give None. Naive ISO times are taken as UTC. Raises ``ValueError`` for
    anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        try:
            value = float(value)  # JSON integers have no bound: 1e400 as an int overflows
        except OverflowError as exc:
            raise ValueError(f"not a timestamp: an integer of {len(str(value))} digits") from exc
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a timestamp: {value!r}")
        seconds = value / 1000 if value > _EPOCH_MS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"not a timestamp: {value!r}") from exc
    if isinstance(value, str):
        # SES documents both "2024-11-04T10:03:39.688Z" and "2018-10-08T14:05:45 +0000".
        parsed = datetime.fromisoformat(value.strip())
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"not a timestamp: {value!r}")


def timestamp_or_note(value: object, notes: list[str]) -> datetime | None:
    """:func:`parse_timestamp`, with an unparseable value, or one more than
    :data:`MAX_FUTURE_SECONDS` ahead of now, noted in ``notes`` as None."""
    try:
        parsed = parse_timestamp(value)
    except ValueError as exc:
        notes.append(f"timestamp ignored: {exc}")
        return None
    if parsed is not None and parsed.timestamp() > time.time() + MAX_FUTURE_SECONDS:
        notes.append(f"timestamp ignored: {value!r} is in the future ({parsed.isoformat()})")
        return None
    return parsed


def decoded_meta(value: str) -> str:
    """The meta as it was sent: ``value`` when it parses as it is, else its RFC 2047
    encoded-words decoded, when that parses (a relay or an ESP re-encoded the header on
    its way back, reference §1.4); ``value`` otherwise (:func:`read_meta` names the
    fault). A meta whose own text holds ``=?...?=`` is never decoded."""
    if "=?" not in value:
        return value
    try:
        parse_meta(value)
        return value
    except ValueError:
        pass
    try:
        decoded = str(make_header(decode_header(value))).strip()
        parse_meta(decoded)
    # HeaderParseError (broken base64, not a ValueError), an unknown charset, still bad
    except (ValueError, LookupError, HeaderParseError):
        return value
    return decoded


def read_meta(meta: str, email: str, notes: list[str], *, strict: bool) -> Meta | None:
    """Parse ``meta`` of the event for ``email``; a recipient mismatch is noted.

    ``strict``: an unparseable meta raises :class:`InvalidEvent` (generic callbacks, where
    meta is mandatory); otherwise it is noted and None is returned (SES, SendGrid, whose
    events stay useful for suppression without it).
    """
    if not meta:
        return None
    try:
        fields = parse_meta(meta)
    except ValueError as exc:
        if strict:
            raise InvalidEvent(str(exc)) from exc
        notes.append(str(exc))
        return None
    if not same_address(fields.email, email):
        notes.append(f"meta email {fields.email!r} differs from event email {email!r}")
    return fields
