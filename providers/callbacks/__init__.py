"""Callback parsers: provider request bodies in, normalized events out (pure, no I/O).

Entry points, one per provider kind (DESIGN §6)::

    parse_generic(body)                                   smtp, gmail, http
    parse_ses_callback(body, verifier=, topic_arns=, headers=)   ses (SNS envelopes)
    parse_sendgrid(body, headers=, public_key=)           sendgrid

Each returns a :class:`CallbackResult` (one item per event index: an event or that
index's error) or raises :class:`CallbackRejected` for a request refused as a whole.
"""

from providers.callbacks.events import (
    MAX_EVENTS,
    TOO_MANY_EVENTS,
    CallbackEvent,
    CallbackItem,
    CallbackRejected,
    CallbackResult,
    EventType,
    escape_text,
)
from providers.callbacks.generic import parse_generic
from providers.callbacks.sendgrid import load_public_key, parse_sendgrid, verify_signature
from providers.callbacks.ses import parse_ses_callback, parse_ses_message
from providers.callbacks.sns import (
    DEFAULT_SNS_HOST_PATTERN,
    CertificateSource,
    CertificateUnavailable,
    ChainedCertificateSource,
    DirectoryCertificateSource,
    HttpsCertificateSource,
    SnsVerifier,
)

__all__ = [
    "DEFAULT_SNS_HOST_PATTERN",
    "MAX_EVENTS",
    "TOO_MANY_EVENTS",
    "CallbackEvent",
    "CallbackItem",
    "CallbackRejected",
    "CallbackResult",
    "CertificateSource",
    "CertificateUnavailable",
    "ChainedCertificateSource",
    "DirectoryCertificateSource",
    "EventType",
    "HttpsCertificateSource",
    "SnsVerifier",
    "escape_text",
    "load_public_key",
    "parse_generic",
    "parse_sendgrid",
    "parse_ses_callback",
    "parse_ses_message",
    "verify_signature",
]
