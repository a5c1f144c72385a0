"""JSON request bodies read as RFC 8259 JSON: no ``NaN``, no ``Infinity``, no overflow.

Python's ``json`` (which FastAPI reads bodies with) takes the tokens ``NaN``,
``Infinity`` and ``-Infinity``, which are not JSON, and reads a number too large for a
double (``1e400``) as infinity. None of them can be stored: orjson writes each as
``null``. A provider's ``rate_per_second`` or ``timeout`` saved that way could no longer
be read (every read of it, and the list of providers, answered 422), and a campaign's
vars changed without a word. The streamed recipient append (orjson) already refuses
them; the routes here do too, naming the field (422).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response, status
from starlette.exceptions import HTTPException

from dispatch.api.auth import TokenFirstRoute
from providers.config import NOT_FINITE_PROBLEM, find_not_finite


class BodyValueError(HTTPException):
    """A value of a JSON body that is no JSON value the service can keep (422)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(status.HTTP_422_UNPROCESSABLE_CONTENT, message)
        self.field = field


def parse_json_body(body: bytes) -> Any:
    """The parsed body; raises ``json.JSONDecodeError`` as ``json.loads`` does, and
    :class:`BodyValueError` naming the first value that is not a finite number."""
    seen_not_finite = False

    def constant(name: str) -> float:  # NaN, Infinity, -Infinity
        nonlocal seen_not_finite
        seen_not_finite = True
        return float(name)

    def number(text: str) -> float:
        nonlocal seen_not_finite
        value = float(text)
        seen_not_finite = seen_not_finite or math.isinf(value)
        return value

    data = json.loads(body, parse_constant=constant, parse_float=number)
    if seen_not_finite:  # only then is the document walked, to name the field
        field = find_not_finite(data, "") or "body"
        raise BodyValueError(NOT_FINITE_PROBLEM, field)
    return data


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class StrictJsonRoute(TokenFirstRoute):
    """A route whose JSON body is read with :func:`parse_json_body` (and whose bearer
    token is checked before it is read)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict_handler
