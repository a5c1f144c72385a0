"""Encryption of provider secrets and of tokens, and signing, all keyed by DISPATCH_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from dispatch.settings import get_settings

log = logging.getLogger(__name__)


class SecretKeyError(RuntimeError):
    """A stored secret cannot be decrypted with the current DISPATCH_SECRET_KEY."""


class UnsealError(ValueError):
    """A sealed value was not sealed by this service for this purpose (or was altered)."""


def ensure_secret_key() -> None:
    """Make sure the process tree has a secret key, generating one for local use.

    A generated key lives only as long as this process tree: secrets saved with it are
    unreadable after a restart, so production sets DISPATCH_SECRET_KEY.
    """
    if get_settings().secret_key.get_secret_value():
        return
    log.warning("DISPATCH_SECRET_KEY is not set: using a key generated for this run only")
    os.environ["DISPATCH_SECRET_KEY"] = secrets.token_urlsafe(32)
    get_settings.cache_clear()


# A key of fewer characters was chosen by a person, not generated: anyone holding one
# delivered link knows what its token holds, so can test guesses at the key offline, then
# forge links and read the provider secrets of a copy of Redis.
MIN_KEY_CHARS = 32


def _secret() -> str:
    """The current key: everything is written with it."""
    key = get_settings().secret_key.get_secret_value()
    if not key:
        raise SecretKeyError("DISPATCH_SECRET_KEY is not set")
    _warn_if_short(key)
    return key


def _secrets() -> tuple[str, ...]:
    """The keys to read with: the current one, then DISPATCH_PREVIOUS_SECRET_KEYS (the
    unsubscribe links of mail delivered before a key change must work for months)."""
    keys = [_secret()]
    for listed in get_settings().previous_secret_keys:
        # As listed, without the spaces after its comma, and stripped: a key used with a
        # newline at its end (read from a file) wrote with it (settings: _split_keys).
        written = listed.get_secret_value()
        for key in (written, written.lstrip(), written.strip()):
            if key not in keys:
                keys.append(key)
    return tuple(keys)


@lru_cache(maxsize=4)
def _warn_if_short(key: str) -> None:
    if len(key) < MIN_KEY_CHARS:
        log.warning(
            "DISPATCH_SECRET_KEY has %d characters, fewer than %d: a key that short may be "
            "guessed from one unsubscribe link; generate a new one (README: Backups, "
            "changing the key)",
            len(key),
            MIN_KEY_CHARS,
        )


def _derive(purpose: str, secret: str) -> bytes:
    return hashlib.sha256(f"{purpose}\0{secret}".encode()).digest()


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive("provider-secrets", secret)))


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage (Fernet: AES-128-CBC + HMAC-SHA256, a random IV each
    time) with the current key."""
    return _fernet(_secret()).encrypt(plaintext.encode()).decode("ascii")


def _token_bytes(token: str) -> bytes:
    """A stored token's bytes; a token is ASCII (base64), so one that is not was altered:
    :class:`SecretKeyError`, as for any other alteration."""
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise SecretKeyError("stored secret was altered (not ASCII): save it again") from None


def decrypt(token: str) -> str:
    """Decrypt a stored secret with the current or a previous key; raises
    :class:`SecretKeyError` if none fits (or the value was altered)."""
    raw = _token_bytes(token)
    for secret in _secrets():
        try:
            return _fernet(secret).decrypt(raw).decode()
        except InvalidToken:
            continue
    raise SecretKeyError("stored secret does not decrypt with DISPATCH_SECRET_KEY")


def reencrypt(token: str) -> str | None:
    """``token`` written again with the current key when a previous key wrote it; None
    when the current key wrote it already. Raises :class:`SecretKeyError` when no key
    fits (or the value was altered)."""
    current, *previous = _secrets()
    raw = _token_bytes(token)
    try:
        _fernet(current).decrypt(raw)
        return None
    except InvalidToken:
        pass
    for secret in previous:
        try:
            plaintext = _fernet(secret).decrypt(raw)
        except InvalidToken:
            continue
        return _fernet(current).encrypt(plaintext).decode("ascii")
    raise SecretKeyError("stored secret does not decrypt with DISPATCH_SECRET_KEY")


def _sign(secret: str, purpose: str, payload: bytes) -> str:
    mac = hmac.new(_derive(purpose, secret), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def sign(purpose: str, payload: bytes) -> str:
    """A URL-safe HMAC-SHA256 signature of ``payload`` for ``purpose`` (current key)."""
    return _sign(_secret(), purpose, payload)


def verify(purpose: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign`'s for ``payload`` with the current or a
    previous key (each compared in constant time).

    Compared as bytes: ``hmac.compare_digest`` raises TypeError for a str with non-ASCII
    characters, and ``signature`` comes from a URL anyone can type.
    """
    given = signature.encode("utf-8", "surrogatepass")
    return any(
        hmac.compare_digest(_sign(secret, purpose, payload).encode("ascii"), given)
        for secret in _secrets()
    )


@lru_cache(maxsize=16)
def _siv(purpose: str, secret: str) -> AESSIV:
    # AES-256-SIV takes a 512-bit key (two AES-256 keys: S2V's CMAC and CTR); the same
    # derivation as _derive, with SHA-512 for the length. Cached: a campaign seals a
    # token per message, and the key schedule would cost as much as the sealing.
    return AESSIV(hashlib.sha512(f"{purpose}\0{secret}".encode()).digest())


def seal(purpose: str, plaintext: bytes) -> bytes:
    """``plaintext`` encrypted and authenticated under a key for ``purpose`` with
    AES-SIV (RFC 5297): deterministic, so the same plaintext seals to the same bytes
    (no nonce to store or reuse), 16 bytes longer than ``plaintext``."""
    return _siv(purpose, _secret()).encrypt(plaintext, None)


def unseal(purpose: str, sealed: bytes) -> bytes:
    """The plaintext :func:`seal` sealed; raises :class:`UnsealError` when ``sealed`` was
    altered, sealed for another purpose or with a key neither DISPATCH_SECRET_KEY nor in
    DISPATCH_PREVIOUS_SECRET_KEYS."""
    for secret in _secrets():
        try:
            return _siv(purpose, secret).decrypt(sealed, None)
        except InvalidTag:
            continue
    raise UnsealError("not sealed by this service for this purpose")
