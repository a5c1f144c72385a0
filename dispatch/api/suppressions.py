"""``/v1/suppressions``: the addresses never sent to again, with reason and source (DESIGN §6)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status
from starlette.convertors import PathConvertor, register_url_convertor

from dispatch import suppressions
from dispatch.api.auth import require_token
from dispatch.api.errors import (
    ERROR_RESPONSES,
    NOT_FOUND,
    InvalidFieldError,
    NotFoundError,
)
from dispatch.api.json_bodies import StrictJsonRoute
from dispatch.api.schemas import SuppressionEntry, SuppressionPage, SuppressionRequest
from providers.addresses import InvalidAddressError, normalize_address

router = APIRouter(
    prefix="/v1/suppressions",
    tags=["suppressions"],
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    route_class=StrictJsonRoute,
)


class _AddressConvertor(PathConvertor):
    """The rest of the path, ``/`` and line breaks included: an address may hold a ``/``
    (``a/b@example.com`` is one campaigns send to), which a client sends as %2F and the
    router sees decoded; a line break must reach the check that refuses it (422), not
    miss the route (404)."""

    regex = "(?s:.+)"


register_url_convertor("address", _AddressConvertor())
Email = Annotated[str, Path(min_length=3, max_length=320, description="The address")]
MAX_PAGE = 1000
MAX_SCAN_CURSOR = 2**64 - 1  # HSCAN's cursors are unsigned 64-bit


def sendable(email: str) -> str:
    """``email`` normalised (as campaigns send to it); 422 naming ``email`` when it is no
    address a campaign could send to."""
    try:
        return normalize_address(email)
    except InvalidAddressError as exc:
        raise InvalidFieldError(str(exc), "email") from None


@router.get("", response_model=SuppressionPage, summary="List suppressed addresses")
def list_suppressions(
    cursor: Annotated[str, Query(pattern=r"^\d{1,20}$", description="From `next_cursor`")] = "0",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> SuppressionPage:
    """One page of the list, in no particular order (a scan of the list: an entry added or
    removed meanwhile may or may not show); go on while ``next_cursor`` is not null."""
    if int(cursor) > MAX_SCAN_CURSOR:  # Redis refuses it: not one of its cursors
        raise InvalidFieldError(f"not a cursor this list gave: {cursor}", "cursor")
    next_cursor, items = suppressions.page(int(cursor), limit)
    return SuppressionPage(
        items=[SuppressionEntry.model_validate(i) for i in items],
        next_cursor=str(next_cursor) if next_cursor else None,
    )


def _entry(email: str) -> SuppressionEntry:
    entry = suppressions.get(email)
    if entry is None:
        raise NotFoundError(f"{email!r} is not suppressed", "email")
    return SuppressionEntry.model_validate(entry)


@router.get(
    "/{email:address}",
    response_model=SuppressionEntry,
    responses=NOT_FOUND,
    summary="Read one entry",
)
def get_suppression(email: Email) -> SuppressionEntry:
    """Why and since when ``email`` is suppressed (compared caselessly)."""
    return _entry(email)


@router.put(
    "/{email:address}",
    response_model=SuppressionEntry,
    responses={201: {"model": SuppressionEntry, "description": "Created"}},
    summary="Suppress an address",
)
def put_suppression(
    email: Email,
    response: Response,
    # Optional, with its defaults: no body is {"reason": "manual", "source": "api"}.
    body: Annotated[SuppressionRequest, Body(default_factory=SuppressionRequest)],
) -> SuppressionEntry:
    """Suppress ``email``: 201 when new. An existing entry is kept as it is (200): its first
    reason, often a bounce or complaint, is the evidence worth keeping; but the person's
    own unsubscribe, which they could lift, is replaced by this one (200, the new entry).
    422 naming ``email`` when it is not an address a campaign could send to."""
    entry, created = suppressions.put(sendable(email), body.reason, body.source)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return SuppressionEntry.model_validate(entry)


@router.delete(
    "/{email:address}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Remove an address from the list",
)
def delete_suppression(email: Email) -> Response:
    """Send to ``email`` again (campaigns started later, and messages not sent yet)."""
    if not suppressions.remove(email):
        raise NotFoundError(f"{email!r} is not suppressed", "email")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
