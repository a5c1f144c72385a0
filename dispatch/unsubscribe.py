"""Per-recipient unsubscribe tokens (opaque, authenticated) and the RFC 8058 headers
that carry them."""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from dispatch import crypto
from dispatch.settings import get_settings

# Tokens are sealed with AES-SIV under a key of their own (crypto.seal): a link in a
# forwarded email, a scanner's or a proxy's log tells nothing of the recipient. The
# label names the plaintext's layout; another layout would take another label.
_SEALED_PURPOSE = "unsubscribe-token-v1"
_SEALED = re.compile(r"[A-Za-z0-9_-]+")  # unpadded base64url
# Tokens written before (in mail already sent, so read for ever): base64url of the
# JSON [campaign_id, seq, email, category], a dot, its HMAC (crypto.sign, this purpose).
_LEGACY_PURPOSE = "unsubscribe"
_LEGACY = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidTokenError(ValueError):
    """The token was not issued by this service (or was altered)."""


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    campaign_id: str
    seq: int
    email: str
    category: str
    # Made with DISPATCH_SECRET_KEY, not one of DISPATCH_PREVIOUS_SECRET_KEYS: a key
    # changed because it leaked stays listed for months so that old links unsubscribe,
    # and whoever holds it can make a link for any address. Such a link only opts out
    # (never subscribes again, never switches a category back on).
    current_key: bool = True


def make_token(campaign_id: str, seq: int, email: str, category: str) -> str:
    """An opaque token naming the recipient, campaign and category, the same for the same
    message each time. Raises ValueError for a campaign id or category holding ``|`` (the
    meta string refuses them too, DESIGN §3)."""
    if "|" in campaign_id or "|" in category:
        raise ValueError("a campaign id or category cannot hold '|'")
    # "|"-separated text, the address last (it is the only field that could hold a "|"):
    # half the bytes of the JSON array, so a shorter link.
    plaintext = f"{campaign_id}|{seq}|{category}|{email}".encode()
    return _b64encode(crypto.seal(_SEALED_PURPOSE, plaintext))


def read_token(token: str) -> UnsubscribeToken:
    """Check and decode a token, of either format; raises :class:`InvalidTokenError`."""
    if _LEGACY.fullmatch(token):
        return _read_legacy(token)
    if not _SEALED.fullmatch(token):
        raise InvalidTokenError("token is not readable")
    try:
        plaintext = crypto.unseal(_SEALED_PURPOSE, _b64decode(token))
    except crypto.UnsealError as exc:
        raise InvalidTokenError("token was not issued by this service") from exc
    # AES-SIV is deterministic: sealed again with the current key, the same bytes only
    # when the current key sealed it.
    # (compared in constant time, as every secret here: what the current key makes of an
    # old key's link is a link that may subscribe again)
    current = hmac.compare_digest(_b64encode(crypto.seal(_SEALED_PURPOSE, plaintext)), token)
    try:  # authentic, so as make_token wrote it; checked all the same
        campaign_id, seq, category, email = plaintext.decode().split("|", 3)
        return UnsubscribeToken(campaign_id, int(seq), email, category, current)
    except ValueError as exc:
        raise InvalidTokenError("token is not readable") from exc


def _read_legacy(token: str) -> UnsubscribeToken:
    body, _, signature = token.partition(".")
    payload = _b64decode(body)
    if not crypto.verify(_LEGACY_PURPOSE, payload, signature):
        raise InvalidTokenError("token signature does not match")
    current = hmac.compare_digest(crypto.sign(_LEGACY_PURPOSE, payload), signature)
    campaign_id, seq, email, category = orjson.loads(payload)
    return UnsubscribeToken(str(campaign_id), int(seq), str(email), str(category), current)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``, which must be exactly what
    :func:`_b64encode` writes: the decoder drops the low bits of a last character, so
    without the round trip several texts would be one token."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise InvalidTokenError("token is not readable") from exc
    if _b64encode(data) != text:
        raise InvalidTokenError("token is not in its canonical form")
    return data


def unsubscribe_urls(token: str) -> tuple[str, str]:
    """``(unsubscribe_url, preferences_url)`` for a token."""
    base = get_settings().public_url.rstrip("/")
    return f"{base}/u/{token}", f"{base}/preferences/{token}"


def custom_center_url(center: str, token: str) -> str:
    """A custom preference center's URL with ``token`` added to its query (which it may
    already have: ``?lang=en`` becomes ``?lang=en&token=...``).

    A ``token`` parameter of the configured URL itself (``?token=``, ``?token={token}``:
    a place for it, as other tools write one) is replaced, not kept beside ours: a center
    reading the first value (Flask's ``request.args``, Go's ``Query().Get``) got it, empty
    or a literal placeholder. The query's other parameters are kept as written."""
    parts = urlsplit(center)
    kept = [q for q in parts.query.split("&") if q and q.split("=", 1)[0] != "token"]
    query = "&".join([*kept, urlencode({"token": token})])
    return urlunsplit(parts._replace(query=query))


def list_unsubscribe_headers(unsubscribe_url: str) -> tuple[tuple[str, str], ...]:
    """``List-Unsubscribe`` with one URL and the one-click marker of RFC 8058 §3.1."""
    return (
        ("List-Unsubscribe", f"<{unsubscribe_url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )


def recipient_links(
    center: str, center_url: str, campaign_id: str, seq: int, email: str, category: str
) -> tuple[tuple[tuple[str, str], ...], str, str]:
    """One recipient's ``List-Unsubscribe`` headers, unsubscribe URL and preference URL,
    by the provider's ``preference_center`` (``center``) and custom URL; none with
    ``"none"``.

    The headers act for ``email`` alone: the SMTP transport leaves them out of the copy a
    Cc or Bcc address receives (``providers.mime.TO_ONLY_HEADERS``)."""
    if center == "none":
        return (), "", ""
    token = make_token(campaign_id, seq, email, category)
    unsub, prefs = unsubscribe_urls(token)
    if center == "custom":
        prefs = custom_center_url(center_url, token)
    return list_unsubscribe_headers(unsub), unsub, prefs
