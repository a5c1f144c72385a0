"""Bearer-token authentication for /v1 (callbacks, /u/ and /preferences/ are exempt)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

from dispatch.settings import get_settings


def require_token(request: Request) -> None:
    """Refuse the request with 401 unless it carries one of DISPATCH_API_TOKENS.

    With no tokens configured the API is open: meant for local use only (`dispatch up`).
    """
    tokens = get_settings().api_tokens
    if not tokens:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and any(hmac.compare_digest(token, t) for t in tokens):
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )
