"""A fast MIME writer for campaign messages: multipart/alternative, CRLF, no folding traps.

``email.message.EmailMessage`` costs about 1.3 ms a message (PITFALLS), too slow for the
hot path of a campaign. This writer emits the same structure directly: the parts that
never change within a campaign are cached, per message it only encodes the subject, the
addresses and the bodies (quoted-printable through ``binascii``, which is C).

Machine-read headers (``X-CleverTap_META``, ``X-SMTPAPI``) are written on one line up to
998 characters and never turned into RFC 2047 encoded-words (reference §7.3).
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
import time
from collections.abc import Iterable
from email.header import Header
from email.utils import formataddr, formatdate

from providers.addresses import check_header_name, check_header_value, normalize_address
from providers.base import OutgoingMessage
from providers.errors import InvalidMessageError

META_HEADER = "X-CleverTap_META"
MAX_HEADER_LINE = 998  # RFC 5322 §2.1.1


def _crlf(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n")


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends only (RFC 5321 §2.3.8 forbids a bare LF).

    ``b2a_qp`` writes the line end it finds at the first newline of the data, and "\n"
    when there is none: then every "\n" of its output is a soft break, made CRLF here.
    """
    text = _crlf(text)
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if "\n" not in text:
        encoded = encoded.replace(b"\n", b"\r\n")
    return encoded


def encode_unstructured(name: str, value: str) -> str:
    """Encode an unstructured header value (Subject): RFC 2047 when non-ASCII, and when
    it holds ``=?`` (a client would decode what looks like an encoded word, letting
    recipient data choose what is shown)."""
    check_header_value(name, value)
    if value.isascii() and "=?" not in value and len(value) + len(name) + 2 <= MAX_HEADER_LINE:
        return value
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def format_mailbox(name: str, address: str, *, field: str = "address") -> str:
    """``Display Name <addr>`` with the name quoted or RFC 2047-encoded as needed.

    Raises ``InvalidAddressError`` for a bad address, ``ValueError`` for CR/LF in the name.
    """
    check_header_value(f"{field} display name", name)
    address = normalize_address(address)
    if not name:
        return address
    if name.isascii() and "=?" in name:  # encoded, as in encode_unstructured
        return f"{Header(name, 'utf-8', header_name='From').encode()} <{address}>"
    return formataddr((name, address), charset="utf-8")


class MimeWriter:
    """Writes the bytes of one campaign's messages; cheap to call once per message."""

    def __init__(
        self,
        *,
        campaign_id: str,
        static_headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        token = secrets.token_hex(8)
        # '==' never occurs in quoted-printable output, so this boundary cannot collide
        # with a body (the same trick the stdlib uses).
        self._boundary = f"==dispatch_{token}=="
        self._id_prefix = hashlib.sha1(campaign_id.encode()).hexdigest()[:12] + "." + token
        self._static = "".join(
            f"{check_header_name(k)}: {check_header_value(k, v)}\r\n" for k, v in static_headers
        )
        self._mailbox_cache: dict[tuple[str, str], str] = {}
        self._date_second = 0
        self._date = ""

    def _mailbox(self, name: str, address: str, field: str) -> str:
        key = (name, address)
        cached = self._mailbox_cache.get(key)
        if cached is None:
            cached = format_mailbox(name, address, field=field)
            if len(self._mailbox_cache) < 1024:
                self._mailbox_cache[key] = cached
        return cached

    def _now(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, localtime=False, usegmt=True)
        return self._date

    def message_id(self, msg: OutgoingMessage) -> str:
        """A Message-ID that stays the same across retries of the same message.

        Its domain is the sender's as the envelope and From have it (IDNA, ``xn--``): a
        raw ``bücher.de`` is not ASCII. Raises ``InvalidAddressError`` for a bad sender.
        """
        domain = normalize_address(msg.from_address).rpartition("@")[2]
        return f"<{self._id_prefix}.{msg.seq}@{domain}>"

    def write(self, msg: OutgoingMessage, extra_headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """Return the message as CRLF bytes. Bcc is never written (envelope only).

        Raises :class:`InvalidMessageError` when a header value holds a line break, an
        address is invalid or a text cannot be written as UTF-8 (a lone surrogate): the
        recipient's data is at fault, not the provider.
        """
        try:
            return self._write(msg, extra_headers)
        except ValueError as exc:  # InvalidAddressError and UnicodeError are ValueErrors
            raise InvalidMessageError(str(exc)) from exc

    def _write(self, msg: OutgoingMessage, extra_headers: Iterable[tuple[str, str]]) -> bytes:
        head = self._headers(msg, extra_headers)
        b = self._boundary
        parts = [head.encode("ascii")]
        for ctype, body in (
            ("text/plain", msg.text),
            ("text/x-amp-html", msg.amp),
            ("text/html", msg.html),
        ):
            if not body and ctype != "text/plain":
                continue
            parts.append(
                f"--{b}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii")
            )
            parts.append(_qp(body))
            parts.append(b"\r\n")
        parts.append(f"--{b}--\r\n".encode("ascii"))
        return b"".join(parts)

    def _headers(self, msg: OutgoingMessage, extra: Iterable[tuple[str, str]]) -> str:
        lines = [
            f"From: {self._mailbox(msg.from_name, msg.from_address, 'from')}\r\n",
            f"To: {normalize_address(msg.to)}\r\n",
        ]
        if msg.cc:
            lines.append(f"Cc: {', '.join(normalize_address(a) for a in msg.cc)}\r\n")
        if msg.reply_to:
            lines.append(f"Reply-To: {self._mailbox('', msg.reply_to, 'reply_to')}\r\n")
        lines.append(f"Subject: {encode_unstructured('Subject', msg.subject)}\r\n")
        lines.append(f"Date: {self._now()}\r\n")
        lines.append(f"Message-ID: {self.message_id(msg)}\r\n")
        lines.append("MIME-Version: 1.0\r\n")
        lines.append(f"{META_HEADER}: {check_header_value(META_HEADER, msg.meta)}\r\n")
        for name, value in (*msg.headers, *extra):
            lines.append(f"{check_header_name(name)}: {check_header_value(name, value)}\r\n")
        lines.append(self._static)
        lines.append(f'Content-Type: multipart/alternative; boundary="{self._boundary}"\r\n\r\n')
        head = "".join(lines)
        if not head.isascii():
            raise ValueError("a header value is not ASCII after encoding")
        return head
