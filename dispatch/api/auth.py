"""Bearer-token authentication for /v1 (callbacks, /u/ and /preferences/ are exempt)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

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

    With no tokens configured the API is open: meant for local use only (`dispatch up`),
    so only to local clients (:func:`check_local`).
    """
    check_token(request.headers)


def check_token(headers: Headers) -> None:
    """:func:`require_token`'s check of a request's headers (401 ``HTTPException``; 403
    from :func:`check_local` when no tokens are configured)."""
    tokens = get_settings().api_tokens
    if not tokens:
        check_local(headers)
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


class ForeignRequestError(HTTPException):
    """A request an open API does not take from where it came (403); ``field`` names
    the header that says so (``host`` or ``origin``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(status.HTTP_403_FORBIDDEN, message)
        self.field = field


def _host_name(authority: str) -> str | None:
    """The host of a ``Host`` header or an origin's ``host[:port]``, lower case, without
    the trailing dot of a fully qualified name (``localhost.`` is ``localhost``, RFC 1034
    §3.1), None when it is not one."""
    try:
        host = urlsplit(f"//{authority}").hostname
    except ValueError:  # an unbalanced "[" or "]"
        return None
    return None if host is None else host.removesuffix(".")


def _local_name(host: str) -> bool:
    """A host a page from another site cannot be served under: an IP address (its
    pages would be this server's own) or a ``localhost`` name (browsers resolve it to
    loopback themselves, RFC 6761 §6.3), or the host of DISPATCH_PUBLIC_URL."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return True
    return host == _host_name(urlsplit(get_settings().public_url).netloc)


def check_local(headers: Headers) -> None:
    """Refuse (403) what a web page of another site makes a browser send to an open API.

    Without tokens nothing tells a local client from a browser's request that a page
    made: a page from another site could post to ``http://127.0.0.1:8000/v1/...`` (a
    cancel needs no body, so no preflight), and through DNS rebinding (its own name made
    to resolve to 127.0.0.1) read and change everything, as its same origin. So the
    ``Host`` must be an address, a ``localhost`` name or the public URL's host, and an
    ``Origin`` (which browsers send with every such post) this API's own.
    """
    authority = headers.get("host", "").lower()
    host = _host_name(authority)
    if authority and (host is None or not _local_name(host)):
        raise ForeignRequestError(
            f"{authority!r} is not this API's: without DISPATCH_API_TOKENS it answers "
            "only to an IP address, localhost or DISPATCH_PUBLIC_URL's host",
            "host",
        )
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.lower())
        if parts.scheme not in ("http", "https") or parts.netloc != authority:
            raise ForeignRequestError(
                f"a request from a web page of {origin!r}: without DISPATCH_API_TOKENS "
                "only this API's own pages may call it",
                "origin",
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
