"""Pydantic models at the service's boundaries: campaigns, recipients, states."""

from __future__ import annotations

import gc
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, NotRequired

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from providers.config import check_address, check_display_name

CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# A new campaign's id also holds something besides dots: "." and ".." are path segments
# that clients and proxies resolve away, so /v1/campaigns/.. could never be read.
NEW_CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
# What follows a campaign's id and a ':' in the names of its other Redis keys
# (dispatch.store): a new id holding one after a ':' would name another campaign's key
# ("x:counters" is campaign x's counters hash; its content was written into it).
CAMPAIGN_KEY_PARTS: Final = frozenset(
    ("address-keys", "addresses", "callbacks", "counters", "lease", "ledger", "recipients",
     "retried")
)  # fmt: skip
# Category and variant travel in the meta string (DESIGN §3), the value of the
# X-CleverTap_META header: printable ASCII (RFC 5322 §2.2, no encoded-words for a
# machine-read header) without the '|' that separates the meta's fields.
META_FIELD_PATTERN = r"^[\x20-\x7b\x7d\x7e]{1,64}$"
# What campaigns stored before that rule may hold: their content must still load.
_STORED_META_FIELD_PATTERN = r"^[^|\r\n]{1,64}$"
# A number given as a string ("1921638600", "1.9e9"), read as Unix seconds too.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


def is_settling(status: str, queued: int, purged_at: float | None) -> bool:
    """A cancelled or expired campaign whose unsent messages are still being settled: a
    worker settles a big one's after the cancel (or expiry) answered, its summary counts
    them ``queued`` until then (a purged one's never are: its ledger is gone)."""
    ended = status in (CampaignStatus.CANCELLED, CampaignStatus.EXPIRED)
    return ended and queued > 0 and purged_at is None


class MessageState(StrEnum):
    """Ledger states of one message; the last six are terminal (DESIGN §5)."""

    CLAIMED = "claimed"  # handed to a sender; if found after a crash: unknown
    RETRY = "retry"  # failed transiently, will be tried again
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


TERMINAL_STATES = frozenset(
    {
        MessageState.SENT,
        MessageState.FAILED,
        MessageState.SUPPRESSED,
        MessageState.CANCELLED,
        MessageState.EXPIRED,
        MessageState.UNKNOWN,
    }
)

# The counters callbacks move (DESIGN §6), each counted once a message: the names a
# message's ``callbacks`` list holds, in this order.
CALLBACK_COUNTERS: Final = (
    "delivered", "soft_bounced", "hard_bounced", "unsubscribed", "spam", "clicked",
)  # fmt: skip
# Counters of GET /v1/campaigns/{id} (DESIGN §5), in display order.
COUNTER_NAMES = (
    "total", "queued", "sent", "failed", "suppressed", *CALLBACK_COUNTERS,
    "unknown", "cancelled", "expired",
)  # fmt: skip


@with_config(ConfigDict(extra="forbid"))
class Recipient(TypedDict):
    """One recipient of a campaign; ``vars`` are data for templates, never template code.

    Plain data (a dict), not a model: a campaign can have a million, and pydantic checks a
    TypedDict three times faster than it builds model instances. ``user_id`` and ``vars``
    may be absent (read them with :func:`recipient_vars` and ``.get("user_id", "")``).
    """

    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    user_id: NotRequired[str]
    vars: NotRequired[dict[str, Any]]


_NO_VARS: dict[str, Any] = {}


def recipient_vars(recipient: Recipient) -> dict[str, Any]:
    """A recipient's vars ({} when it has none; never mutate the result)."""
    return recipient.get("vars", _NO_VARS)


class CampaignFields(BaseModel):
    """The fields of a campaign that its request and its stored content share."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    subject: str = Field(min_length=1)
    html: str = ""
    text: str = ""
    amp: str = ""
    from_name: str | None = None
    from_address: str | None = None
    reply_to: str | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    category: str = Field(default="default", pattern=_STORED_META_FIELD_PATTERN)
    variant: str = Field(default="0", pattern=_STORED_META_FIELD_PATTERN)
    vars: dict[str, Any] = Field(default_factory=dict)
    send_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None


class CampaignContent(CampaignFields):
    """Everything about a campaign except its recipients (what a batch task needs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=CAMPAIGN_ID_PATTERN)


class CampaignRequest(CampaignFields):
    """The body of ``POST /v1/campaigns`` and of the ``dispatch.enqueue_campaign`` task.

    Stricter than :class:`CampaignContent`: what a caller sends is checked against every
    rule a message will meet at send time, so that a campaign whose every message would
    fail is refused up front; stored content is read as it was accepted.
    """

    id: str | None = Field(default=None, pattern=NEW_CAMPAIGN_ID_PATTERN, max_length=64)
    recipients: list[Recipient] = Field(default_factory=list)
    draft: bool = False
    category: str = "default"
    variant: str = "0"

    @field_validator("id")
    @classmethod
    def _own_keys(cls, value: str | None) -> str | None:
        taken = [part for part in (value or "").split(":")[1:] if part in CAMPAIGN_KEY_PARTS]
        if taken:
            raise ValueError(
                f"':{taken[0]}' in an id names a key of another campaign's (the one before "
                f"it): after a ':' an id cannot hold {', '.join(sorted(CAMPAIGN_KEY_PARTS))}"
            )
        return value

    @field_validator("send_at", "expires_at", mode="before")
    @classmethod
    def _unix_seconds(cls, value: Any) -> Any:
        """A number is Unix seconds, whatever its size. Pydantic reads one past 2e10 as
        milliseconds: ``send_at`` 32503680000 (the year 3000) was 1971, already past,
        and the campaign went out at once; a time in milliseconds is refused instead."""
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value  # (a bool is refused as pydantic refuses it)
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a time")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(
                f"{value!r} Unix seconds is not between the years 1 and 9999 "
                "(milliseconds? divide by 1000)"
            ) from None

    @field_validator("send_at", "expires_at")
    @classmethod
    def _in_utc_range(cls, value: datetime | None) -> datetime | None:
        """An instant that UTC can name too: ``9999-12-31T23:00:00-05:00`` is in the year
        10000 there (and ``0001-01-01T00:30:00+05:00`` before the year 1), which no
        ``datetime`` holds: comparing it as UTC raised ``OverflowError``, and the API
        dropped the connection with no answer."""
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError(
                    f"{value.isoformat()} is not between the years 1 and 9999 in UTC"
                ) from None
        return value

    @field_validator("category", "variant")
    @classmethod
    def _meta_field(cls, value: str) -> str:
        if not re.fullmatch(META_FIELD_PATTERN, value):
            raise ValueError(
                "1 to 64 printable ASCII characters other than '|' (it travels in the "
                "X-CleverTap_META header of every message)"
            )
        return value

    @field_validator("from_name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        return check_display_name(value) if value else value

    @field_validator("from_address", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return check_address(value) if value else value  # empty: the provider's

    @field_validator("cc", "bcc")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            check_address(address)
        return value

    @model_validator(mode="after")
    def _needs_a_body(self) -> CampaignRequest:
        if not self.html and not self.text:
            raise ValueError("html: a campaign needs a body (html or text)")
        return self

    @model_validator(mode="after")
    def _expires_after_it_starts(self) -> CampaignRequest:
        """A campaign that expires before it may send would end with every message
        ``expired``."""
        if self.expires_at is None:
            return self
        if self.send_at is not None and self.expires_at <= self.send_at:
            raise ValueError(f"expires_at: must be later than send_at ({self.send_at})")
        # An expires_at already past is refused by create_campaign: a repeat of a campaign
        # stored earlier (a redelivered task) is still answered as a repeat.
        return self

    def content(self, campaign_id: str) -> CampaignContent:
        """The campaign without its recipients, under ``campaign_id``."""
        data = self.model_dump(exclude={"recipients", "draft", "id"})
        return CampaignContent(id=campaign_id, **data)


def campaign_request(body: Any) -> CampaignRequest:
    """``CampaignRequest.model_validate(body)`` with Python's cyclic garbage collector
    paused: a long list allocates millions of containers, none of them can be in a cycle,
    and every collection on the way walks everything alive (measured: a million
    recipients in 0.74 s instead of 1.2-1.9 s, and nothing can be stored before it ends).
    Raises pydantic's ``ValidationError``.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return CampaignRequest.model_validate(body)
    finally:
        if paused:
            gc.enable()


class LedgerRecord(BaseModel):
    """What the ledger keeps about one message (compact keys on the wire)."""

    model_config = ConfigDict(frozen=True)

    state: MessageState
    attempts: int = 0
    error_class: str = ""
    detail: str = ""
    next_at: float = 0.0
    provider_message_id: str = ""
    updated_at: float = 0.0
