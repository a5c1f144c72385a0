"""How large a request body may be (FastAPI's ``max_body_size``: 413 beyond it).

Bodies are read whole (and parsed) unless a route streams them, so this bounds the memory
one request can take. Routes that stream their body set ``STREAMED``: the recipient
append keeps memory bounded whatever the size, and callbacks cut a body off at 8 MB
themselves (answered in their provider's shape, DESIGN §6).
"""

from __future__ import annotations

import sys

from starlette.requests import Request

MAX_API_BODY_BYTES = 64 * 1024 * 1024
STREAMED = sys.maxsize


class BodyTooLargeError(Exception):
    """A body over the limit its route reads it with (:func:`read_bounded`)."""


async def read_bounded(request: Request, limit: int) -> bytes:
    """The raw body; raises :class:`BodyTooLargeError` past ``limit`` bytes, judged by the
    declared length first and then while reading (never more than ``limit`` in memory)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)
