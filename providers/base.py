"""The adapter interface: a rendered message in, one outcome per message out.

A :class:`Transport` is built once per provider configuration and opens
:class:`Session` objects (an SMTP connection, an HTTP client). The dispatcher runs
several sessions side by side and hands each a chunk of messages at a time
(``chunk_size``: a few for SMTP, pipelined on one connection; 1 for an HTTP provider
that sends a request per message, the batch size for a batching one).

Per-message failures come back as :class:`SendOutcome` data. Failures of the whole
session (cannot connect, credentials refused) are raised as
:class:`providers.errors.ProviderError` subclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from providers.errors import (
    ErrorClass,
    ProviderError,
    RecipientThrottledError,
    ThrottledError,
    TransientError,
)


# Messages and outcomes are made per recipient on the hot path: plain slotted classes
# (a frozen dataclass's __init__ costs four times as much). Treat them as read-only.
@dataclass(slots=True)
class OutgoingMessage:
    """One rendered message for one recipient of one campaign (read-only).

    ``subject``, ``html``, ``text`` and ``amp`` are already rendered (Jinja2 ran first);
    adapters only place them. ``user_vars`` and ``campaign_vars`` feed custom ``$$``
    placeholders of HTTP payloads. ``headers`` are extra headers the service adds
    (``List-Unsubscribe`` and friends), already validated; ``unsubscribe_url`` and
    ``preferences_url`` fill ``$$UnsubscribeURL`` and ``$$PreferencesURL``.
    """

    seq: int
    meta: str
    campaign_id: str
    to: str
    subject: str
    html: str
    text: str
    from_address: str
    from_name: str = ""
    amp: str = ""
    reply_to: str = ""
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    user_vars: Mapping[str, Any] = field(default_factory=dict)
    campaign_vars: Mapping[str, Any] = field(default_factory=dict)
    unsubscribe_url: str = ""  # this recipient's, when the provider has a preference center
    preferences_url: str = ""

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        """Every address the message goes to: To, then Cc, then Bcc (Bcc never in headers)."""
        return (self.to, *self.cc, *self.bcc)


class OutcomeStatus(StrEnum):
    """What became of one message after one attempt."""

    SENT = "sent"
    FAILED = "failed"  # permanent: record and move on
    RETRY = "retry"  # transient: try again later
    UNKNOWN = "unknown"  # the server may or may not have taken it: never retried blindly
    # Never handed over: the caller stopped the send first (Session.stop). Not an attempt.
    NOT_SENT = "not_sent"


@dataclass(slots=True)
class SendOutcome:
    """The result of one attempt at one message (read-only)."""

    seq: int
    status: OutcomeStatus
    error_class: ErrorClass | None = None
    detail: str = ""
    code: int | None = None
    retry_after: float | None = None
    throttled: bool = False
    provider_message_id: str = ""
    # The throttle is about this message's recipient (a 450/451 to its RCPT), not the
    # provider: the message waits, the provider is not held (greylisting of a few).
    recipient_throttled: bool = False

    @classmethod
    def sent(cls, seq: int, detail: str = "", provider_message_id: str = "") -> SendOutcome:
        return cls(seq, OutcomeStatus.SENT, detail=detail, provider_message_id=provider_message_id)

    @classmethod
    def from_error(cls, seq: int, exc: ProviderError) -> SendOutcome:
        """Map an adapter error about one message to its outcome."""
        if isinstance(exc, TransientError):
            return cls(
                seq,
                OutcomeStatus.RETRY,
                error_class=exc.error_class,
                detail=exc.detail,
                code=exc.code,
                retry_after=exc.retry_after,
                throttled=isinstance(exc, ThrottledError),
                recipient_throttled=isinstance(exc, RecipientThrottledError),
            )
        return cls(
            seq, OutcomeStatus.FAILED, error_class=exc.error_class, detail=exc.detail, code=exc.code
        )


@dataclass(slots=True)
class CutShort:
    """What a session knows of the messages of a send its caller cancelled (a deadline):
    the ``outcomes`` it had (answered, or refused before they went out), and the seqs
    of those ``not_handed_over`` (certainly not sent: nothing of them reached the
    provider that it could deliver). Any other message of that send may or may not have
    been taken."""

    outcomes: list[SendOutcome] = field(default_factory=list)
    not_handed_over: list[int] = field(default_factory=list)


class Session(Protocol):
    """One open channel to a provider (an SMTP connection, an HTTP client)."""

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
        """Send ``messages`` (at most the transport's ``chunk_size``), one outcome each.

        Raises :class:`providers.errors.ConfigurationError` when the provider refuses us as
        a whole, and :class:`providers.errors.TransientError` when the session died before
        any of ``messages`` could be handed over (the caller opens a new session).
        """
        ...

    def cut_short(self) -> CutShort:
        """Right after :meth:`send` was cancelled: what is certain of its messages."""
        ...

    def stop(self) -> None:
        """Hand over no further message of the send under way, nor of any later one (the
        caller's campaign paused or was cancelled while a chunk went out one message after
        the other: a server answering one in minutes sent the others after that). The
        message on the wire ends as the provider answers; those not handed over come back
        :attr:`OutcomeStatus.NOT_SENT`."""
        ...


def known_at_cut(session: Session) -> CutShort:
    """What ``session`` knows of its send cut short (nothing, when it fails to say)."""
    try:
        return session.cut_short()
    except Exception:  # an adapter's bug: its messages are unknown, as before it could say
        logging.getLogger(__name__).exception(
            "the adapter failed to say what it sent before the deadline"
        )
        return CutShort()


# The rendered parts of a message; a transport names those it places, so that the
# dispatcher renders nothing it would throw away (an HTTP payload without $$Plaintext).
ALL_CONTENT_PARTS = frozenset({"subject", "html", "text", "amp"})


class Transport(Protocol):
    """A configured provider: opens sessions and says how to feed them."""

    kind: str
    chunk_size: int
    max_sessions: int
    content_parts: frozenset[str]

    def session(self) -> AbstractAsyncContextManager[Session]:
        """Open a session; raises ``ProviderError`` subclasses when it cannot."""
        ...
