"""Classify SMTP replies into what the caller should do (reference §5.1-§5.3)."""

from __future__ import annotations

import re
from enum import StrEnum

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# RFC 4954 / 3207 replies that mean "your credentials or TLS set-up", never the recipient.
AUTH_CODES = frozenset({530, 534, 535, 538})
# Replies that ask us to slow down rather than fail (DESIGN §7; SES uses 454 for
# "Throttling failure", reference §4).
THROTTLE_CODES = frozenset({421, 450, 451, 454})
# The account's sending quota is used up (SES 454, Gmail 550 5.4.5; reference §4, §3.3;
# Microsoft 365 answers 554 5.2.0 with its SubmissionQuotaExceededException): told by the
# text, since the codes also carry other meanings ("over quota" alone is a full mailbox).
_QUOTA_TEXT = re.compile(
    r"\bdaily\b.{0,40}\b(quota|limit)\b.{0,20}\bexceeded\b|SubmissionQuotaExceeded",
    re.IGNORECASE,
)


class ReplyKind(StrEnum):
    """What a reply means for the message it answered."""

    TRANSIENT = "transient"  # retry later
    THROTTLED = "throttled"  # retry later, and slow the provider down
    PERMANENT = "permanent"  # record and move on
    AUTH = "auth"  # configuration: stop, tell a person
    QUOTA = "quota"  # the account's daily quota is used up: stop until it frees


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code in a reply text, if any."""
    match = _ENHANCED.search(text)
    if match is None:
        return None
    cls, subject, detail = match.groups()
    return int(cls), int(subject), int(detail)


def classify(code: int, text: str = "", *, at_rcpt: bool = False) -> ReplyKind:
    """Classify a negative SMTP reply.

    ``x.2.2`` (mailbox full) is soft even under class 5 (RFC 3463); a ``552`` at RCPT means
    "too many recipients" and is treated as ``452`` (RFC 5321 §4.5.3.1.10).
    """
    if code in AUTH_CODES:
        return ReplyKind.AUTH
    if code >= 400 and _QUOTA_TEXT.search(text):
        return ReplyKind.QUOTA
    if code in THROTTLE_CODES:
        return ReplyKind.THROTTLED
    if 400 <= code < 500:
        return ReplyKind.TRANSIENT
    enhanced = enhanced_code(text)
    if enhanced is not None and enhanced[1:] == (2, 2):
        return ReplyKind.TRANSIENT
    if code == 552 and at_rcpt:
        return ReplyKind.TRANSIENT
    return ReplyKind.PERMANENT


def too_many_recipients(code: int, text: str = "") -> bool:
    """Whether a refusal of a RCPT puts that recipient off to another transaction.

    RFC 5321 §4.5.3.1.10: a server out of room for recipients in one transaction answers
    ``452`` (``552`` from servers that follow RFC 821) to the rest, and the client sends
    them the message in a later transaction. Not when the text says the mailbox is full
    (``x.2.2``) or, for ``552``, anything but ``5.5.3`` (too many recipients): another
    transaction would change nothing.
    """
    if code not in (452, 552):
        return False
    enhanced = enhanced_code(text)
    if code == 452:
        return enhanced is None or enhanced[1:] != (2, 2)
    return enhanced is None or enhanced[1:] == (5, 3)
