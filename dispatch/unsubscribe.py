"""Signed per-recipient unsubscribe tokens and the RFC 8058 headers that carry them."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from dispatch import crypto
from dispatch.settings import get_settings

_PURPOSE = "unsubscribe"
# Unpadded base64url, a dot, unpadded base64url: nothing else is a token.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidTokenError(ValueError):
    """The token was not issued by this service (or was altered)."""


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    campaign_id: str
    seq: int
    email: str
    category: str


def make_token(campaign_id: str, seq: int, email: str, category: str) -> str:
    """An opaque, signed token naming the recipient, campaign and category."""
    payload = orjson.dumps([campaign_id, seq, email, category])
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")
    return f"{body}.{crypto.sign(_PURPOSE, payload)}"


def read_token(token: str) -> UnsubscribeToken:
    """Check and decode a token; raises :class:`InvalidTokenError`.

    Only the exact text :func:`make_token` wrote is accepted: the base64 decoder skips
    characters outside its alphabet, so without the shape check and the round trip a
    signed token with ``"<>`` or other junk inserted would still verify.
    """
    if not _TOKEN.fullmatch(token):
        raise InvalidTokenError("token is not readable")
    body, _, signature = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError as exc:
        raise InvalidTokenError("token is not readable") from exc
    if base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii") != body:
        raise InvalidTokenError("token is not in its canonical form")
    if not crypto.verify(_PURPOSE, payload, signature):
        raise InvalidTokenError("token signature does not match")
    campaign_id, seq, email, category = orjson.loads(payload)
    return UnsubscribeToken(str(campaign_id), int(seq), str(email), str(category))


def unsubscribe_urls(token: str) -> tuple[str, str]:
    """``(unsubscribe_url, preferences_url)`` for a token."""
    base = get_settings().public_url.rstrip("/")
    return f"{base}/u/{token}", f"{base}/preferences/{token}"


def custom_center_url(center: str, token: str) -> str:
    """A custom preference center's URL with ``token`` added to its query (which it may
    already have: ``?lang=en`` becomes ``?lang=en&token=...``)."""
    parts = urlsplit(center)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


def list_unsubscribe_headers(unsubscribe_url: str) -> tuple[tuple[str, str], ...]:
    """``List-Unsubscribe`` with one URL and the one-click marker of RFC 8058 §3.1."""
    return (
        ("List-Unsubscribe", f"<{unsubscribe_url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
