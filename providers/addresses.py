"""Email address checks and normalisation for the SMTP envelope and headers."""

from __future__ import annotations

import contextlib
import re
import unicodedata
from functools import lru_cache

import idna

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")  # at least two labels, lower case
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0085\u2028\u2029]")


class InvalidAddressError(ValueError):
    """The text is not an address we can send to; the message says why."""


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# An address already in normal form: dot-atom local part, lower-case ASCII domain of two
# labels or more. Most addresses are; for them this one match is the whole check.
_NORMAL_FORM = re.compile(
    rf"(?=[^@]{{1,{MAX_LOCAL_PART}}}@){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+"
)


def normalize_address(address: str) -> str:
    """Return ``address`` ready for SMTP (see :func:`_normalize`); fast for the usual case."""
    if len(address) <= MAX_DOMAIN and _NORMAL_FORM.fullmatch(address):
        return address
    return _normalize(address)


@lru_cache(maxsize=4096)  # the same address is checked for the envelope and the headers
def _normalize(address: str) -> str:
    """Return ``address`` ready for SMTP: domain lower-cased and in IDNA (``xn--``) form.

    The local part is kept as given (RFC 5321 says it may be case-sensitive). One that is
    not ASCII (RFC 6531: UTF-8 letters, digits and symbols in the dot-atom) is taken in
    Unicode NFC, the one spelling RFC 6532 §3.1 asks for; it needs SMTPUTF8 to go out by
    SMTP (:func:`needs_smtputf8`), which the SMTP adapter checks the server offers.

    Raises :class:`InvalidAddressError` naming the problem.
    """
    address = address.strip()
    local, sep, domain = address.rpartition("@")
    domain = drop_root_dot(domain)
    if not sep or not local or not domain:
        raise InvalidAddressError(f"{address!r} is not an email address (no local@domain)")
    if local.isascii():
        if len(local) > MAX_LOCAL_PART:
            raise InvalidAddressError(f"{address!r}: local part longer than {MAX_LOCAL_PART}")
        atext = _LOCAL_PART.fullmatch(local) is not None
    else:
        local = unicodedata.normalize("NFC", local)
        if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:  # RFC 6531 §3.3
            raise InvalidAddressError(
                f"{address!r}: local part longer than {MAX_LOCAL_PART} octets in UTF-8"
            )
        atext = _utf8_local_part(local)
    if not atext or local.startswith(".") or ".." in local:
        raise InvalidAddressError(f"{address!r}: local part has characters we cannot send to")
    try:
        ascii_domain = idna_domain(domain).lower()
    except UnicodeError as exc:
        raise InvalidAddressError(f"{address!r}: domain is not a valid host name") from exc
    if len(ascii_domain) > MAX_DOMAIN or not _DOMAIN.fullmatch(ascii_domain):
        raise InvalidAddressError(f"{address!r}: domain is not a valid host name")
    return f"{local}@{ascii_domain}"


def _utf8_local_part(local: str) -> bool:
    """Whether a non-ASCII local part holds only RFC 6531 ``atext`` and dots: ASCII atext,
    and characters beyond ASCII that print (not a space, control, format character,
    private use, unassigned code point or lone surrogate)."""
    return all(
        _LOCAL_PART.fullmatch(ch) if ch.isascii() else ch.isprintable() and not ch.isspace()
        for ch in local
    )


def needs_smtputf8(address: str) -> bool:
    """Whether ``address`` (normalised) needs SMTPUTF8 (RFC 6531) to go out by SMTP: its
    local part is not ASCII (domains are written in their ``xn--`` form)."""
    return not address.isascii()


def same_address(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one mailbox: compared caselessly once normalised
    (NFC local part, IDNA domain, no root dot), as they are when either is no address
    we could send to."""
    if a == b:  # one spelling (a callback's meta and email mostly are)
        return True
    with contextlib.suppress(InvalidAddressError):
        a, b = normalize_address(a), normalize_address(b)
    return a.strip().casefold() == b.strip().casefold()


def drop_root_dot(domain: str) -> str:
    """``domain`` without one trailing dot: ``example.com.`` is the DNS root's spelling of
    ``example.com`` (RFC 1034 §3.1), one host, and no SMTP server takes it in a path."""
    return domain[:-1] if domain.endswith(".") and not domain.endswith("..") else domain


def idna_domain(domain: str) -> str:
    """``domain`` in IDNA form (``xn--`` labels); ASCII labels are left as they are.

    IDNA 2008 with UTS #46 non-transitional mapping, as registries, browsers and mail
    servers resolve names since about 2016: ``straße.de`` is ``xn--strae-oqa.de``, a
    domain of its own, while Python's ``"idna"`` codec (IDNA 2003) maps it to
    ``strasse.de``, someone else's. Symbols IDNA 2008 disallows but IDNA 2003 encoded
    (``☃.net`` is registered) keep their IDNA 2003 form. Raises ``UnicodeError`` when
    neither takes ``domain``.
    """
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        return domain.encode("idna").decode("ascii")


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` if it is safe in a header; raise ``ValueError`` naming ``name``.

    Line breaks (CR, LF and the other characters ``str.splitlines`` breaks on) and other
    control characters would let data inject headers (reference §7.1).
    """
    if _FORBIDDEN_IN_VALUE.search(value):
        raise ValueError(f"{name} contains a line break or control character")
    return value


_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 §3.6.8: printable ASCII except ':'


def check_header_name(name: str) -> str:
    """Return ``name`` if it is a valid header field name; raise ``ValueError`` otherwise."""
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    return name
