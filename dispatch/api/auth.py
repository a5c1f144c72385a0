"""Bearer-token authentication for /v1 (callbacks, /u/ and /preferences/ are exempt)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
    tokens = get_settings().api_tokens
    if not tokens:
        return
    header = request.headers.get("authorization", "")
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
