"""The incremental NDJSON / JSON-array splitters behind the streamed recipient append."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis

from dispatch.recipient_stream import (
    Document,
    JsonArraySplitter,
    NdjsonSplitter,
    RecipientSplitter,
    StreamFormatError,
    splitter_for,
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
    splitter: NdjsonSplitter | JsonArraySplitter | RecipientSplitter, data: bytes, seed: int
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
    assert splitter_for(b"  \n [").format == "array"
    assert splitter_for(b'{"email"').format == "ndjson"
    assert splitter_for(BOM + b"[").format == "array"


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
