"""The incremental NDJSON / JSON-array splitters behind the streamed recipient append."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dispatch.recipient_stream import (
    Document,
    EmptyBodyError,
    JsonArraySplitter,
    NdjsonSplitter,
    RecipientSplitter,
    StreamFormatError,
)
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider
from tests.smtp_server import SmtpTestServer

BOM = "\ufeff".encode()

TRICKY = [
    {"email": "a@example.com", "vars": {"quote": 'say "hi", [ok] {yes}', "n": [1, {"x": []}]}},
    {"email": "b@example.com", "vars": {"slash": "back\\slash\\", "esc": '\\"]}'}},
    {"email": "c@example.com", "vars": {"unicode": "żółć ☃ \u2028", "empty": ""}},
    {"email": "d@example.com"},
]


def feed_in_pieces(
    splitter: NdjsonSplitter | JsonArraySplitter | RecipientSplitter,
    data: bytes,
    seed: int,
    after_each: Callable[[], None] = lambda: None,
) -> list[Document]:
    """Feed ``data`` cut at random places (a cut can fall anywhere, even in an escape)."""
    rng = random.Random(seed)
    out: list[Document] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        out += splitter.feed(data[pos : pos + step])
        after_each()
        pos += step
    return out + splitter.finish()


@pytest.mark.parametrize("seed", range(20))
def test_array_elements_come_out_whole_wherever_the_chunks_are_cut(seed: int) -> None:
    data = json.dumps(TRICKY, ensure_ascii=False, indent=seed % 3 or None).encode()
    docs = feed_in_pieces(JsonArraySplitter(), data, seed)
    assert [d.position for d in docs] == [0, 1, 2, 3]
    assert [json.loads(d.raw) for d in docs] == TRICKY


@pytest.mark.parametrize("seed", range(20))
def test_ndjson_lines_come_out_whole_wherever_the_chunks_are_cut(seed: int) -> None:
    lines = [json.dumps(doc, ensure_ascii=False) for doc in TRICKY]
    data = ("\n".join([lines[0], "", lines[1], "  ", lines[2]]) + "\r\n" + lines[3]).encode()
    docs = feed_in_pieces(NdjsonSplitter(), data, seed)
    assert [d.position for d in docs] == [1, 3, 5, 6]
    assert [json.loads(d.raw) for d in docs] == TRICKY


def test_array_scalars_and_empty_slots_are_reported_per_element() -> None:
    splitter = JsonArraySplitter()
    docs = splitter.feed(b'[ 1 , "two",, {"email": "x@example.com"} ,null]') + splitter.finish()
    assert [(d.position, d.raw, d.problem) for d in docs] == [
        (0, b"1", ""),
        (1, b'"two"', ""),
        (2, b"", "empty element"),
        (3, b'{"email": "x@example.com"}', ""),
        (4, b"null", ""),
    ]
    empty = JsonArraySplitter()
    assert empty.feed(b" [ ] ") == [] and empty.finish() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'[{"email": "a@example.com"}', "ends early: the body ended in element 0 "),
        (b'[{"email": "a@example.com"}, {"em', "ends early: the body ended in element 1 "),
        (b'[{"email": "a@example.com"}] [', "after the end"),
        (b'[{"email": "a@example.com"}] x', "neither"),
        (b"", "empty"),
    ],
)
def test_a_broken_array_is_an_error_of_the_body(body: bytes, message: str) -> None:
    splitter = JsonArraySplitter()
    with pytest.raises(StreamFormatError, match=message):
        splitter.feed(body)
        splitter.finish()


def test_overlong_documents_are_refused_without_buffering_them() -> None:
    ndjson = NdjsonSplitter(max_document=100)
    docs = ndjson.feed(b'{"email": "a@example.com"}\n' + b"x" * 150)
    docs += ndjson.feed(b"y" * 10_000)
    assert len(ndjson._tail) == 0  # nothing of the long line is kept
    docs += ndjson.feed(b'zz\n{"email": "b@example.com"}\n') + ndjson.finish()
    assert [(d.position, d.problem) for d in docs] == [
        (1, ""),
        (2, "longer than 100 bytes"),
        (3, ""),
    ]


@pytest.mark.parametrize("seed", range(10))
def test_an_overlong_array_element_is_its_own_error_and_the_rest_is_kept(seed: int) -> None:
    long = {"email": "x@example.com", "vars": {"a": ["]}", 'q"'] * 300, "b": {"c": "[" * 500}}}
    data = json.dumps([TRICKY[0], long, 7, TRICKY[1]]).encode()
    array = JsonArraySplitter(max_document=100)

    def nothing_of_the_long_element_is_kept() -> None:
        assert len(array._buf) <= 100 + 7  # a piece is up to 7 bytes

    docs = feed_in_pieces(array, data, seed, nothing_of_the_long_element_is_kept)
    assert [(d.position, d.problem) for d in docs] == [
        (0, ""),
        (1, "longer than 100 bytes"),
        (2, ""),
        (3, ""),
    ]
    assert [json.loads(d.raw) for d in docs if d.raw] == [TRICKY[0], 7, TRICKY[1]]


def test_the_format_is_told_by_the_first_byte() -> None:
    for body, told in ((b'  \n [{"a": 1}, ', "array"), (b'{"email": 1}\n', "ndjson")):
        for start in (b"", BOM):
            splitter = RecipientSplitter()
            splitter.feed(start + body)
            assert splitter.format == told


BODIES = {  # the same four recipients in each format the append takes
    "one-line array": json.dumps(TRICKY).encode(),
    "pretty array": json.dumps(TRICKY, indent=2).encode(),
    "ndjson": "\n".join(json.dumps(doc) for doc in TRICKY).encode(),
}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", BODIES)
def test_a_leading_byte_order_mark_is_dropped(kind: str, seed: int) -> None:
    """Windows tools write a UTF-8 BOM first; RFC 8259 §8.1 lets a parser ignore it."""
    splitter = RecipientSplitter()
    docs = feed_in_pieces(splitter, BOM + BODIES[kind], seed)  # a cut may split the BOM
    assert splitter.format == ("ndjson" if kind == "ndjson" else "array")
    assert [d.problem for d in docs] == [""] * 4
    assert [json.loads(d.raw) for d in docs] == TRICKY
    assert [d.position for d in docs] == ([1, 2, 3, 4] if kind == "ndjson" else [0, 1, 2, 3])


def draft_campaign(api: Any, smtp: SmtpTestServer, campaign_id: str) -> None:
    save_smtp_provider(api, smtp.port)
    body = {"id": campaign_id, "provider": "local", "subject": "Hi", "html": "<p>Hi</p>"}
    answer = api.post("/v1/campaigns", json={**body, "draft": True})
    assert answer.status_code == 201, answer.text


def append(api: Any, campaign_id: str, body: bytes) -> dict[str, Any]:
    answer = api.post(f"/v1/campaigns/{campaign_id}/recipients", content=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_the_append_takes_bodies_that_start_with_a_byte_order_mark(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        for n, kind in enumerate(BODIES):
            draft_campaign(api, smtp, f"bom-{n}")
            result = append(api, f"bom-{n}", BOM + BODIES[kind])
            assert (result["appended"], result["rejected"], result["total"]) == (4, 0, 4), kind


ONE_LINE = b'["oops"]'
NDJSON_AFTER = [json.dumps(doc).encode() for doc in TRICKY[:2]]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(
    ("body", "lines"),
    [
        (b"\n".join([ONE_LINE, *NDJSON_AFTER]), [1, 2, 3]),
        (b"\n \n" + ONE_LINE + b"\r\n\n  \n" + b"\n".join(NDJSON_AFTER) + b"\n", [3, 6, 7]),
        (b"\n".join([b'[{"email": "a@example.com"}] x', *NDJSON_AFTER]), [1, 2, 3]),
        (BOM + b"\n".join([b"[]", *NDJSON_AFTER]), [1, 2, 3]),
    ],
)
def test_a_first_line_that_is_an_array_is_one_bad_line_of_ndjson(
    body: bytes, lines: list[int], seed: int
) -> None:
    """An array on one line with more documents on later lines is NDJSON, not an array
    followed by junk: one bad recipient must not sink the others."""
    splitter = RecipientSplitter()
    docs = feed_in_pieces(splitter, body, seed)
    assert splitter.format == "ndjson"
    assert [d.position for d in docs] == lines
    assert [json.loads(d.raw) for d in docs[1:]] == TRICKY[:2]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(
    "body",
    [
        json.dumps(TRICKY).encode(),  # one line: the whole body
        json.dumps(TRICKY).encode() + b"\n\n  \r\n",  # blank lines after it change nothing
        json.dumps(TRICKY, indent=1).encode(),  # the array goes on after its first line
        (json.dumps(TRICKY[:1])[:-1] + ",\n" + json.dumps(TRICKY[1:])[1:]).encode(),
    ],
)
def test_an_array_that_is_the_whole_body_stays_an_array(body: bytes, seed: int) -> None:
    splitter = RecipientSplitter()
    docs = feed_in_pieces(splitter, body, seed)
    assert splitter.format == "array"
    assert [d.position for d in docs] == [0, 1, 2, 3]
    assert [json.loads(d.raw) for d in docs] == TRICKY


def test_the_format_is_settled_without_holding_more_than_one_document() -> None:
    pretty = RecipientSplitter(max_document=100)
    assert pretty.feed(b'[\n  {"email": "a@example.com"},') == [
        Document(0, b'{"email": "a@example.com"}')
    ]
    assert pretty.format == "array"

    long_line = RecipientSplitter(max_document=100)  # no NDJSON line is that long
    first = long_line.feed(b'[{"email": "a@example.com"}, ' + b" " * 100)
    assert long_line.format == "array" and [d.position for d in first] == [0]
    with pytest.raises(StreamFormatError, match="after the end"):
        long_line.feed(b'{"email": "b@example.com"}]\n{"email": "c@example.com"}\n')

    blank = RecipientSplitter()  # the lines after a one-line array are counted, not kept
    assert blank.feed(b'["oops"]') + blank.feed(b"\n" * 10_000) == []
    assert len(blank._head) < 20
    assert [d.position for d in blank.feed(b"{}") + blank.finish()] == [1, 10_001]

    with pytest.raises(EmptyBodyError):
        RecipientSplitter().finish()


def test_what_came_before_a_fault_comes_with_it() -> None:
    """A broken body still hands over the documents before the fault, even those that
    were held or completed by the same chunk."""
    truncated = RecipientSplitter()
    assert truncated.feed(b'[{"email": "a@example.com"}, {"email": "b@exa') == []  # held
    with pytest.raises(StreamFormatError, match="ends early") as raised:
        truncated.finish()
    assert raised.value.documents == [Document(0, b'{"email": "a@example.com"}')]

    junk = JsonArraySplitter()
    with pytest.raises(StreamFormatError, match="neither") as raised:
        junk.feed(b"[1, 2] extra")
    assert [d.raw for d in raised.value.documents] == [b"1", b"2"]


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_one_bad_document_does_not_sink_the_rest_of_the_append(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    with api_client(api_server) as api:
        draft_campaign(api, smtp, "sink-1")
        result = append(api, "sink-1", b"\n".join([ONE_LINE, *NDJSON_AFTER]))
        assert (result["appended"], result["rejected"]) == (2, 1)
        assert [(e["line"], e["index"]) for e in result["errors"]] == [(1, None)]

        long = {"email": "long@example.com", "vars": {"pad": "x" * (1 << 20)}}
        after = [{"email": f"after{i}@example.com"} for i in range(3)]
        result = append(api, "sink-1", json.dumps([TRICKY[3], long, *after]).encode())
        assert (result["appended"], result["rejected"], result["total"]) == (4, 1, 6)
        assert [(e["index"], e["message"]) for e in result["errors"]] == [
            (1, "longer than 1048576 bytes")
        ]

        # However the body is cut on its way (a few bytes at a time here): the same.
        def dribble(body: bytes) -> Iterator[bytes]:
            for i in range(0, len(body), 3):
                yield body[i : i + 3]
                time.sleep(0.002)

        for n, start in enumerate((b"", BOM)):
            draft_campaign(api, smtp, f"cut-{n}")
            cut = start + b"\n".join([ONE_LINE, *NDJSON_AFTER])
            answer = api.post(f"/v1/campaigns/cut-{n}/recipients", content=dribble(cut))
            result = answer.json()
            assert (result["appended"], result["rejected"]) == (2, 1), result
            assert [(e["line"], e["index"]) for e in result["errors"]] == [(1, None)]


# Elements whose text holds what the fast cut looks for ('}' then ',' or ']') where it is
# not their end, and elements that do not parse, or that orjson refuses where the slow
# scan cuts them out all the same (a huge integer, a lone surrogate, NaN).
AWKWARD = [
    b'{"email": "a@example.com", "vars": {"s": "}, {\\"email\\": \\"x\\"}", "t": "}]"}}',
    b'{"vars": {"a": {"b": {}}, "c": [{}, {}]}, "email": "b@example.com"}',
    b'{"email": "c@example.com", "n": 123456789012345678901234567890}',
    b'{"email": "d@example.com", "s": "\\ud800"}',
    b'{"email": "e@example.com", "x": NaN}',
    b'{"email": "f@example.com"} trailing',
    b'{"email": }',
    b'"just a string"',
    b"42",
    b'{"email": "g@example.com", "s": "' + b"}," * 40 + b'"}',
    b'{ "email" : "h@example.com" }',
]


@pytest.mark.parametrize("seed", range(12))
def test_cutting_whole_objects_at_once_gives_what_the_character_scan_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast cut of a whole object (at a '}' before ',' or ']', when that much parses)
    gives the same documents as following each element's structure, whatever the
    elements and wherever the chunks are cut."""
    from dispatch import recipient_stream

    rng = random.Random(seed)
    elements = [rng.choice(AWKWARD) for _ in range(60)]
    gaps = [b"", b" ", b"\n  ", b"\r\n\t"]
    body = b"[" + b",".join(rng.choice(gaps) + e + rng.choice(gaps) for e in elements) + b"]"

    def split(tries: int) -> list[Document]:
        monkeypatch.setattr(recipient_stream, "_OBJECT_END_TRIES", tries)
        splitter, out, pos = JsonArraySplitter(max_document=300), [], 0
        cut = random.Random(seed)
        while pos < len(body):
            step = cut.choice([1, 7, 64, 500, len(body)])
            out += splitter.feed(body[pos : pos + step])
            pos += step
        return out + splitter.finish()

    scanned = split(0)
    assert len(scanned) == len(elements)
    assert [d.raw for d in scanned if not d.problem] == [e.strip() for e in elements]
    cuts: list[int] = []
    object_end = JsonArraySplitter._object_end
    monkeypatch.setattr(
        JsonArraySplitter,
        "_object_end",
        lambda self, buf, start: cuts.append(object_end(self, buf, start)) or cuts[-1],
    )
    assert split(4) == scanned
    assert min(cuts) == -1 and max(cuts) > 0  # both ways were taken
