"""Review D7: what a campaign puts on the wire, read back as a strict receiver reads it.

A campaign of hostile and international vars (quotes, commas, backslashes, emoji, RTL and
CJK text, "=?", NUL, CR and LF, lines of 997 to 2,000 octets) goes through the real
sending path to a local aiosmtpd; each message's DATA bytes are checked: CRLF line ends
only and a final CRLF, no line over 998 octets (RFC 5322 §2.1.1), no line holding an
encoded word over 76 characters (RFC 2047 §2), a strict parse without defects, and every
encoded word and body part decoded back to what the templates rendered.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
import redis
from markupsafe import escape

from providers.mime import MimeWriter
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_mime import _msg

FROM_NAME = 'Ünïcode "Deals", Inc; \\ 😀 ' + "долгое имя " * 6
# What a var may hold in a header (the subject refuses line breaks and control characters)
HEADER_BITS = ['"', ",", ";", "\\", "<", ">", "(", ")", "@", ":", "=?", "?=", "=", "_", "é",
               "😀", "👩\u200d👩\u200d👧", "שלום", "مرحبا", "\u202e", "中文", "日本語", "\t",
               "x" * 90, "\u00a0", "a", "Z", " "]  # fmt: skip
BODY_BITS = [*HEADER_BITS, "\r", "\n", "\r\n", "\x00", ".\n", "\n.\n", "y" * 997, "y" * 998,
             "y" * 999, "z" * 2000, "trailing \n", "&", "<b>"]  # fmt: skip
ENCODED_WORD = re.compile(rb"=\?[^?]*\?[bBqQ]\?[^?]*\?=")


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _unfolded(data: bytes, name: str) -> str:
    """A header's raw value, unfolded (RFC 5322 §2.2.3), nothing decoded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    match = re.search(rf"^{name}: (.*?)\r\n(?![ \t])", head + "\r\n", re.M | re.S)
    assert match is not None, name
    return match[1].replace("\r\n", "")


def _decoded(value: str) -> str:
    """An unstructured value or phrase as RFC 2047 §6.2 displays it (white space between
    adjacent encoded words dropped: Python's structured parser keeps it)."""
    return str(make_header(decode_header(value))) if "=?" in value else value


def _assert_on_the_wire(data: bytes) -> EmailMessage:
    assert data.endswith(b"\r\n")
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", data), "a bare CR or LF, or a NUL"
    assert max(map(len, data.split(b"\r\n"))) <= 998
    for line in _header_lines(data):
        if ENCODED_WORD.search(line):
            assert len(line) <= 76, line  # RFC 2047 §2
            assert all(len(w) <= 75 for w in ENCODED_WORD.findall(line)), line
    parsed = email.message_from_bytes(data, policy=email.policy.strict)
    assert isinstance(parsed, EmailMessage)
    for part in parsed.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not getattr(value, "defects", ()), (name, value.defects)
    return parsed


def test_a_hostile_campaign_reads_back_strictly_from_the_wire(
    redis_client: redis.Redis,
) -> None:
    rng = random.Random(2047)
    recipients = []
    for i in range(40):
        subject = "".join(rng.choice(HEADER_BITS) for _ in range(rng.randrange(0, 40)))
        body = "".join(rng.choice(BODY_BITS) for _ in range(rng.randrange(0, 12)))
        recipients.append({"email": f"u{i}@example.com", "vars": {"s": subject, "b": body}})
    with SmtpTestServer(smtputf8=True) as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system", from_name=FROM_NAME)
        body = {"id": "d7-wire", "provider": "local", "subject": "Re: {{ s }} — offer",
                "text": "{{ b }}", "html": "<p>{{ b }}</p>", "amp": "<b>{{ b }}</b>",
                "recipients": recipients}  # fmt: skip
        _, results = run_inline(redis_client, body)
        received = list(smtp.messages)
    assert [r.counts for r in results] == [{"sent": 40}]
    ids = set()
    for message in received:
        seq = int(message.rcpt_tos[0][1:].split("@")[0])
        subject, text = recipients[seq]["vars"]["s"], recipients[seq]["vars"]["b"]
        parsed = _assert_on_the_wire(message.data)
        assert message.mail_options == []  # all ASCII: no SMTPUTF8, no 8BITMIME
        assert _decoded(_unfolded(message.data, "Subject")) == f"Re: {subject} — offer".strip()
        name, _, address = _unfolded(message.data, "From").rpartition(" <")
        assert (_decoded(name), address) == (FROM_NAME, "deals@acme.example>")
        parts = [p for p in parsed.walk() if not p.is_multipart()]
        assert [(p.get_content_type(), p.get_payload(decode=True).decode()) for p in parts] == [
            ("text/plain", _crlf(text)),
            ("text/x-amp-html", _crlf(f"<b>{escape(text)}</b>")),  # before html (AMP spec)
            ("text/html", _crlf(f"<p>{escape(text)}</p>")),
        ]
        assert parsed["Date"].datetime.utcoffset() is not None
        assert re.fullmatch(r"<[0-9a-f]{32}\.\d+@acme\.example>", parsed["Message-ID"])
        ids.add(parsed["Message-ID"])
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = r"<http://127\.0\.0\.1:8000/u/[A-Za-z0-9_-]+>"
        assert re.fullmatch(link, parsed["List-Unsubscribe"])
    assert len(ids) == 40


@pytest.mark.parametrize("length", [1, 5, 13, 14, 15, 16, 19, 22, 23, 24, 30, 45, 200])
@pytest.mark.parametrize("field", ["subject", "from_name"])
def test_lines_holding_encoded_words_are_76_characters_at_most(field: str, length: int) -> None:
    """RFC 2047 §2: "each line of a header field that contains one or more encoded-words
    is limited to 76 characters"; they were written to 78, as lines without them are."""
    text = "é" * length
    data = MimeWriter(campaign_id="c").write(_msg(**{field: text}))
    lines = [line for line in _header_lines(data) if ENCODED_WORD.search(line)]
    assert lines and max(map(len, lines)) <= 76, [len(line) for line in lines]
    name = "Subject" if field == "subject" else "From"
    value = _unfolded(data, name)
    assert _decoded(value if field == "subject" else value.rpartition(" <")[0]) == text
