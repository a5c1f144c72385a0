"""The incremental NDJSON / JSON-array splitters behind the streamed recipient append."""

from __future__ import annotations

import json
import random

import pytest

from dispatch.recipient_stream import (
    Document,
    JsonArraySplitter,
    NdjsonSplitter,
    StreamFormatError,
    splitter_for,
)

TRICKY = [
    {"email": "a@example.com", "vars": {"quote": 'say "hi", [ok] {yes}', "n": [1, {"x": []}]}},
    {"email": "b@example.com", "vars": {"slash": "back\\slash\\", "esc": '\\"]}'}},
    {"email": "c@example.com", "vars": {"unicode": "żółć ☃ \u2028", "empty": ""}},
    {"email": "d@example.com"},
]


def feed_in_pieces(
    splitter: NdjsonSplitter | JsonArraySplitter, data: bytes, seed: int
) -> list[Document]:
    """Feed ``data`` cut at random places (a cut can fall anywhere, even in an escape)."""
    rng = random.Random(seed)
    out: list[Document] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        out += splitter.feed(data[pos : pos + step])
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
        (b'[{"email": "a@example.com"}', "ends early"),
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
    array = JsonArraySplitter(max_document=100)
    with pytest.raises(StreamFormatError, match="longer than"):
        array.feed(b'[{"email": "' + b"x" * 2000)


def test_the_format_is_told_by_the_first_byte() -> None:
    assert isinstance(splitter_for(b"  \n ["), JsonArraySplitter)
    assert isinstance(splitter_for(b'{"email"'), NdjsonSplitter)
