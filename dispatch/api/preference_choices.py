"""``/v1/preferences/{email}``: an address's category choices, read and set by the
operator or by a custom preference center (the system center's page sets them by token).

The same choices as the page: a category switched off is not sent to (checked when each
chunk of a batch is claimed); unsubscribing from everything is the suppression list's
(``/v1/suppressions``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dispatch import preferences, store, suppressions
from dispatch.api.auth import require_token
from dispatch.api.errors import ERROR_RESPONSES, InvalidFieldError
from dispatch.api.json_bodies import StrictJsonRoute
from dispatch.api.schemas import PreferencesRequest, PreferencesView, SuppressionEntry
from dispatch.api.suppressions import Email, sendable
from dispatch.suppressions import suppression_key

router = APIRouter(
    prefix="/v1/preferences",
    tags=["preferences"],
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    route_class=StrictJsonRoute,
)


def _view(address: str) -> PreferencesView:
    r = store.sync_client()
    entry = suppressions.get(address, client=r)
    return PreferencesView(
        email=suppression_key(address),
        suppression=SuppressionEntry.model_validate(entry) if entry is not None else None,
        categories=preferences.categories(r),
        opted_out=sorted(preferences.opted_out(address, r)),
    )


@router.get("/{email:address}", response_model=PreferencesView, summary="Read an address's choices")
def get_preferences(email: Email) -> PreferencesView:
    """The categories ``email`` switched off, every category, and its suppression entry if
    any (an address never seen has none switched off). 422 naming ``email`` when it is
    not an address."""
    return _view(sendable(email))


@router.put("/{email:address}", response_model=PreferencesView, summary="Set an address's choices")
def put_preferences(email: Email, body: PreferencesRequest) -> PreferencesView:
    """Switch off exactly ``opted_out`` for ``email``, every other category on (a
    re-subscribe is a PUT without it), as the preference center's page saves them.
    422 naming ``opted_out`` for a name no campaign was sent in, ``email`` when it is not
    an address. The suppression list is not changed."""
    address = sendable(email)
    known = preferences.categories()
    unknown = sorted(set(body.opted_out) - set(known))
    if unknown:
        raise InvalidFieldError(
            f"not a category any campaign was sent in: {', '.join(map(repr, unknown))} "
            f"(the categories: {', '.join(map(repr, known)) or 'none yet'})",
            "opted_out",
        )
    # Only the categories checked: one first sent in meanwhile is left as it is (on).
    preferences.set_choices(address, set(known) - set(body.opted_out), shown=set(known))
    return _view(address)
