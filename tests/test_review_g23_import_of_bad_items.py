"""A streamed body whose items are all refused (a former ESP's export written as a JSON
array of bare strings, 500,000 of them): the API process's event loop still turns while
it is read, and the import does not hold every refused item until the body ends."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import orjson
import redis

from dispatch.api.streamed_bodies import read_documents
from dispatch.api.suppressions import _import
from dispatch.recipient_stream import Document, RecipientSplitter

BAD_ITEMS = 20_000


def _already_arrived(body: bytes) -> AsyncIterator[bytes]:
    """The body in 256 KiB chunks (what uvicorn hands on), none of them waited for."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 18):
            yield body[start : start + (1 << 18)]

    return chunks()


def test_the_event_loop_turns_while_a_body_of_refused_items_is_read() -> None:
    """/healthz and the callbacks run on the loop that reads the body: another task runs
    before the last of 5,000 documents is handed on, though none of them made the reader
    wait (it ran only once the whole body was read: 12 s for 500,000 bad recipients)."""
    body = orjson.dumps([f"user{i}@example.com" for i in range(5000)])
    taken = 0
    seen: list[int] = []

    async def take(docs: list[Document]) -> None:
        nonlocal taken
        taken += len(docs)  # refused at once: no wait

    async def other() -> None:
        seen.append(taken)

    async def scenario() -> None:
        task = asyncio.create_task(other())
        await read_documents(_already_arrived(body), RecipientSplitter(), take)
        await task

    asyncio.run(scenario())
    assert taken == 5000
    assert seen and seen[0] < 5000


def test_an_import_of_bad_items_only_holds_none_of_them_till_the_end(
    redis_client: redis.Redis,
) -> None:
    """The refused items were kept (line, field, message) until 1,000 good ones came, so
    a body of bad ones only held all of them: 100 MB more for 500,000. Now they are
    counted every 1,000 items whatever they are; the answer is unchanged."""
    body = orjson.dumps([f"user{i}@example.com" for i in range(BAD_ITEMS)])
    blocks: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        half = body.index(b",", len(body) // 2) + 1
        async for chunk in _already_arrived(body[:half]):
            yield chunk
        blocks.append(sys.getallocatedblocks())  # half the items read
        async for chunk in _already_arrived(body[half:]):
            yield chunk
        blocks.append(sys.getallocatedblocks())  # all read

    result = asyncio.run(_import(chunks(), "manual", "api"))

    assert (result.added, result.invalid, result.errors_truncated) == (0, BAD_ITEMS, True)
    assert [e.index for e in result.errors] == list(range(1000))
    assert result.errors[0].message == "must be a JSON object, not a string"
    # Each item held is a tuple and a message at least: 20,000 blocks for half of them.
    assert blocks[1] - blocks[0] < BAD_ITEMS // 4
