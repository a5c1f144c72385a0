"""``/v1/unsubscribe-tokens``: what a recipient's token names, for custom preference centers.

A token in a message's links is opaque (sealed, :mod:`dispatch.unsubscribe`): a custom
center (``preference_center: custom``) gets it in its URL's ``token`` query parameter and
asks here whose it is. To unsubscribe it, the center posts to ``/u/<token>`` as a mail
client does (RFC 8058 one-click).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from dispatch import preferences, store, suppressions
from dispatch.api.auth import TokenFirstRoute, require_token
from dispatch.api.errors import ERROR_RESPONSES, NOT_FOUND, NotFoundError
from dispatch.api.schemas import SuppressionEntry, UnsubscribeTokenView
from dispatch.unsubscribe import InvalidTokenError, read_token

router = APIRouter(
    prefix="/v1/unsubscribe-tokens",
    tags=["unsubscribe tokens"],
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    route_class=TokenFirstRoute,
)
Token = Annotated[str, Path(max_length=4096, description="The `token` a custom center got")]


@router.get(
    "/{token}",
    response_model=UnsubscribeTokenView,
    responses=NOT_FOUND,
    summary="Resolve a recipient's unsubscribe token",
)
def resolve_unsubscribe_token(token: Token) -> UnsubscribeTokenView:
    """The address, campaign and category a token names, whether the address is
    suppressed and which categories it opted out of. 404 naming ``token`` when it is not
    one this service issued (cut short, altered, or made with another key)."""
    try:
        parsed = read_token(token)
    except InvalidTokenError:
        raise NotFoundError(
            "not a token this service issued (cut short, altered, or made with another "
            "DISPATCH_SECRET_KEY)",
            "token",
        ) from None
    r = store.sync_client()
    entry = suppressions.get(parsed.email, client=r)
    return UnsubscribeTokenView(
        email=parsed.email,
        campaign_id=parsed.campaign_id,
        seq=parsed.seq,
        category=parsed.category,
        suppression=SuppressionEntry.model_validate(entry) if entry is not None else None,
        categories=preferences.categories(r),
        opted_out=sorted(preferences.opted_out(parsed.email, r)),
    )
