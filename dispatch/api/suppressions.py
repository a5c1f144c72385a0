"""``/v1/suppressions``: the addresses never sent to again, with reason and source (DESIGN §6);
a bulk import of them, streamed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, ValidationError
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import ClientDisconnect

from dispatch import suppressions
from dispatch.api.auth import require_token
from dispatch.api.body_limits import STREAMED
from dispatch.api.errors import (
    ERROR_RESPONSES,
    NOT_FOUND,
    InvalidFieldError,
    NotFoundError,
)
from dispatch.api.json_bodies import StrictJsonRoute
from dispatch.api.schemas import (
    SuppressionEntry,
    SuppressionImportItem,
    SuppressionImportResult,
    SuppressionPage,
    SuppressionRequest,
    not_blank,
)
from dispatch.api.streamed_bodies import (
    MAX_REPORTED_PROBLEMS,
    decoded_body,
    listed,
    located_problem,
    read_documents,
    refuse_form_upload,
)
from dispatch.campaign_checks import load_recipient, validation_problems
from dispatch.campaign_errors import CampaignError
from dispatch.preferences import own_unsubscribe
from dispatch.recipient_stream import Document, RecipientSplitter, StreamFormatError
from providers.addresses import InvalidAddressError, normalize_address

log = logging.getLogger(__name__)

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
# One item of an import: an address (320 characters) and a reason (200), or an entry as
# the list gives it (its detail up to 500 characters, its meta), each character written
# at most as a 6-byte escape, fit; a longer line is a mistake, refused alone.
MAX_ITEM_BYTES = 16384
Reason = Annotated[
    str, Query(min_length=1, max_length=suppressions.MAX_REASON), AfterValidator(not_blank)
]
Filter = Annotated[
    str | None,
    Query(min_length=1, max_length=suppressions.MAX_REASON, description="Exact match"),
]


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
    reason: Filter = None,
    source: Filter = None,
) -> SuppressionPage:
    """One page of the list, in no particular order (a scan of the list: an entry added or
    removed meanwhile may or may not show); go on while ``next_cursor`` is not null.
    ``reason`` and ``source`` keep the entries whose reason or source is exactly that,
    among the about ``limit`` one step of the scan reads: a filtered page may be short,
    or empty, and still have a ``next_cursor``."""
    if int(cursor) > MAX_SCAN_CURSOR:  # Redis refuses it: not one of its cursors
        raise InvalidFieldError(f"not a cursor this list gave: {cursor}", "cursor")
    next_cursor, items = suppressions.page(int(cursor), limit, reason=reason, source=source)
    return SuppressionPage(
        items=[SuppressionEntry.model_validate(i) for i in items],
        next_cursor=str(next_cursor) if next_cursor else None,
    )


_IMPORT_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        'Addresses as NDJSON (one `{"email": ..., "reason": ...}` object per line; '
        "`reason` optional, else the request's `reason`) or as one JSON array of them. "
        f"The body is streamed: any size, each item at most {MAX_ITEM_BYTES} bytes. It "
        "may be sent compressed (`Content-Encoding: gzip` or `deflate`); not as a "
        "multipart form."
    ),
    "content": {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/json": {
            "schema": {"type": "array", "items": SuppressionImportItem.model_json_schema()}
        },
    },
}


@router.post(
    "",
    max_body_size=STREAMED,
    response_model=SuppressionImportResult,
    openapi_extra={"requestBody": _IMPORT_BODY},
    summary="Import addresses (NDJSON or JSON array, streamed)",
)
async def import_suppressions(
    request: Request,
    reason: Annotated[Reason, Query(description="The reason of items that give none")] = "manual",
    source: Annotated[Reason, Query(description="Every entry's source")] = "api",
) -> SuppressionImportResult | Response:
    """Suppress every address of the body, read as it arrives, 1,000 to a Redis round
    trip: the same import as ``dispatch suppressions add --file``. Compared caselessly
    (IDNA domains); an existing entry keeps its first reason, but the person's own
    unsubscribe, which this entry replaces (counted ``already_suppressed``, as ``PUT``
    answers it 200). Each bad item (no address a campaign could send to, a blank or long
    reason, not a JSON object) is counted ``invalid`` and the first 1,000 are listed with
    their NDJSON ``line`` (1-based) or array ``index`` (0-based) and field; its neighbours
    are added all the same. A body that breaks off keeps the items before the break (422
    naming it, with the bad ones before it)."""
    refuse_form_upload(request, "the addresses")
    try:
        return await _import(decoded_body(request), reason, source)
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)  # nobody reads it


async def _import(
    chunks: AsyncIterator[bytes], reason: str, source: str
) -> SuppressionImportResult:
    """Split, check and add the streamed items in batches of :data:`suppressions.CHUNK`.

    Raises :class:`InvalidFieldError` (field ``body``) for a body that is not NDJSON or a
    JSON array; what came before the fault stays added (and is named in the error).
    """
    result = SuppressionImportResult()
    splitter = RecipientSplitter(MAX_ITEM_BYTES)
    batch: list[tuple[str, str, str]] = []
    positions: list[int] = []  # the line or index of each item of the batch
    # (position, field, message) of the bad items since the last flush: listed in order,
    # and counted in the flush's CHUNK (a body of bad items only is never held whole).
    refused: list[tuple[int, str, str]] = []

    def invalid(at: int, email: str, exc: InvalidAddressError) -> None:
        refused.append((positions[at - 1], "email", str(exc)))

    async def flush() -> None:
        if batch:
            added, already = await run_in_threadpool(
                suppressions.add_many, batch, reason=reason, source=source, invalid=invalid
            )
            result.added += added
            result.already_suppressed += already
        for position, field, message in sorted(refused):
            result.invalid += 1
            if len(result.errors) >= MAX_REPORTED_PROBLEMS:
                result.errors_truncated = True
            else:
                result.errors.append(located_problem(splitter.format, position, field, message))
        batch.clear()
        positions.clear()
        refused.clear()

    async def take(docs: list[Document]) -> None:
        for doc in docs:
            item = _item(doc.raw) if not doc.problem else ("body", doc.problem)
            if isinstance(item, tuple):
                refused.append((doc.position, *item))
            else:
                batch.append(_entered(item, reason, source))
                positions.append(doc.position)
            if len(batch) + len(refused) >= suppressions.CHUNK:
                await flush()

    try:
        await read_documents(chunks, splitter, take)
        await flush()
    except ClientDisconnect:
        await flush()  # the whole items read are kept, as after a broken body
        log.warning(
            "suppression import: the client went away mid-body; %d addresses added",
            result.added,
        )
        raise
    except StreamFormatError as exc:
        await take(exc.documents)  # those completed before the fault are kept
        await flush()
        message = (
            f"{exc}; the {result.added} new addresses before it were added, "
            f"{result.already_suppressed} were already suppressed (send the rest again)"
        )
        if result.invalid:
            more = ", the first listed" if result.errors_truncated else ""
            message += f"; {result.invalid} invalid before it (in errors{more})"
        problems = [("body", message), *listed(result.errors)]
        raise InvalidFieldError(message, "body", problems) from None
    return result


def _entered(item: SuppressionImportItem, reason: str, source: str) -> tuple[str, str, str]:
    """``(address, reason, source)`` of an import's item: the request's source, but an
    exported person's own unsubscribe keeps its own (an operator's source in its place
    would take from the person the "Subscribe again" of the preference center, and a
    list exported and imported again on the same deployment replaced every such entry)."""
    listed = {"reason": item.reason, "source": item.source}
    return item.email, item.reason or reason, item.source if own_unsubscribe(listed) else source


def _item(raw: bytes) -> SuppressionImportItem | tuple[str, str]:
    """One item of an import, or what is wrong with it: ``(field, message)``."""
    try:
        return SuppressionImportItem.model_validate(load_recipient(raw))
    except orjson.JSONDecodeError as exc:
        return "body", f"not valid JSON: {exc}"
    except CampaignError as exc:  # not UTF-8, a number beyond 64 bits, too deep
        return exc.field or "body", str(exc)
    except ValidationError as exc:
        problems = validation_problems(exc.errors())
        field, message = problems[0]
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more)"
        return field, message


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
