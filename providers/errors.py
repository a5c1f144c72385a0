"""The exception tree and error classes shared by every provider adapter.

Error classes (DESIGN §2) name a failure everywhere: in test-email answers, in the
per-message ledger and in ``Notification Failed`` events.

Exception tree::

    ProviderError                  any failure an adapter reports
    ├── ConfigurationError         stop and tell a person (bad settings, refused auth,
    │   │                          the account or its sender refused: SES "554 Account
    │   │                          is paused", SendGrid "403 You are not authorized...")
    │   ├── AuthenticationError    credentials refused: pause the campaign
    │   └── SendingQuotaError      the provider's daily sending quota is used up: pause
    ├── TransientError             retry later, maybe after ``retry_after`` seconds
    │   ├── ThrottledError         the server asked us to slow down (421/450/451/454, 429)
    │   │   └── RecipientThrottledError   ... about one recipient (450/451 to its RCPT)
    │   ├── ProviderTimeoutError   also a builtin ``TimeoutError``
    │   └── ProviderConnectionError  also a builtin ``ConnectionError``
    └── PermanentError             record and move on; never retried

Whole-session failures (cannot connect, auth refused) are raised. Per-message failures
are returned as data (:class:`providers.base.SendOutcome`), never raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Final
from urllib.parse import quote, quote_plus

import orjson

MASK: Final = "********"  # in place of a credential a reply or an error echoes
# Shorter spellings of a credential are masked only where they stand alone (not inside a
# longer word or number): a 4-character password still never shows, and "Basic" or "key"
# in a reply stays readable.
MIN_MASKED_CHARS: Final = 6
_WORD_CHAR: Final = "A-Za-z0-9"


class ErrorClass(StrEnum):
    """Failure classes, spelled as in the seed documents (DESIGN §2)."""

    INVALID_RECIPIENT = "SMTP invalid email ID"
    DISPATCH_FAILED_SMTP = "SMTP dispatching failed"
    CONNECTION = "SMTP connection error"
    TIMEOUT = "SMTP timeout"
    DISPATCH_FAILED_HTTP = "Dispatch failed"
    # Not in the seeds: a message we refuse to build (CR/LF in a header value, a template
    # that fails for this recipient). It is the recipient's data, not the provider, at fault.
    INVALID_MESSAGE = "Invalid message"


class ProviderError(Exception):
    """Base of every adapter error; carries the error class and the provider's detail."""

    error_class: ErrorClass = ErrorClass.DISPATCH_FAILED_SMTP

    def __init__(
        self,
        detail: str,
        *,
        error_class: ErrorClass | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        if error_class is not None:
            self.error_class = error_class


class ConfigurationError(ProviderError):
    """The provider cannot work as configured; a person must act."""

    error_class = ErrorClass.CONNECTION


class AuthenticationError(ConfigurationError):
    """The server refused our credentials for good (SMTP 535 and friends; a 4xx to AUTH
    is a :class:`ThrottledError`: the login is retried later)."""


class SendingQuotaError(ConfigurationError):
    """The provider says the account's daily sending quota is used up (SES "454 Throttling
    failure: Daily message quota exceeded", Gmail "550 5.4.5 Daily user sending limit
    exceeded", SendGrid "451 Authentication failed: Maximum credits exceeded"): every
    further message would be refused until it frees, so the campaign pauses (reference
    §4: "pause the SES provider until quota frees; don't hammer")."""

    error_class = ErrorClass.DISPATCH_FAILED_SMTP


class TransientError(ProviderError):
    """Worth retrying later; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(
        self,
        detail: str,
        *,
        error_class: ErrorClass | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, error_class=error_class, code=code)
        self.retry_after = retry_after


class ThrottledError(TransientError):
    """The server asked us to slow down; the provider's pace should drop."""


class RecipientThrottledError(ThrottledError):
    """A throttle about one recipient, not the provider (a 450/451 to its RCPT:
    greylisting, a mailbox receiving too fast): the message waits, the provider goes on."""


class ProviderTimeoutError(TransientError, TimeoutError):
    """The server did not answer in time."""

    error_class = ErrorClass.TIMEOUT


class ProviderConnectionError(TransientError, ConnectionError):
    """Could not connect, or the connection dropped."""

    error_class = ErrorClass.CONNECTION


class PermanentError(ProviderError):
    """Will fail again the same way; record and move on."""


class InvalidMessageError(PermanentError):
    """The message cannot be built from this recipient's data (CR/LF in a header...)."""

    error_class = ErrorClass.INVALID_MESSAGE


def secret_spellings(values: Iterable[str]) -> tuple[str, ...]:
    """What a provider's answer or an error text could quote of the credentials
    ``values``, longest first: each whole and each of its words (an API answering
    "invalid key sk-..." echoes the key of "Bearer sk-..."; the first of several words,
    an auth scheme such as "Basic", only when long enough to be a credential), as sent,
    as a URL carries it (an error page quoting the request's query: ``sk%2B...``) and as a
    JSON string does (``\\/`` for ``/`` as PHP writes it, ``\\"``). :func:`masked` masks
    those shorter than :data:`MIN_MASKED_CHARS` only where they stand alone."""
    found: set[str] = set()
    for value in values:
        words = value.split()
        scheme = words[0] if len(words) > 1 and len(words[0]) < MIN_MASKED_CHARS else None
        for part in (value, *words):
            if not part or part == scheme:
                continue
            in_json = orjson.dumps(part).decode()[1:-1]
            found.update(
                (part, quote_plus(part), quote(part, safe=""), in_json, in_json.replace("/", "\\/"))
            )
    return tuple(sorted(found, key=len, reverse=True))


def masked(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every one of ``secrets`` (longest first: see
    :func:`secret_spellings`) replaced by :data:`MASK`; one shorter than
    :data:`MIN_MASKED_CHARS` where it stands alone, not inside a longer word or number
    (a password "pw12" in "bad password pw12" is masked, in "pw123" it is not)."""
    for secret in secrets:
        if len(secret) >= MIN_MASKED_CHARS:
            text = text.replace(secret, MASK)
        elif secret:
            alone = f"(?<![{_WORD_CHAR}]){re.escape(secret)}(?![{_WORD_CHAR}])"
            text = re.sub(alone, MASK, text)
    return text
