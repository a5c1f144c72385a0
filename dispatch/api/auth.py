"""Bearer-token authentication for /v1 (callbacks, /u/ and /preferences/ are exempt)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Request, Response, Security, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from dispatch.settings import get_settings

# Declared as a security scheme so that the OpenAPI document says which routes need the
# token (a generated client sends it); require_token reads the header itself.
_BEARER = HTTPBearer(
    auto_error=False,
    description="One of `DISPATCH_API_TOKENS`, as `Authorization: Bearer <token>`",
)


def require_token(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> None:
    """Refuse the request with 401 unless it carries one of DISPATCH_API_TOKENS.

    With no tokens configured the API is open: meant for local use only (`dispatch up`).
    """
    check_token(request.headers)


def check_token(headers: Headers) -> None:
    """:func:`require_token`'s check of a request's headers (401 ``HTTPException``)."""
    tokens = get_settings().api_tokens
    if not tokens:
        return
    header = headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Compared as bytes: hmac.compare_digest refuses str with non-ASCII characters (a
    # TypeError, so a 500 for any client sending one); Starlette decodes headers as
    # Latin-1, so encoding back gives the bytes sent. Every token is compared, whichever
    # matches, so the time taken does not tell which one did.
    sent = token.encode("latin-1")
    matched = False
    for expected in tokens:
        matched |= hmac.compare_digest(sent, expected.encode())
    if scheme.lower() == "bearer" and matched:
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


class TokenFirstRoute(APIRoute):
    """A route that depends on :func:`require_token` checks the token before anything else.

    FastAPI reads a request's body, and parses it, before it solves the dependencies: a
    caller with no token made the API take a body of up to the app's limit (64 MB) and
    parse it before it answered 401 (a 60 MB JSON array: 370 MB more memory and 2 s of
    CPU for each such request). Now the 401 comes before any of the body is read.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not any(d.dependency is require_token for d in self.dependencies):
            return handler

        async def token_first(request: Request) -> Response:
            check_token(request.headers)
            return await handler(request)

        return token_first
