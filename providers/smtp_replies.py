"""Classify SMTP replies into what the caller should do (reference §5.1-§5.3)."""

from __future__ import annotations

import re
from collections.abc import Sequence
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
# SendGrid's "451 Authentication failed: Maximum credits exceeded" is its plan's credits
# used up (until the next day, or a paid plan): a quota too, not a throttle.
_QUOTA_TEXT = re.compile(
    r"\bdaily\b.{0,40}\b(quota|limit)\b.{0,20}\bexceeded\b|SubmissionQuotaExceeded"
    r"|\bmaximum credits exceeded\b",
    re.IGNORECASE,
)
# SendGrid's "550 Unauthenticated senders not allowed" (no login), whatever command it
# answers (RCPT included): no recipient is at fault.
_UNAUTHENTICATED_TEXT = re.compile(r"\bunauthenticated senders?\b.{0,10}\bnot allowed\b", re.I)
# A relay's "554 5.7.1 Relay access denied" (Postfix), "550 5.7.1 Unable to relay"
# (Exchange), "550 5.7.0 Mail relay denied" (Google's relay).
_RELAY_TEXT = re.compile(
    r"\brelay(ing)?( access)? (denied|not permitted|not allowed)\b|\bunable to relay\b", re.I
)
# The provider refuses the account or its sender, to MAIL or to the message (never told
# from a RCPT's reply, which is the recipient's): SES "554 Message rejected: Email address
# is not verified", "554 Account is paused", "554 Sending paused for this account", "554
# Access denied: User ... is not authorized to perform ses:SendRawEmail"; SendGrid "403
# You are not authorized to send from that email address", "550 The from address does not
# match a verified Sender Identity". Every message would be refused the same way until a
# person acts.
_ACCOUNT_TEXT = re.compile(
    r"\bemail address is not verified\b|\bverified sender identity\b"
    r"|\bnot authorized to (send from|perform)\b"
    r"|\baccount (is|has been) (paused|suspended)\b"
    r"|\bsending (is )?(paused|suspended) for this (account|configuration set)\b",
    re.IGNORECASE,
)
# SES names the unverified identities: "... failed the check in region US-EAST-1: a, b".
_FAILED_IDENTITIES = re.compile(r"failed the check in region [^:\s]*:\s*(.+)", re.I | re.S)
_ADDRESS = re.compile(r"[^\s<>,]+@[^\s<>,]+")


class ReplyKind(StrEnum):
    """What a reply means for the message it answered."""

    TRANSIENT = "transient"  # retry later
    THROTTLED = "throttled"  # retry later, and slow the provider down
    PERMANENT = "permanent"  # record and move on
    AUTH = "auth"  # configuration: stop, tell a person
    QUOTA = "quota"  # the account's daily quota is used up: stop until it frees
    ACCOUNT = "account"  # the account or its sender is refused (not verified, paused): stop
    # The provider refuses the account for this message's recipients alone (SES's sandbox:
    # a recipient not verified): record the message's failure and go on.
    RECIPIENT = "recipient"


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code in a reply text, if any."""
    match = _ENHANCED.search(text)
    if match is None:
        return None
    cls, subject, detail = match.groups()
    return int(cls), int(subject), int(detail)


def classify(
    code: int, text: str = "", *, at_rcpt: bool = False, recipients: Sequence[str] = ()
) -> ReplyKind:
    """Classify a negative SMTP reply (``recipients``: the envelope's, of the message it
    answered).

    ``x.2.2`` (mailbox full) is soft even under class 5 (RFC 3463); a ``552`` at RCPT means
    "too many recipients" and is treated as ``452`` (RFC 5321 §4.5.3.1.10). Replies about
    the account (a used-up quota, credentials, a sender not verified, sending paused) are
    told by their text whatever their code: a person must act, no recipient is at fault.
    """
    if code < 400:
        return ReplyKind.PERMANENT  # not a refusal: never asked
    if code in AUTH_CODES or _UNAUTHENTICATED_TEXT.search(text):
        return ReplyKind.AUTH
    if _QUOTA_TEXT.search(text):
        return ReplyKind.QUOTA
    if not at_rcpt and _ACCOUNT_TEXT.search(text):
        named = unverified_identities(text)
        if named and recipients and named <= {r.lower() for r in recipients}:
            return ReplyKind.RECIPIENT
        return ReplyKind.ACCOUNT
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


def unverified_identities(text: str) -> set[str]:
    """The addresses an SES "Email address is not verified" reply names, in lower case."""
    match = _FAILED_IDENTITIES.search(text)
    if match is None:
        return set()
    return {address.lower().rstrip(".") for address in _ADDRESS.findall(match.group(1))}


def refuses_relaying(text: str) -> bool:
    """Whether a refusal of a RCPT says the server does not relay for us (no login, or a
    relay that takes some domains only): the sender's set-up, not a bad address. The
    message fails alone (another domain may be taken), counted by the failure breaker."""
    return bool(_RELAY_TEXT.search(text))


def refuses_sender(text: str) -> bool:
    """Whether a refusal of a RCPT is about us, not the address: a relay that does not
    relay for us (:func:`refuses_relaying`), or a security or policy refusal (RFC 3463
    ``x.7.x``: our IP on a blocklist, SPF or DMARC failed), which the Generic SMTP seed
    files under "SMTP dispatching failed" ("the recipient's ESP blocks your IP address")
    and reference §5.1 calls a block, not a bad address."""
    enhanced = enhanced_code(text)
    return refuses_relaying(text) or (enhanced is not None and enhanced[1] == 7)


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
