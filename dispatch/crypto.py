"""Encryption of provider secrets and signing of tokens, both keyed by DISPATCH_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets

from cryptography.fernet import Fernet, InvalidToken

from dispatch.settings import get_settings

log = logging.getLogger(__name__)


class SecretKeyError(RuntimeError):
    """A stored secret cannot be decrypted with the current DISPATCH_SECRET_KEY."""


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


def _derive(purpose: str) -> bytes:
    key = get_settings().secret_key.get_secret_value()
    if not key:
        raise SecretKeyError("DISPATCH_SECRET_KEY is not set")
    return hashlib.sha256(f"{purpose}\0{key}".encode()).digest()


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage (Fernet: AES-128-CBC + HMAC-SHA256)."""
    return (
        Fernet(base64.urlsafe_b64encode(_derive("provider-secrets")))
        .encrypt(plaintext.encode())
        .decode("ascii")
    )


def decrypt(token: str) -> str:
    """Decrypt a stored secret; raises :class:`SecretKeyError` if the key does not fit."""
    try:
        return (
            Fernet(base64.urlsafe_b64encode(_derive("provider-secrets")))
            .decrypt(token.encode("ascii"))
            .decode()
        )
    except InvalidToken as exc:
        raise SecretKeyError("stored secret does not decrypt with DISPATCH_SECRET_KEY") from exc


def sign(purpose: str, payload: bytes) -> str:
    """A URL-safe HMAC-SHA256 signature of ``payload`` for ``purpose``."""
    mac = hmac.new(_derive(purpose), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(purpose: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign`'s for ``payload`` (constant time).

    Compared as bytes: ``hmac.compare_digest`` raises TypeError for a str with non-ASCII
    characters, and ``signature`` comes from a URL anyone can type.
    """
    given = signature.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(sign(purpose, payload).encode("ascii"), given)
