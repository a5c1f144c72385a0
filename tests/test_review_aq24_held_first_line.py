"""Review AQ24: the first line of a body, held until it tells NDJSON from a JSON array,
is split a piece at a time with turns of the event loop between, as the rest is. A body
"[1,1,1,..." (4 MB, two million bad items) held its first MiB (``max_document``) and then
split it in one step: /healthz and the callbacks waited some two seconds. A one-line
array under 1 MiB was split in one step at its end, and a first line that ended was read
once more in one step to tell whether its array ended on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatch.api.streamed_bodies import BYTES_PER_TURN, read_documents
from dispatch.recipient_stream import Document, JsonArraySplitter, NdjsonSplitter, RecipientSplitter

ITEMS = 64 * 1024  # "1," each: 128 KiB, 32 pieces


def _split_per_turn(
    monkeypatch: pytest.MonkeyPatch, body: bytes, max_document: int
) -> tuple[list[Document], int]:
    """The documents read from ``body`` (one chunk, already arrived), and the most bytes
    split between two turns of another task on the loop."""
    turns = 0
    split: dict[int, int] = {}  # turn -> bytes split during it

    def counting(cls: Any) -> None:
        feed = cls.feed

        def counted_feed(self: Any, data: bytes) -> list[Document]:
            split[turns] = split.get(turns, 0) + len(data)
            return feed(self, data)  # type: ignore[no-any-return]

        monkeypatch.setattr(cls, "feed", counted_feed)

    counting(JsonArraySplitter)
    counting(NdjsonSplitter)
    documents: list[Document] = []

    async def take(docs: list[Document]) -> None:
        documents.extend(docs)

    async def one_chunk() -> AsyncIterator[bytes]:
        yield body

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def turn() -> None:  # once a turn of the loop, as long as the body is read
            nonlocal turns
            turns += 1
            handle[0] = loop.call_soon(turn)

        handle = [loop.call_soon(turn)]
        await read_documents(one_chunk(), RecipientSplitter(max_document), take)
        handle[0].cancel()

    asyncio.run(main())
    return documents, max(split.values())


def test_a_one_line_array_is_split_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"[" + b",".join([b"1"] * ITEMS) + b"]"  # held to its end: no newline
    documents, most = _split_per_turn(monkeypatch, body, 1 << 20)
    assert [d.position for d in documents] == list(range(ITEMS))
    assert {d.raw for d in documents} == {b"1"}
    assert most <= BYTES_PER_TURN  # (it was the whole body, 128 KiB, at its end)


def test_a_first_line_longer_than_a_document_is_split_a_piece_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = b"[" + b",".join([b"1"] * ITEMS) + b"]\n"
    documents, most = _split_per_turn(monkeypatch, body, 16 * 1024)  # an array past that
    assert len(documents) == ITEMS and documents[-1].position == ITEMS - 1
    assert most <= BYTES_PER_TURN  # (it was all the first line held, past 16 KiB, at once)


def test_a_first_line_that_ends_is_not_read_again_in_one_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An array that ends on its first line, more lines after: NDJSON, the array its bad
    first line (the probe that told it read the whole line again at its end)."""
    body = b"[" + b",".join([b"1"] * ITEMS) + b"]\n" + b"2\n" * 100
    documents, most = _split_per_turn(monkeypatch, body, 1 << 20)
    assert [d.position for d in documents] == list(range(1, 102))
    assert [d.raw for d in documents[1:]] == [b"2"] * 100
    assert most <= BYTES_PER_TURN  # (it was the first line, 128 KiB)
