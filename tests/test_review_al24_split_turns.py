"""Review AL24: a streamed body is split a piece at a time, with turns of the event loop
between. A chunk that had arrived (some 300 KiB from a fast client) was split in one
step: a body all brackets ("[[[[", about 1.7 µs a byte to split) held the event loop
half a second a chunk, and /healthz and the callbacks two seconds (found by fuzzing
the append over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dispatch.api.streamed_bodies import BYTES_PER_TURN, read_documents
from dispatch.recipient_stream import Document, RecipientSplitter


def test_one_large_chunk_of_brackets_gives_the_event_loop_turns() -> None:
    depth = 8 * BYTES_PER_TURN
    body = b"[" + b"[" * depth + b"]" * depth + b"]"  # one element, nested 128 Ki deep
    documents: list[Document] = []

    async def take(docs: list[Document]) -> None:
        documents.extend(docs)

    async def one_chunk() -> AsyncIterator[bytes]:
        yield body

    async def main() -> int:
        turns = 0
        reading = True

        async def other_request() -> None:
            nonlocal turns
            while reading:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_request())
        await asyncio.sleep(0)
        before = turns
        await read_documents(one_chunk(), RecipientSplitter(max_document=4 * depth), take)
        reading = False
        await other
        return turns - before

    turns = asyncio.run(main())
    assert [doc.position for doc in documents] == [0] and documents[0].problem == ""
    assert turns >= len(body) // BYTES_PER_TURN  # (it was 0: one step for the chunk)
