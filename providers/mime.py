"""A fast MIME writer for campaign messages: multipart/alternative, CRLF, no folding traps.

``email.message.EmailMessage`` costs about 1.3 ms a message (PITFALLS), too slow for the
hot path of a campaign. This writer emits the same structure directly: the parts that
never change within a campaign are cached, per message it only encodes the subject, the
addresses and the bodies: as they are (``7bit``) when they are ASCII in lines short
enough, else quoted-printable through ``binascii``, which is C.

Machine-read headers (``X-CleverTap_META``, ``X-SMTPAPI``) are written on one line up to
998 characters and never turned into RFC 2047 encoded-words (reference §7.3); a longer
one is refused. Human-read ones are folded at their white space (From and Cc to
78-character lines, RFC 5322 §2.1.1; an ASCII Subject only past 998), or written as
encoded words of at most 75 characters in lines of at most 76 (RFC 2047 §2) when not
ASCII, when ASCII would read as an encoded word, or when a run without white space is
too long to fold.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from email.utils import formataddr, formatdate

from providers.addresses import check_header_name, check_header_value, normalize_address
from providers.base import OutgoingMessage
from providers.errors import InvalidMessageError

META_HEADER = "X-CleverTap_META"
MAX_HEADER_LINE = 998  # RFC 5322 §2.1.1: MUST
MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD; where folding starts
MAX_ENCODED_LINE = 76  # RFC 2047 §2: a line holding an encoded word
_WORD_START, _WORD_END = "=?utf-8?b?", "?="
_WORD_BYTES = 45  # 60 base64 characters: a word of 72, within RFC 2047's 75 (§2)
_FOLD_POINT = re.compile(r"(?<=[^ \t])(?=[ \t])")  # before each run of white space
# Headers that act for the To recipient alone: one POST to the RFC 8058 one-click link
# unsubscribes the address its token names, whoever's mail client shows the button. The
# copy a Cc or Bcc address receives leaves them out (:meth:`MimeWriter.write_pair`).
TO_ONLY_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


def _crlf(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n")


# What a 7bit body may hold (RFC 2045 §2.7): printable ASCII, tab, and CR LF as line ends.
_7BIT = bytes(range(0x20, 0x7F)) + b"\t\r\n"


def _body(text: str, boundary: str) -> tuple[str, bytes]:
    """A part's Content-Transfer-Encoding and its bytes, with CRLF line ends only (RFC
    5321 §2.3.8 forbids a bare LF).

    ``7bit``, the text as it is, when it is printable ASCII in lines of at most 998
    octets (RFC 5322 §2.1.1's limit) with no white space at a line's end (relays may
    strip it) and without the multipart boundary; quoted-printable otherwise. Encoding
    quoted-printable is the dearest step of a message's bytes (about 20 µs a 2 KB part on
    our 2-core machine, against about 8 µs for these checks).
    """
    text = _crlf(text)
    data = text.encode("utf-8")
    if (
        len(data) == len(text)  # ASCII
        and max(map(len, data.split(b"\r\n"))) <= MAX_HEADER_LINE
        and not data.translate(None, _7BIT)
        and b" \r\n" not in data
        and b"\t\r\n" not in data
        and not data.endswith((b" ", b"\t"))
        and boundary not in text
    ):
        return "7bit", data
    return "quoted-printable", _qp(data, crlf="\n" in text)


def _qp(data: bytes, *, crlf: bool) -> bytes:
    """Quoted-printable of ``data`` (CRLF line ends); ``crlf``: whether it has any.

    ``b2a_qp`` writes the line end it finds at the first newline of the data, and "\n"
    when there is none: then every "\n" of its output is a soft break, made CRLF here.
    """
    encoded = binascii.b2a_qp(data, istext=True)
    if not crlf:
        encoded = encoded.replace(b"\n", b"\r\n")
    return encoded


def _fold(pieces: Iterable[str], used: int, limit: int = MAX_LINE) -> str | None:
    """Join ``pieces``, breaking the line before a piece that would take it past ``limit``.

    Each piece after the first starts with white space, which then starts the next line
    (RFC 5322 §3.2.2: unfolding removes only the CRLF). A piece of white space alone is
    never put on a line of its own. ``used``: what the first line holds before (``Name:
    ``). None when a line would still pass 998 octets.
    """
    out: list[str] = []
    for piece in pieces:
        if out and used + len(piece) > limit and not piece.isspace():
            out.append("\r\n")
            used = 0
        used += len(piece)
        if used > MAX_HEADER_LINE:
            return None
        out.append(piece)
    return "".join(out)


def _encoded_words(text: str, used: int) -> list[str]:
    """``text`` as RFC 2047 B encoded words, each of whole characters (§5) and at most
    72 characters, the first short enough to end its line by 76 after ``used`` (§2).

    Adjacent encoded words are read as one text (§6.2): spaces travel inside them.
    """
    data = text.encode("utf-8")
    room = MAX_ENCODED_LINE - used - len(_WORD_START) - len(_WORD_END)
    size = min(_WORD_BYTES, max(room // 4 * 3, 6))  # 6 > a UTF-8 character: progress
    words, start = [], 0
    while start < len(data):
        end = start + size
        if end < len(data):
            while data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a boundary
                end -= 1
        chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"{_WORD_START}{chunk}{_WORD_END}")
        start, size = end, _WORD_BYTES
    return words


def _fold_words(words: Sequence[str], used: int, tail: str = "") -> str:
    """Encoded words (and a ``tail`` such as `` <addr>``), folded between them to lines
    of 76 characters (RFC 2047 §2: 78 is for lines without encoded words)."""
    pieces = [words[0], *(" " + w for w in words[1:]), *([tail] if tail else [])]
    folded = _fold(pieces, used, MAX_ENCODED_LINE)
    if folded is None:  # only a tail over 998 characters could; addresses are 320 at most
        raise ValueError(f"a header line would be longer than {MAX_HEADER_LINE} characters")
    return folded


def encode_unstructured(name: str, value: str) -> str:
    """Encode an unstructured header value (Subject).

    ASCII is written as it is, and folded at its white space only past 998 octets: 78
    is a SHOULD (RFC 5322 §2.1.1) and this runs for every message. RFC 2047 encoded
    words are used for non-ASCII text, for text holding ``=?`` (a client would decode
    what looks like an encoded word, letting recipient data choose what is shown) and
    for ASCII with a run too long to fold. Raises ``ValueError`` for a line break or
    control character.
    """
    check_header_value(name, value)
    used = len(name) + 2
    if value.isascii() and "=?" not in value:
        if used + len(value) <= MAX_HEADER_LINE:
            return value
        folded = _fold(_FOLD_POINT.split(value), used)
        if folded is not None:
            return folded
    return _fold_words(_encoded_words(value, used), used)


def format_mailbox(name: str, address: str, *, field: str = "address", header: str = "From") -> str:
    """``Display Name <addr>`` with the name quoted or RFC 2047-encoded as needed, folded
    to 78-character lines after ``header: `` when long.

    Raises ``InvalidAddressError`` for a bad address, ``ValueError`` for CR/LF in the name.
    """
    check_header_value(f"{field} display name", name)
    address = normalize_address(address)
    if not name:
        return address
    used = len(header) + 2
    if not address.isascii():  # RFC 6532 §3.2: as it is, in UTF-8 (the message needs SMTPUTF8)
        if name.isascii() and "=?" not in name:
            phrase = formataddr((name, "a@a"))[: -len(" <a@a>")]  # quoted as needed
            if used + len(phrase) + len(address) + 3 <= MAX_LINE:
                return f"{phrase} <{address}>"
    elif name.isascii():
        if "=?" not in name:  # else encoded, as in encode_unstructured
            mailbox = formataddr((name, address))
            if used + len(mailbox) <= MAX_LINE:
                return mailbox
            phrase = mailbox[: -len(address) - 3]  # formataddr ends with " <address>"
            # Folding inside a quoted string is allowed too (RFC 5322 §3.2.4: FWS).
            folded = _fold([*_FOLD_POINT.split(phrase), f" <{address}>"], used)
            if folded is not None:
                return folded
    else:
        mailbox = formataddr((name, address), charset="utf-8")  # one encoded word
        if used + len(mailbox) <= MAX_ENCODED_LINE:
            return mailbox
    return _fold_words(_encoded_words(name, used), used, f" <{address}>")


def format_address_list(header: str, addresses: Sequence[str]) -> str:
    """Addresses separated by commas, folded between addresses to 78-character lines."""
    joined = ", ".join(addresses)
    used = len(header) + 2
    if used + len(joined) <= MAX_LINE:
        return joined
    last = len(addresses) - 1
    pieces = [
        f"{'' if i == 0 else ' '}{a}{'' if i == last else ','}" for i, a in enumerate(addresses)
    ]
    folded = _fold(pieces, used)
    if folded is None:  # addresses are 320 characters at most (RFC 5321 §4.5.3.1)
        raise ValueError(f"{header}: an address is longer than {MAX_HEADER_LINE} characters")
    return folded


def _raw_field(name: str, value: str, *, utf8: bool = False) -> str:
    """A header line written as given, never folded or encoded (machine-read values).

    With ``utf8``, a value that is not ASCII is written in UTF-8 (RFC 6532: the meta leads
    with an address that needs SMTPUTF8, as it is). Raises ``ValueError`` for a line break in
    ``value``, a value that is not ASCII (without ``utf8``) or a line over 998 octets; the
    caller checks ``name``.
    """
    check_header_value(name, value)
    size = len(value)
    if not value.isascii():
        if not utf8:
            raise ValueError(f"{name} is not ASCII, and it is written as it is (never encoded)")
        size = len(value.encode())  # UnicodeEncodeError (a ValueError) for a lone surrogate
    if len(name) + size + 2 > MAX_HEADER_LINE:
        raise ValueError(
            f"{name} is longer than {MAX_HEADER_LINE} characters on one line (never folded)"
        )
    return f"{name}: {value}\r\n"


def message_id_local_part(meta: str, campaign_id: str, seq: int) -> str:
    """The part of a message's Message-ID before the ``@``: derived from its meta, so the
    same for every try of the message (see :meth:`MimeWriter.message_id`). Raises
    ``UnicodeEncodeError`` (a ValueError) for a lone surrogate."""
    digest = hashlib.sha256(f"{meta}\0{campaign_id}".encode()).hexdigest()[:32]
    return f"{digest}.{seq}"


class MimeWriter:
    """Writes the bytes of one campaign's messages; cheap to call once per message."""

    def __init__(
        self,
        *,
        campaign_id: str,
        static_headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        # '==' never occurs in quoted-printable output, so this boundary cannot collide
        # with such a body (the same trick the stdlib uses); a 7bit body never holds it.
        self._boundary = f"==dispatch_{secrets.token_hex(8)}=="
        static = "".join(_raw_field(check_header_name(k), v) for k, v in static_headers)
        # The headers after the message's own: the same for every message of the writer.
        self._tail = (
            f'{static}Content-Type: multipart/alternative; boundary="{self._boundary}"\r\n\r\n'
        )
        self._mailbox_cache: dict[tuple[str, str, str], str] = {}
        self._date_second = 0
        self._date = ""

    def _mailbox(self, name: str, address: str, field: str, header: str) -> str:
        key = (name, address, header)
        cached = self._mailbox_cache.get(key)
        if cached is None:
            cached = format_mailbox(name, address, field=field, header=header)
            if len(self._mailbox_cache) < 1024:
                self._mailbox_cache[key] = cached
        return cached

    def _now(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            # RFC 5322 §3.3 zone "+0000": "GMT" (usegmt) is obsolete syntax, never to be
            # generated (§4), and "-0000" means the zone is unknown.
            self._date = formatdate(now, localtime=False)[:-5] + "+0000"
        return self._date

    def message_id(self, msg: OutgoingMessage) -> str:
        """A Message-ID that stays the same across retries of the same message.

        Derived from the meta (account, campaign, send date, recipient, seq), never from
        anything of this process: a retry may run in another worker or after a restart,
        and receivers drop a second copy by its Message-ID (RFC 5322 §3.6.4). Its domain
        is the sender's as the envelope and From have it (IDNA, ``xn--``): a raw
        ``bücher.de`` is not ASCII. Raises ``InvalidAddressError`` for a bad sender.
        """
        domain = normalize_address(msg.from_address).rpartition("@")[2]
        return f"<{message_id_local_part(msg.meta, msg.campaign_id, msg.seq)}@{domain}>"

    def write(self, msg: OutgoingMessage, extra_headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """Return the message as CRLF bytes. Bcc is never written (envelope only).

        Raises :class:`InvalidMessageError` when a header value holds a line break, an
        address is invalid or a text cannot be written as UTF-8 (a lone surrogate): the
        recipient's data is at fault, not the provider.
        """
        return self.write_pair(msg, extra_headers, copy=False)[0]

    def write_pair(
        self,
        msg: OutgoingMessage,
        extra_headers: Iterable[tuple[str, str]] = (),
        *,
        copy: bool = True,
    ) -> tuple[bytes, bytes | None]:
        """The To recipient's bytes and, with ``copy``, those of the copy for the Cc and
        Bcc addresses: the same message (Date and Message-ID included) without the
        :data:`TO_ONLY_HEADERS`. The copy is None when it would be the same bytes (no Cc or
        Bcc, or no such header). Raises as :meth:`write`.
        """
        try:
            return self._write(msg, extra_headers, copy and bool(msg.cc or msg.bcc))
        except ValueError as exc:  # InvalidAddressError and UnicodeError are ValueErrors
            raise InvalidMessageError(str(exc)) from exc

    def _write(
        self, msg: OutgoingMessage, extra_headers: Iterable[tuple[str, str]], copy: bool
    ) -> tuple[bytes, bytes | None]:
        head, copy_head = self._headers(msg, extra_headers, copy)
        b = self._boundary
        # ASCII but for addresses that need SMTPUTF8 (RFC 6532), and the meta naming one.
        parts = [head.encode()]
        # The AMP part only before an HTML part (amp.dev): some clients show only the last
        # part, and would show the AMP source. A campaign with AMP and no HTML is refused,
        # but one stored before that was, or whose HTML renders empty for a recipient,
        # still comes here: that message goes without its AMP part.
        for ctype, body in (
            ("text/plain", msg.text),
            ("text/x-amp-html", msg.amp if msg.html else ""),
            ("text/html", msg.html),
        ):
            if not body and ctype != "text/plain":
                continue
            encoding, data = _body(body, b)
            parts.append(
                f"--{b}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode("ascii")
            )
            parts.append(data)
            parts.append(b"\r\n")
        parts.append(f"--{b}--\r\n".encode("ascii"))
        if copy_head is None:
            return b"".join(parts), None
        data = b"".join(parts)
        parts[0] = copy_head.encode()
        return data, b"".join(parts)

    def _headers(
        self, msg: OutgoingMessage, extra: Iterable[tuple[str, str]], copy: bool
    ) -> tuple[str, str | None]:
        """The To recipient's header block and, with ``copy``, the copy's (None when the
        same)."""
        lines = [
            f"From: {self._mailbox(msg.from_name, msg.from_address, 'from', 'From')}\r\n",
            f"To: {normalize_address(msg.to)}\r\n",
        ]
        if msg.cc:
            cc = format_address_list("Cc", [normalize_address(a) for a in msg.cc])
            lines.append(f"Cc: {cc}\r\n")
        if msg.reply_to:
            reply_to = self._mailbox("", msg.reply_to, "reply_to", "Reply-To")
            lines.append(f"Reply-To: {reply_to}\r\n")
        lines.append(f"Subject: {encode_unstructured('Subject', msg.subject)}\r\n")
        lines.append(f"Date: {self._now()}\r\n")
        lines.append(f"Message-ID: {self.message_id(msg)}\r\n")
        lines.append("MIME-Version: 1.0\r\n")
        # The address leads the meta and may need SMTPUTF8; the rest is ours, in ASCII.
        utf8 = msg.meta.partition("|")[2].isascii()
        lines.append(_raw_field(META_HEADER, msg.meta, utf8=utf8))
        common = len(lines)
        fields = [(n, _raw_field(check_header_name(n), v)) for n, v in (*msg.headers, *extra)]
        lines.extend(line for _, line in fields)
        lines.append(self._tail)
        head = "".join(lines)
        if not copy or all(n.lower() not in TO_ONLY_HEADERS for n, _ in fields):
            return head, None
        del lines[common:]
        lines.extend(line for n, line in fields if n.lower() not in TO_ONLY_HEADERS)
        lines.append(self._tail)
        return head, "".join(lines)
