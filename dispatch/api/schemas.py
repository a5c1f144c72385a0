"""Bodies and answers of the /v1 API, shared by the routers and ``dispatch.client``.

Pure pydantic (no FastAPI import), so that other services can use the client without the
server's dependencies being exercised.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dispatch.models import CampaignStatus, MessageState
from dispatch.suppressions import MAX_REASON

MAX_SEQ = 2**63 - 1  # a recipient's position is a Redis list index: signed 64 bits


class Answer(BaseModel):
    """A model the API answers with: it writes every field, so the OpenAPI document
    lists every field as required (a generated client types ``purged_at`` as
    ``float | None``, not as maybe-absent); reading one still fills in defaults."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class FieldProblem(Answer):
    field: str
    message: str


class ErrorBody(Answer):
    """Every error answer: ``detail`` says what is wrong, ``field`` names where."""

    detail: str
    field: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


# -- providers ---------------------------------------------------------------------------


class ConnectsTo(BaseModel):
    """Where an SMTP-kind provider connects (its presets applied)."""

    host: str
    port: int
    security: str


class ProviderView(Answer):
    """A provider as shown: its configuration with secrets masked, plus ``callback_url``.

    Fields depend on the kind (DESIGN §2, §4); they are kept as given.
    """

    model_config = ConfigDict(extra="allow")

    nickname: str
    kind: str
    callback_url: str
    warnings: list[str] = Field(default_factory=list)
    connects_to: ConnectsTo | None = Field(
        default=None,
        description="SMTP kinds: where it connects, the preset applied to an empty "
        "host, port 0 or security null (read-only: ignored when saved back)",
    )


class ProviderList(Answer):
    items: list[ProviderView]


class TestEmailRequest(BaseModel):
    """``POST /v1/providers/{nickname}/test``: where the test message goes."""

    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest test class

    to: str = Field(min_length=3, max_length=320)
    # The recipient's vars, as in a campaign: values of an HTTP payload's custom placeholders.
    vars: dict[str, Any] = Field(default_factory=dict)
    # Send to an address on the suppression list all the same (else 409, field "to").
    allow_suppressed: bool = False


class CampaignTestRequest(BaseModel):
    """``POST /v1/campaigns/{id}/test``: where the test message goes, and whose it is."""

    model_config = ConfigDict(extra="forbid")
    __test__ = False

    to: str = Field(min_length=3, max_length=320)
    seq: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEQ,
        description="The stored recipient whose message it is (default 0)",
    )
    vars: dict[str, Any] | None = Field(
        default=None, description="A recipient's vars to render with, instead of a stored one's"
    )
    allow_suppressed: bool = Field(
        default=False,
        description="Send it even when `to` is on the suppression list (otherwise 409, "
        "field `to`, naming the entry)",
    )


class TestEmailResult(Answer):
    """The answer of a test email (DESIGN §2): ``error`` is an error class or null."""

    __test__ = False

    ok: bool
    error: str | None
    detail: str


# -- campaigns ---------------------------------------------------------------------------


class CampaignSummary(Answer):
    """``GET /v1/campaigns/{id}``: status, reason and every counter (DESIGN §5)."""

    id: str
    provider: str
    status: CampaignStatus
    reason: str = ""
    created_at: float = 0.0
    send_date: str = ""
    purged_at: float | None = Field(
        default=None,
        description="When the retention policy removed the per-message records (null: kept)",
    )
    counts_closed_at: float | None = Field(
        default=None,
        description="When callbacks stop moving the counters, DISPATCH_RETENTION_DAYS after "
        "the purge (Unix seconds; null: not purged, or never)",
    )
    send_at: float | None = Field(
        default=None, description="When it starts (Unix seconds), if created with send_at"
    )
    expires_at: float | None = Field(
        default=None,
        description="When its unsent messages expire (Unix seconds), if created with expires_at",
    )
    total: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    delivered: int = 0
    soft_bounced: int = 0
    hard_bounced: int = 0
    unsubscribed: int = 0
    spam: int = 0
    clicked: int = 0
    unknown: int = 0
    cancelled: int = 0
    expired: int = 0


class CampaignPage(Answer):
    """Campaigns, newest first; pass ``next_cursor`` back for the next page (null: done)."""

    items: list[CampaignSummary]
    next_cursor: str | None = None


class AppendProblem(Answer):
    """A recipient that was not appended: its NDJSON ``line`` or JSON-array ``index``."""

    line: int | None = None
    index: int | None = None
    field: str
    message: str


class AppendResult(Answer):
    """What an append did: every valid recipient is kept, bad ones are listed."""

    appended: int
    duplicates: int = 0
    rejected: int = 0
    errors: list[AppendProblem] = Field(default_factory=list)
    errors_truncated: bool = False
    total: int


class RetryResult(Answer):
    """``retry-failed``: how many failed messages were queued again, and the campaign."""

    retried: int
    skipped_not_retryable: int
    skipped_already_retried: int
    campaign: CampaignSummary


class MessageStatus(StrEnum):
    """Where a message stands: ``queued`` (no outcome yet) or a ledger state
    (:class:`dispatch.models.MessageState`: ``claimed`` being sent, ``retry`` to be tried
    again, or one of the terminal states of DESIGN §5)."""

    QUEUED = "queued"
    CLAIMED = MessageState.CLAIMED.value
    RETRY = MessageState.RETRY.value
    SENT = MessageState.SENT.value
    FAILED = MessageState.FAILED.value
    SUPPRESSED = MessageState.SUPPRESSED.value
    CANCELLED = MessageState.CANCELLED.value
    EXPIRED = MessageState.EXPIRED.value
    UNKNOWN = MessageState.UNKNOWN.value


class CallbackCounter(StrEnum):
    """A counter that callbacks move (DESIGN §6), each counted once a message."""

    DELIVERED = "delivered"
    SOFT_BOUNCED = "soft_bounced"
    HARD_BOUNCED = "hard_bounced"
    UNSUBSCRIBED = "unsubscribed"
    SPAM = "spam"
    CLICKED = "clicked"


class MessageOutcome(Answer):
    """One message of a campaign: where it stands and why (DESIGN §5)."""

    seq: int
    email: str
    meta: str
    status: MessageStatus
    error_class: str = ""
    detail: str = ""
    attempts: int = 0
    # Tries the provider throttled (asked us to slow down): they are not attempts.
    throttles: int = 0
    next_attempt_at: float | None = Field(
        default=None, description="A message waiting for a retry: when it is due (epoch s)"
    )
    updated_at: float = 0.0
    retried: bool = False
    provider_message_id: str = Field(
        default="",
        description="The provider's id of the message it took (SMTP `queued as`, SES's "
        '`Ok <id>`, an HTTP answer\'s): what to ask the provider about; "" when it named none',
    )
    callbacks: list[CallbackCounter] = Field(
        default_factory=list,
        description="The callbacks counted for the message, each once however many came "
        '(a delivery, then a click: `["delivered", "clicked"]`); `status` stays the '
        "send's outcome",
    )


class MessagePage(Answer):
    """A page of messages in seq order; a page may be short (even empty) when filtered:
    go on while ``next_cursor`` is not null."""

    items: list[MessageOutcome]
    next_cursor: str | None = None


# -- suppressions ------------------------------------------------------------------------


class SuppressionEntry(Answer):
    """One suppressed address, with why (``reason``), from what (``source``) and when."""

    model_config = ConfigDict(extra="allow")

    email: str
    reason: str
    source: str
    ts: float


def not_blank(text: str) -> str:
    """``text``; raises ``ValueError`` when it is only white space (a pydantic check)."""
    if not text.strip():
        raise ValueError("must not be blank")
    return text


# A suppression's reason or source given by hand: 1 to MAX_REASON characters, not blank
# (an unset variable in a script made entries that said no reason), as the CLI's --reason.
Reason = Annotated[str, Field(min_length=1, max_length=MAX_REASON), AfterValidator(not_blank)]


class SuppressionRequest(BaseModel):
    """``PUT /v1/suppressions/{email}``."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason = "manual"
    source: Reason = "api"


# The other fields of an entry as ``GET /v1/suppressions`` lists it: an item may carry
# them (a list exported, from ``dispatch suppressions list`` too, imports as it is), and
# they are not kept: the entry made is this import's (its source, its time).
_LISTED_ONLY = Annotated[Any, Field(description="As the list gives it; not kept")]


class SuppressionImportItem(BaseModel):
    """One address of ``POST /v1/suppressions``: ``reason``, when given, its own (else
    the request's ``?reason=``); an entry as the list gives it is one too."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(min_length=1, max_length=320), AfterValidator(not_blank)]
    reason: Reason | None = None
    source: _LISTED_ONLY = None
    ts: _LISTED_ONLY = None
    detail: _LISTED_ONLY = None
    campaign_id: _LISTED_ONLY = None
    meta: _LISTED_ONLY = None


class SuppressionImportResult(Answer):
    """What an import did: every valid address is on the list, bad items are listed
    (NDJSON ``line`` or array ``index``), the first 1,000 of them."""

    added: int = 0
    already_suppressed: int = 0
    invalid: int = 0
    errors: list[AppendProblem] = Field(default_factory=list)
    errors_truncated: bool = False


class SuppressionPage(Answer):
    items: list[SuppressionEntry]
    next_cursor: str | None = None


# -- unsubscribe tokens ------------------------------------------------------------------


class PreferencesView(Answer):
    """``GET/PUT /v1/preferences/{email}``: an address's choices, as the preference
    center shows them."""

    email: str
    suppression: SuppressionEntry | None = Field(
        description="Set: the address is sent nothing (unsubscribed from all, bounced...)"
    )
    categories: list[str] = Field(description="Every category campaigns were sent in")
    opted_out: list[str] = Field(description="The categories the address switched off")


class PreferencesRequest(BaseModel):
    """``PUT /v1/preferences/{email}``: the categories switched off; every other one is on."""

    model_config = ConfigDict(extra="forbid")

    opted_out: list[Annotated[str, Field(max_length=200)]] = Field(max_length=1000)


class UnsubscribeTokenView(PreferencesView):
    """``GET /v1/unsubscribe-tokens/{token}``: what a recipient's token names and the
    address's choices now, for a custom preference center (the token is opaque)."""

    campaign_id: str
    seq: int = Field(description="The message's position in the campaign")
    category: str = Field(description="The campaign's category")


# -- callbacks (DESIGN §6: the seeds' shapes, not ErrorBody) -------------------------------


class CallbackSuccess(Answer):
    """Every event of the request was accepted (kinds smtp, gmail, ses, sendgrid)."""

    status: str = Field(json_schema_extra={"const": "success"})
    message: str


class CallbackEventError(Answer):
    event_index: int
    error: str


class CallbackPartialSuccess(Answer):
    """Some events were accepted, the others are listed by index."""

    status: str = Field(json_schema_extra={"const": "partial_success"})
    processed: int
    failed: int
    errors: list[CallbackEventError]


class HttpEventError(Answer):
    index: int
    error: str


class HttpCallbackResult(Answer):
    """The answer to an ``http`` provider's callback, whatever the events' fate (200 when
    one was accepted, 400 when none was)."""

    TOTAL_EVENTS: int
    PROCESSED_EVENTS: int
    UNPROCESSED_EVENTS: list[HttpEventError]


class CallbackError(Answer):
    """A callback request refused as a whole: ``error_code`` repeats the HTTP status."""

    status: str = Field(json_schema_extra={"const": "error"})
    message: str
    error_code: int


class HealthError(Answer):
    """``/healthz`` when Redis does not answer."""

    detail: str
