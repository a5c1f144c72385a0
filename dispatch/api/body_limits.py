"""How large a request body may be (FastAPI's ``max_body_size``: 413 beyond it).

Bodies are read whole (and parsed) unless a route streams them, so this bounds the memory
one request can take. Routes that stream their body set ``STREAMED``: the recipient
append keeps memory bounded whatever the size, and callbacks cut a body off at 8 MB
themselves (answered in their provider's shape, DESIGN §6). Workers refuse a task's
body over the same size (``celery_app.MAX_TASK_BODY_BYTES``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the worker reads MAX_API_BODY_BYTES without loading Starlette)
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class JsonBodyTooLarge:
    """ASGI wrapper: the 413 Starlette answers by itself, in plain text, when a request's
    ``Content-Length`` is over its route's limit (before any handler runs) becomes the
    API's JSON error like every other (``{"detail", "field", "errors"}``), as the same
    413 found while reading the body already is. Other answers pass untouched."""

    def __init__(self, app: ASGIApp, json_error: ASGIApp) -> None:
        self.app = app
        self.json_error = json_error  # the JSON answer to send instead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_json_instead(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                types = [v for k, v in message.get("headers", ()) if k == b"content-type"]
                replaced = bool(types) and types[0].startswith(b"text/plain")
                if replaced:
                    await self.json_error(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        await self.app(scope, receive, send_json_instead)
