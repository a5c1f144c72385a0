"""Bodies read as they arrive (NDJSON or one JSON array): the recipient append and the
suppression import take theirs the same way, and name a bad document the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request

from dispatch.api.errors import InvalidFieldError
from dispatch.api.schemas import AppendProblem
from dispatch.recipient_stream import (
    ENCODINGS,
    BodyDecoder,
    Document,
    EmptyBodyError,
    Format,
    RecipientSplitter,
)

MAX_REPORTED_PROBLEMS = 1000  # a streamed body's answer lists this many bad documents
# Documents handed on between two turns of the event loop (see read_documents).
DOCUMENTS_PER_TURN = 1000
# Bytes split between two turns: a body all brackets or commas ("[[[[", "[1,1,1") is
# split at about 1.7 µs a byte, and a chunk that had arrived (up to some 300 KiB) held
# the event loop half a second, /healthz two seconds (it needs a few turns); 4 KiB is
# some 7 ms (16 KiB of "1,1", with its 8,192 documents, was 25 ms).
BYTES_PER_TURN = 4 * 1024


def refuse_form_upload(request: Request, what: str) -> None:
    """Raises :class:`InvalidFieldError` (field ``content-type``) for a multipart form:
    ``what`` (``the recipients``) is sent as the body itself."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media.startswith("multipart/"):
        raise InvalidFieldError(
            f"{media} is a form upload: send {what} as the body itself (NDJSON, or a JSON array)",
            "content-type",
        )


def decoded_body(request: Request) -> AsyncIterator[bytes]:
    """The body as it arrives, inflated if it is sent gzip or deflate compressed.

    Raises :class:`InvalidFieldError` (field ``content-encoding``) for another encoding;
    the iterator raises :class:`StreamFormatError` for a body not in its encoding.
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return request.stream()
    if encoding not in ENCODINGS:
        raise InvalidFieldError(
            f"{encoding!r} is not supported: send the body as it is, or gzip or deflate compressed",
            "content-encoding",
        )

    async def inflated() -> AsyncIterator[bytes]:
        decoder = BodyDecoder(encoding)
        async for chunk in request.stream():
            for piece in decoder.feed(chunk):
                yield piece
        decoder.finish()

    return inflated()


async def read_documents(
    chunks: AsyncIterator[bytes],
    splitter: RecipientSplitter,
    take: Callable[[list[Document]], Awaitable[None]],
) -> None:
    """Split the body's ``chunks`` and hand ``take`` the documents as they complete,
    :data:`DOCUMENTS_PER_TURN` at a time with a turn of the event loop between. A chunk
    that had arrived is read without waiting (256 KiB, or many inflated pieces of a
    gzip body), and ``take`` need not wait either (it refuses a bad document at once):
    /healthz and the callbacks waited for 500,000 bad items to be read, 12 s. A chunk is
    split :data:`BYTES_PER_TURN` at a time, with a turn between, for the same reason; so
    is the first line the splitter held until it told the format (up to 1 MiB of "[1,1":
    it was split in one step, and held the loop two seconds).

    Raises :class:`InvalidFieldError` (field ``body``) for an empty body, and
    :class:`StreamFormatError` (with the documents completed before the fault) for one
    that is not NDJSON or a JSON array.
    """

    async def hand_on(docs: list[Document]) -> None:
        for start in range(0, len(docs), DOCUMENTS_PER_TURN):
            await take(docs[start : start + DOCUMENTS_PER_TURN])
            await asyncio.sleep(0)

    try:
        async for chunk in chunks:
            for docs in splitter.split(chunk, BYTES_PER_TURN):
                await hand_on(docs)
                await asyncio.sleep(0)
        for docs in splitter.split_end(BYTES_PER_TURN):
            await hand_on(docs)
            await asyncio.sleep(0)
    except EmptyBodyError:
        raise InvalidFieldError("empty: send NDJSON or a JSON array", "body") from None


def located_problem(body_format: Format, position: int, field: str, message: str) -> AppendProblem:
    """A bad document, named by its NDJSON ``line`` or its array ``index``."""
    where = {"index": position} if body_format == "array" else {"line": position}
    return AppendProblem(field=field, message=message, **where)


def listed(problems: list[AppendProblem]) -> list[tuple[str, str]]:
    """Bad documents as an error body lists them: the field, and the message led by the
    position (``line 3: ...`` or ``index 2: ...``)."""
    return [
        (
            p.field,
            f"line {p.line}: {p.message}" if p.index is None else f"index {p.index}: {p.message}",
        )
        for p in problems
    ]
