"""The MIME writer: structure, encodings, header safety."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from email.header import decode_header, make_header
from email.utils import parseaddr

import pytest

from providers.addresses import InvalidAddressError, normalize_address
from providers.base import OutgoingMessage
from providers.errors import InvalidMessageError
from providers.mime import MimeWriter


def _msg(**overrides: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "seq": 1,
        "meta": "a@example.com|1|c|20261122|0|default|1|",
        "campaign_id": "c",
        "to": "a@example.com",
        "subject": "Hello",
        "html": "<p>Hi</p>",
        "text": "Hi",
        "from_address": "news@example.com",
        "from_name": "News",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


def _parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


@pytest.mark.parametrize(
    "field",
    [
        {"subject": "Hi\r\nBcc: x@evil.example"},
        {"from_name": "News\nBcc: x@evil.example"},
        {"subject": "Hi\u2028there"},
        {"meta": "a|\r\n"},
    ],
)
def test_line_breaks_in_header_values_are_refused(field: dict[str, str]) -> None:
    with pytest.raises(InvalidMessageError, match="line break"):
        MimeWriter(campaign_id="c").write(_msg(**field))


@pytest.mark.parametrize("field", ["html", "text", "amp", "subject", "from_name", "meta"])
def test_a_lone_surrogate_is_refused_as_invalid_message(field: str) -> None:
    """Text that cannot be written as UTF-8 is that message's fault, not an exception
    (UnicodeEncodeError) out of the batch."""
    with pytest.raises(InvalidMessageError):
        MimeWriter(campaign_id="c").write(_msg(**{field: "a\ud800b"}))


@pytest.mark.parametrize("name", ["X-Evil\r\nBcc", "X-Evil\n"])
def test_bad_extra_header_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidMessageError, match="not a valid header name"):
        MimeWriter(campaign_id="c").write(_msg(headers=((name, "x"),)))


def test_non_ascii_display_name_and_subject_are_rfc2047() -> None:
    data = MimeWriter(campaign_id="c").write(
        _msg(from_name="Zoë Ñandú Marketing", subject="Grüße – Angebot")
    )
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"From: =?utf-8?b?Wm/DqyDDkWFuZMO6IE1hcmtldGluZw==?= <news@example.com>" in head
    parsed = _parse(data)
    assert parsed["Subject"] == "Grüße – Angebot"
    assert parsed["From"].addresses[0].display_name == "Zoë Ñandú Marketing"


@pytest.mark.parametrize(
    "subject", ["=?utf-8?q?Your_account_is_closed?=", "Hi =?utf-8?b?RXZpbA==?= there"]
)
def test_subject_that_looks_like_an_encoded_word_is_shown_as_written(subject: str) -> None:
    """Sent raw, a client would decode it: recipient data would choose what is displayed."""
    data = MimeWriter(campaign_id="c").write(_msg(subject=subject))
    assert _parse(data)["Subject"] == subject
    assert subject.encode() not in data


def test_display_name_that_looks_like_an_encoded_word_is_shown_as_written() -> None:
    name = "=?utf-8?q?Your_Bank?="
    data = MimeWriter(campaign_id="c").write(_msg(from_name=name))
    assert _parse(data)["From"].addresses[0].display_name == name


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _head_fields(data: bytes) -> dict[str, str]:
    """The header fields as written (folds kept), after checking the 78-octet lines of
    RFC 5322 §2.1.1 and the 75-character encoded words of RFC 2047 §2."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: dict[str, str] = {}
    name = ""
    for line in head.split("\r\n"):
        assert len(line) <= 78 or line.startswith(("X-CleverTap_META", "Subject")), line
        assert len(line) <= 998
        assert line.strip(), "a folded line that is only white space"
        if line[0] in " \t":
            fields[name] += "\r\n" + line
        else:
            name, _, value = line.partition(": ")
            fields[name] = value
    for field in fields.values():
        assert all(len(word) <= 75 for word in _ENCODED_WORD.findall(field))
    return fields


def _display_name(field: str) -> tuple[str, str]:
    """Display name and address per RFC 2047 §6.2 (white space between adjacent encoded
    words is ignored); Python 3.11's header registry keeps it in a display name
    (CPython gh-128110), so it cannot judge names of more than one encoded word."""
    name, address = parseaddr(field.replace("\r\n", ""))
    return str(make_header(decode_header(name))), address


LONG_NAMES = [
    ("Acme Deals Weekly " * 61).strip(),  # 1100 ASCII characters, folded between words
    "A" * 1100,  # no place to fold: encoded words
    ('Acme, "Deals" Inc. \\ ' * 50).strip(),  # a quoted string, folded inside
    ("Zoë Ñandú Marketing " * 40).strip(),
    "日本語のメール" * 40,
    "=?utf-8?q?x?= " * 80,
]


@pytest.mark.parametrize("name", LONG_NAMES, ids=range(len(LONG_NAMES)))
def test_long_display_names_fold_and_read_back(name: str) -> None:
    data = MimeWriter(campaign_id="c").write(_msg(from_name=name))
    assert _display_name(_head_fields(data)["From"]) == (name, "news@example.com")
    parsed = _parse(data)["From"].addresses[0]
    assert parsed.addr_spec == "news@example.com"
    if name.isascii() and " " in name and "=?" not in name:  # no encoded word: see above
        assert parsed.display_name == name


def test_long_cc_list_is_folded_between_addresses() -> None:
    cc = tuple(f"user{i}.with.a.longer.name@example.com" for i in range(40))
    data = MimeWriter(campaign_id="c").write(_msg(cc=cc))
    field = _head_fields(data)["Cc"]
    assert field.count("\r\n ") >= 20
    assert [a.addr_spec for a in _parse(data)["Cc"].addresses] == list(cc)


@pytest.mark.parametrize("subject", [("Grüße – Angebot " * 30).strip(), "x" * 1100, "a " * 600])
def test_long_subject_is_folded_in_short_encoded_words(subject: str) -> None:
    data = MimeWriter(campaign_id="c").write(_msg(subject=subject))
    _head_fields(data)
    assert _parse(data)["Subject"] == subject


def test_a_machine_read_header_longer_than_998_is_refused() -> None:
    """X-CleverTap_META and friends are never folded or encoded (reference §7.3)."""
    with pytest.raises(InvalidMessageError, match="998"):
        MimeWriter(campaign_id="c").write(_msg(meta="a@example.com|" + "1" * 990 + "|"))
    with pytest.raises(InvalidMessageError, match="998"):
        MimeWriter(campaign_id="c").write(_msg(headers=(("X-Long", "v" * 991),)))
    MimeWriter(campaign_id="c").write(_msg(headers=(("X-Long", "v" * 990),)))  # 998: allowed


def test_display_name_with_specials_is_quoted() -> None:
    parsed = _parse(MimeWriter(campaign_id="c").write(_msg(from_name='Acme, "Deals" Inc.')))
    assert parsed["From"].addresses[0].display_name == 'Acme, "Deals" Inc.'


@pytest.mark.parametrize(
    "field",
    [
        {"meta": "a@example.com|acmé|c|20261122|0|default|1|"},  # DISPATCH_ACCOUNT_ID=acmé
        {"headers": (("List-Unsubscribe", "<https://bücher.example/u/t>"),)},
    ],
)
def test_a_machine_read_header_that_is_not_ascii_is_refused_by_name(
    field: dict[str, object],
) -> None:
    """Written as it is (never encoded), so it must be ASCII: the refusal names the header
    a person must fix, not "a header value"."""
    with pytest.raises(InvalidMessageError, match=r"^(X-CleverTap_META|List-Unsubscribe) .*ASCII"):
        MimeWriter(campaign_id="c").write(_msg(**field))


def test_long_meta_stays_on_one_line() -> None:
    meta = (
        "some.very.long.address+tracking@subdomain.example.com"
        "|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"
    )
    data = MimeWriter(campaign_id="c").write(_msg(meta=meta))
    assert f"X-CleverTap_META: {meta}\r\n".encode() in data


def test_bodies_round_trip_with_crlf_and_utf8() -> None:
    html = "<p>Ünïcödé ✓ " + "x" * 300 + "</p>\n.starts with dot\n"
    parsed = _parse(MimeWriter(campaign_id="c").write(_msg(html=html, text="line1\nline2")))
    body = parsed.get_body(("html",)).get_content()
    assert "Ünïcödé ✓ " + "x" * 300 in body and ".starts with dot" in body
    assert parsed.get_body(("plain",)).get_content().splitlines() == ["line1", "line2"]
    for line in MimeWriter(campaign_id="c").write(_msg(html=html)).split(b"\r\n"):
        assert len(line) <= 998


def _assert_wire_lines(data: bytes) -> None:
    """Every line ends in CRLF (RFC 5321 §2.3.8) and fits 998 octets (RFC 5322 §2.1.1)."""
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@pytest.mark.parametrize("part", ["html", "text", "amp"])
def test_a_long_one_line_part_has_only_crlf_line_ends(part: str) -> None:
    """b2a_qp takes its line end from the first newline of the data, "\n" when it has none."""
    body = "<p>Ünïcödé " + "word " * 1000 + "</p>"
    data = MimeWriter(campaign_id="c").write(_msg(**{part: body}))
    _assert_wire_lines(data)
    content = {"html": "html", "text": "plain", "amp": "x-amp-html"}[part]
    parsed = next(p for p in _parse(data).walk() if p.get_content_subtype() == content)
    assert parsed.get_content() == body


def test_amp_part_sits_between_text_and_html() -> None:
    parsed = _parse(MimeWriter(campaign_id="c").write(_msg(amp="<html amp4email>x</html>")))
    assert [p.get_content_type() for p in parsed.iter_parts()] == [
        "text/plain",
        "text/x-amp-html",
        "text/html",
    ]


def test_message_id_is_stable_per_message() -> None:
    writer = MimeWriter(campaign_id="c")
    assert writer.message_id(_msg()) == writer.message_id(_msg(subject="other"))
    assert writer.message_id(_msg()) != writer.message_id(_msg(seq=2))


def test_message_id_is_the_same_in_another_worker() -> None:
    """A retry may run in another worker process (or after a restart), whose writers are
    its own: the Message-ID must still be the message's, as receivers drop duplicates by
    it (RFC 5322 §3.6.4). It differs for another recipient, campaign or account."""
    first, other = MimeWriter(campaign_id="c"), MimeWriter(campaign_id="c")
    assert first.message_id(_msg()) == other.message_id(_msg())
    assert _parse(first.write(_msg()))["Message-ID"] == _parse(other.write(_msg()))["Message-ID"]
    ids = {
        first.message_id(_msg(meta=meta))
        for meta in (
            "a@example.com|1|c|20261122|0|default|1|",
            "b@example.com|1|c|20261122|0|default|1|",
            "a@example.com|2|c|20261122|0|default|1|",
            "a@example.com|1|d|20261122|0|default|1|",
            "a@example.com|1|c|20261123|0|default|1|",
        )
    }
    assert len(ids) == 5


def test_date_has_a_numeric_zone() -> None:
    """RFC 5322 §3.3: the zone is +hhmm; "GMT" is obsolete syntax (§4.3), which §4 says
    MUST NOT be generated."""
    data = MimeWriter(campaign_id="c").write(_msg())
    date = re.search(rb"^Date: (.*)\r$", data, re.MULTILINE)
    assert date is not None
    day = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
    month = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    assert re.fullmatch(rf"{day}, \d{{2}} {month} \d{{4}} \d\d:\d\d:\d\d \+0000", date[1].decode())


def test_idn_domains_become_a_labels() -> None:
    assert normalize_address("Kai@Bücher.Example") == "Kai@xn--bcher-kva.example"
    parsed = _parse(MimeWriter(campaign_id="c").write(_msg(to="kai@bücher.example")))
    assert parsed["To"] == "kai@xn--bcher-kva.example"


def test_idn_sender_domain_gives_an_ascii_message_id() -> None:
    """The Message-ID's domain is the sender's in IDNA form, as in the From header."""
    writer = MimeWriter(campaign_id="c")
    parsed = _parse(writer.write(_msg(from_address="news@Bücher.de", from_name="Bücher")))
    assert parsed["Message-ID"].endswith("@xn--bcher-kva.de>")
    assert parsed["From"].addresses[0].addr_spec == "news@xn--bcher-kva.de"


@pytest.mark.parametrize(
    "bad",
    [
        "no-at-sign",
        "a@",
        "@b.example",
        "a b@c.example",
        "zo\u200bë@demo.example",  # a format character (zero-width space)
        "zoë @demo.example",
        "a@-bad-.example",
        "a@nodot",
        "x\n@example.com",  # a line feed before '@' would end the SMTP command there
        "x\r\nRSET\r\n@example.com",
    ],
)
def test_invalid_addresses_are_refused(bad: str) -> None:
    with pytest.raises(InvalidAddressError):
        normalize_address(bad)


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example",
        "User.Name+tag@Example.COM",
        "x@localhost",
        ".a@b.example",
        "a..b@b.example",
        "a@-b.example",
        " a@b.example ",
        "a@b.example.",
        "zoë@b.example",
        "a@bücher.example",
        "a@b",
        "a" * 64 + "@b.example",
        "a" * 65 + "@b.example",
        "a@" + "b" * 64 + ".example",
        "a@b_c.example",
        'a"b@c.example',
        "a@b.example\n",
        "A@B.EXAMPLE",
    ],
)
def test_the_fast_check_agrees_with_the_full_normalisation(address: str) -> None:
    """Addresses already in normal form skip the full path; both give the same answer."""
    from providers.addresses import _normalize

    def outcome(fn: Callable[[str], str]) -> str:
        try:
            return fn(address)
        except InvalidAddressError:
            return "refused"

    assert outcome(normalize_address) == outcome(_normalize)
