"""TLS client contexts, made once per process and shared by every connection.

Building a context loads a CA bundle: about 25 ms of CPU on this machine. aiosmtplib
builds one for every connection it opens unless it is given one (in a thread), and httpx
for every client; a batch that opens eight STARTTLS sessions would spend 200 ms on that
alone. An ``ssl.SSLContext`` is made to be shared by many connections, so each kind is
made once; ``dispatch``'s worker makes them before it forks its processes, which then
share the loaded bundle (a context made before a fork is sound in the children: OpenSSL
1.1.1 and later reseed their random generator in a forked process).

Each adapter keeps its library's trust store: SMTP the system's CA paths (as aiosmtplib
does), Generic HTTP certifi's bundle (as httpx does). A provider's ``tls_ca`` (PEM
certificates of a private CA) replaces that store for its connections.
"""

from __future__ import annotations

import ssl
from functools import lru_cache

import httpx

# Contexts kept per process: the two defaults of each adapter and a few private CAs.
_CONTEXTS_KEPT = 16


def load_ca(pem: str) -> ssl.SSLContext:
    """A verifying context that trusts the CA certificates ``pem`` and nothing else.

    Raises ``ValueError`` when ``pem`` holds no certificate OpenSSL can read.
    """
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem)
    except ssl.SSLError as exc:
        raise ValueError(f"not PEM certificates ({exc.reason or exc})") from None


def smtp_context(verify: bool, ca: str = "") -> ssl.SSLContext:
    """The context aiosmtplib would build for ``validate_certs=verify``, made once;
    ``ca``: PEM certificates to trust instead of the system's."""
    return _smtp_context(verify, ca)  # one cache key however it is called


def http_context(verify: bool, ca: str = "") -> ssl.SSLContext:
    """The context httpx would build for ``verify`` (environment ignored), made once;
    ``ca``: PEM certificates to trust instead of certifi's."""
    return _http_context(verify, ca)


# lru_cache keys on the call's spelling: http_context(True) and http_context(True, "")
# would be two entries, and preload's contexts not the ones the adapters use.
@lru_cache(maxsize=_CONTEXTS_KEPT)
def _smtp_context(verify: bool, ca: str) -> ssl.SSLContext:
    context = load_ca(ca) if ca else ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = verify
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return context


@lru_cache(maxsize=_CONTEXTS_KEPT)
def _http_context(verify: bool, ca: str) -> ssl.SSLContext:
    if verify and ca:
        return load_ca(ca)
    return httpx.create_ssl_context(verify=verify, trust_env=False)


def preload() -> None:
    """Make the verifying contexts now (before a fork: the processes share them)."""
    smtp_context(True)
    http_context(True)
