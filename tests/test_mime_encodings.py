"""Which Content-Transfer-Encoding each body part gets, and that either reads back the same.

A part is written as it is (``7bit``) when it is printable ASCII in lines of at most 998
octets without white space at their ends; anything else is quoted-printable.
"""

from __future__ import annotations

import email
import email.policy
import random

import pytest

from providers.base import OutgoingMessage
from providers.mime import MimeWriter
from tests.test_mime import _assert_wire_lines


def _msg(text: str, html: str = "<p>Hi</p>") -> OutgoingMessage:
    return OutgoingMessage(
        seq=1,
        meta="a@example.com|1|c|20261122|0|default|1|",
        campaign_id="c",
        to="a@example.com",
        subject="Hello",
        html=html,
        text=text,
        from_address="news@example.com",
        from_name="News",
    )


def _plain_part(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    part = msg.get_body(("plain",))
    assert isinstance(part, email.message.EmailMessage)
    return part


def _as_sent(text: str) -> str:
    """The text as it reads back: every line end (LF, CR or CRLF) is CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello Ana,\nyour picks are in.\n",
        "tabs\tinside\r\nand CRLF\r\nalready",
        "=3D is not decoded, = stays =\n.\n..\n",
        "x" * 998,
        "From the market\n--not-our-boundary--\n",
    ],
)
def test_printable_ascii_in_short_lines_is_written_as_it_is(text: str) -> None:
    data = MimeWriter(campaign_id="c").write(_msg(text))
    part = _plain_part(data)
    assert part["Content-Transfer-Encoding"] == "7bit"
    assert b"\r\n\r\n" + _as_sent(text).encode() + b"\r\n--" in data  # the text's own bytes
    assert part.get_content() == _as_sent(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Olá Ana", "not ASCII"),
        ("x" * 999, "a line past 998 octets"),
        ("ok\n" + "y" * 999 + "\nok", "a line past 998 octets"),
        ("trailing space \nnext", "white space at a line's end"),
        ("trailing tab\t\r\nnext", "white space at a line's end"),
        ("ends in a space ", "white space at the end"),
        ("bell \x07 inside", "a control character"),
        ("form\x0cfeed", "a control character"),
        ("delete \x7f inside", "DEL"),
        ("nul \x00 inside", "NUL"),
    ],
)
def test_anything_else_is_quoted_printable_and_reads_back_the_same(text: str, why: str) -> None:
    data = MimeWriter(campaign_id="c").write(_msg(text))
    part = _plain_part(data)
    assert part["Content-Transfer-Encoding"] == "quoted-printable", why
    assert part.get_content() == _as_sent(text)
    _assert_wire_lines(data)


def test_a_body_holding_the_boundary_is_quoted_printable() -> None:
    """'==' never occurs in quoted-printable output: the boundary cannot end the part."""
    writer = MimeWriter(campaign_id="c")
    boundary = writer._boundary
    text = f"before\n--{boundary}--\nafter"
    data = writer.write(_msg(text, html=f"<p>--{boundary}</p>"))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert {p["Content-Transfer-Encoding"] for p in parts} == {"quoted-printable"}
    assert parts[0].get_content() == _as_sent(text)
    assert data.count(f"--{boundary}--\r\n".encode()) == 1  # the closing one alone


def test_random_bodies_read_back_the_same_whichever_encoding() -> None:
    """Bodies mixing what decides the encoding: every one parses back to its text, on
    CRLF lines of at most 998 octets, and is 7bit exactly when the rule says so."""
    rng = random.Random(20261124)
    pieces = ["word", " ", "\t", "\n", "\r\n", "\r", "=", ".", "é", "€", "\x07", "x" * 400, "--"]
    seen = set()
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        data = MimeWriter(campaign_id="c").write(_msg(text))
        part = _plain_part(data)
        lines = _as_sent(text).split("\r\n")
        plain = (
            text.isascii()
            and all(c.isprintable() or c in "\t\r\n" for c in text)
            and all(len(line) <= 998 and not line.endswith((" ", "\t")) for line in lines)
        )
        encoding = part["Content-Transfer-Encoding"]
        seen.add(encoding)
        assert encoding == ("7bit" if plain else "quoted-printable"), repr(text)
        assert part.get_content() == _as_sent(text)
        _assert_wire_lines(data)
    assert seen == {"7bit", "quoted-printable"}
