"""``/v1/campaigns``: create, append recipients (streamed), start, read, list, pause, resume,
cancel, retry-failed, per-message outcomes (DESIGN §5), and a test message."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from dispatch import (
    campaign_checks,
    campaign_reads,
    campaigns,
    lifecycle,
    message_pages,
    provider_store,
    recipient_append,
    store,
)
from dispatch.api.auth import require_token
from dispatch.api.body_limits import STREAMED
from dispatch.api.errors import (
    CONFLICT,
    ERROR_RESPONSES,
    GONE,
    NOT_FOUND,
    InvalidFieldError,
    invalid_campaign,
)
from dispatch.api.json_bodies import StrictJsonRoute
from dispatch.api.schemas import (
    AppendResult,
    CallbackCounter,
    CampaignPage,
    CampaignSummary,
    CampaignTestRequest,
    MessageOutcome,
    MessagePage,
    MessageStatus,
    RetryResult,
    TestEmailResult,
)
from dispatch.api.streamed_bodies import (
    MAX_REPORTED_PROBLEMS,
    decoded_body,
    listed,
    located_problem,
    read_documents,
    refuse_form_upload,
)
from dispatch.campaign_test import send_campaign_test, stored_recipient_at
from dispatch.models import (
    CAMPAIGN_ID_PATTERN,
    CampaignRequest,
    CampaignStatus,
    Recipient,
    campaign_request,
)
from dispatch.recipient_pages import stored_count
from dispatch.recipient_stream import (
    Document,
    RecipientSplitter,
    StreamFormatError,
)
from providers.addresses import InvalidAddressError, normalize_address

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/campaigns",
    tags=["campaigns"],
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    route_class=StrictJsonRoute,
)

CampaignId = Annotated[str, Path(pattern=CAMPAIGN_ID_PATTERN, description="The campaign's id")]
MAX_PAGE = 1000
_BOTH = {**NOT_FOUND, **CONFLICT}


def _summary(campaign_id: str) -> CampaignSummary:
    return CampaignSummary.model_validate(campaign_reads.campaign_summary(campaign_id))


def document_campaign_body(document: dict[str, Any]) -> dict[str, Any]:
    """Point ``create_campaign``'s body at the ``CampaignRequest`` schema, put in the
    document with the schemas it uses: the route reads a JSON object and checks it
    itself (FastAPI would check it on the event loop)."""
    _, defs = models_json_schema(
        [(CampaignRequest, "validation")], ref_template="#/components/schemas/{model}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    body = document["paths"]["/v1/campaigns"]["post"]["requestBody"]["content"]
    body["application/json"]["schema"] = {"$ref": "#/components/schemas/CampaignRequest"}
    return document


@router.post(
    "",
    response_model=CampaignSummary,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": CampaignSummary, "description": "Already created"},
        **CONFLICT,
    },
    summary="Create a campaign",
)
def create_campaign(
    body: Annotated[dict[str, Any], Body()], response: Response
) -> CampaignSummary | JSONResponse:
    """Store a campaign; with inline ``recipients`` and no ``"draft": true`` it starts at once
    (or waits for ``send_at``).

    Re-posting the same ``id`` with the same content changes nothing and answers 200; the
    same ``id`` with other content is 409. Unknown template variables or ``$$``
    placeholders are 422 naming them.
    """
    # Checked here, in a worker thread, not by FastAPI on the event loop: a long list
    # of bad recipients (300,000 with a misnamed key) held every other request,
    # callbacks and /healthz included, for 15 s.
    try:
        request = campaign_request(body)
    except ValidationError as exc:
        return invalid_campaign(body, exc)
    campaign_id, created = campaigns.create_campaign(request)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _summary(campaign_id)


@router.get("", response_model=CampaignPage, summary="List campaigns")
def list_campaigns(
    status_: Annotated[CampaignStatus | None, Query(alias="status")] = None,
    cursor: Annotated[str, Query(pattern=r"^\d{1,12}$", description="From `next_cursor`")] = "0",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> CampaignPage:
    """Campaigns, newest first. With ``status`` a page may be short: go on while
    ``next_cursor`` is not null."""
    items, next_cursor = campaign_reads.list_campaigns(
        cursor=int(cursor), limit=limit, status=status_
    )
    return CampaignPage(
        items=[CampaignSummary.model_validate(i) for i in items],
        next_cursor=None if next_cursor is None else str(next_cursor),
    )


@router.get(
    "/{campaign_id}", response_model=CampaignSummary, responses=NOT_FOUND, summary="Read one"
)
def get_campaign(campaign_id: CampaignId) -> CampaignSummary:
    """Status (``draft``, ``scheduled``, ``running``, ``paused``, ``completed``,
    ``cancelled``, ``expired``), the reason of a pause, and every counter."""
    return _summary(campaign_id)


_RECIPIENTS_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        'Recipients as NDJSON (one `{"email", "user_id", "vars"}` object per line) or '
        "as one JSON array of them. The body is streamed: any size. It may be sent "
        "compressed (`Content-Encoding: gzip` or `deflate`); not as a multipart form."
    ),
    "content": {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}}
        },
    },
}


async def _append_stream(
    appender: recipient_append.RecipientAppender, chunks: AsyncIterator[bytes]
) -> AppendResult:
    """Split, check and append the streamed recipients in chunks; bounded memory.

    Raises :class:`InvalidFieldError` (field ``body``) when the body is not NDJSON or a
    JSON array; what came before the fault stays appended (and is named in the error).
    """
    result = AppendResult(appended=0, total=0)
    batch: list[Recipient] = []
    splitter = RecipientSplitter()  # tells NDJSON from an array by the body itself

    def problem(position: int, field: str, message: str) -> None:
        result.rejected += 1
        if len(result.errors) >= MAX_REPORTED_PROBLEMS:
            result.errors_truncated = True
            return
        result.errors.append(located_problem(splitter.format, position, field, message))

    async def flush() -> None:
        appended, duplicates = await run_in_threadpool(appender.add, batch)
        result.appended += appended
        result.duplicates += len(duplicates)
        batch.clear()

    async def take(docs: list[Document]) -> None:
        for doc in docs:
            if doc.problem:
                problem(doc.position, "body", doc.problem)
                continue
            try:
                batch.append(appender.checker.check(campaign_checks.load_recipient(doc.raw)))
            except orjson.JSONDecodeError as exc:
                problem(doc.position, "body", f"not valid JSON: {exc}")
            except campaigns.CampaignError as exc:
                problem(doc.position, exc.field or "body", str(exc))
            if len(batch) >= recipient_append.APPEND_CHUNK:
                await flush()

    try:
        await read_documents(chunks, splitter, take)
        await flush()
    except ClientDisconnect:
        # Nobody to answer: keep the whole documents read, as after a broken body (the
        # client sends the body again; what the campaign has is skipped).
        await flush()
        log.warning(
            "append to campaign %s: the client went away mid-body; %d recipients appended",
            appender.campaign_id,
            result.appended,
        )
        raise
    except campaigns.CampaignStateError as exc:  # started (or cancelled) while streaming
        if not result.appended and not result.rejected:
            raise
        message = str(exc)
        if result.appended:
            message += f"; the {result.appended} recipients appended before it stay in the "
            message += "campaign"
        message += _rejected_before(result)
        problems = [(exc.field, message), *listed(result.errors)]
        raise campaigns.CampaignStateError(message, exc.field, problems) from None
    except StreamFormatError as exc:
        await take(exc.documents)  # those completed before the fault are kept
        await flush()
        message = (
            f"{exc}; the {result.appended} valid recipients before it were appended (send "
            f"the rest again: addresses the campaign has are skipped){_rejected_before(result)}"
        )
        raise InvalidFieldError(
            message, "body", [("body", message), *listed(result.errors)]
        ) from None
    result.total = campaign_reads.get_counters(appender.campaign_id, appender.r)["total"]
    return result


def _rejected_before(result: AppendResult) -> str:
    """What an error that ends an append says of the recipients rejected before it."""
    if not result.rejected:
        return ""
    more = ", the first listed" if result.errors_truncated else ""
    return f"; {result.rejected} rejected before it (in errors{more})"


@router.post(
    "/{campaign_id}/recipients",
    max_body_size=STREAMED,
    response_model=AppendResult,
    responses=_BOTH,
    openapi_extra={"requestBody": _RECIPIENTS_BODY},
    summary="Append recipients (NDJSON or JSON array, streamed)",
)
async def append_recipients(campaign_id: CampaignId, request: Request) -> AppendResult | Response:
    """Append recipients to a draft campaign, reading the body as it arrives.

    Every valid recipient is appended; each invalid one is listed with its NDJSON
    ``line`` (1-based) or array ``index`` (0-based) and the field at fault, and costs
    nothing else. An address the campaign already has is skipped (``duplicates``), so a
    retried append is safe. 409 once the campaign has started. A body that breaks off
    (or is cut short) keeps the whole recipients before the break; its 422 (or 409)
    lists the bad ones among them in ``errors`` (``line 3: ...``, ``index 2: ...``).
    ``Content-Encoding: gzip`` or ``deflate`` bodies are inflated as they stream.
    """
    refuse_form_upload(request, "the recipients")
    chunks = decoded_body(request)
    appender = await run_in_threadpool(recipient_append.RecipientAppender, campaign_id)
    try:
        return await _append_stream(appender, chunks)
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)  # nobody reads it


def _operation(name: str, summary: str) -> dict[str, Any]:
    return {
        "path": f"/{{campaign_id}}/{name}",
        "response_model": CampaignSummary,
        "responses": _BOTH,
        "summary": summary,
    }


@router.post(**_operation("start", "Start a draft campaign"))
def start_campaign(campaign_id: CampaignId) -> CampaignSummary:
    """Start sending (or wait for ``send_at``). 409 unless the campaign is a draft or
    scheduled (starting a scheduled one changes nothing until its ``send_at``)."""
    campaigns.start_campaign(campaign_id)
    return _summary(campaign_id)


@router.post(**_operation("pause", "Pause sending"))
def pause_campaign(campaign_id: CampaignId) -> CampaignSummary:
    """Stop sending within a second or two; unsent messages stay queued for ``resume``."""
    return CampaignSummary.model_validate(lifecycle.pause(campaign_id))


@router.post(**_operation("resume", "Resume a paused campaign"))
def resume_campaign(campaign_id: CampaignId) -> CampaignSummary:
    """Send what is left; nothing already sent is sent again."""
    return CampaignSummary.model_validate(lifecycle.resume(campaign_id))


@router.post(**_operation("cancel", "Cancel a campaign"))
def cancel_campaign(campaign_id: CampaignId) -> CampaignSummary:
    """Every message not sent yet ends ``cancelled`` (one being sent right now ends as it
    really does). 409 for a completed or expired campaign."""
    return CampaignSummary.model_validate(lifecycle.cancel(campaign_id))


@router.post(
    "/{campaign_id}/retry-failed",
    response_model=RetryResult,
    responses={**_BOTH, **GONE},
    summary="Send failed messages once more",
)
def retry_failed(campaign_id: CampaignId) -> RetryResult:
    """Queue again the failed messages whose failure may pass (connection, timeout,
    provider refusal, temporary recipient refusal), each at most once. Not retried:
    ``Invalid message`` and addresses refused for good (5xx ``SMTP invalid email ID``).
    A completed campaign runs again; a paused one stays paused until resumed."""
    report, summary = lifecycle.retry_failed(campaign_id)
    return RetryResult(
        retried=report.retried,
        skipped_not_retryable=report.skipped_not_retryable,
        skipped_already_retried=report.skipped_already_retried,
        campaign=CampaignSummary.model_validate(summary),
    )


@router.post(
    "/{campaign_id}/test",
    response_model=TestEmailResult,
    responses={**_BOTH, **GONE},
    summary="Send one recipient's message to another address",
)
async def test_campaign(campaign_id: CampaignId, body: CampaignTestRequest) -> TestEmailResult:
    """Render the message of the stored recipient ``seq`` (default 0), or of a recipient
    with ``vars``, as the campaign sends it, and send it to ``to`` alone (not to the
    campaign's cc and bcc) through the campaign's provider, within its limits. Nothing of
    the campaign changes: its links and meta name a test id of their own. Any status.

    Answers like the provider test email: ``error`` is null or an error class
    (``Invalid message`` when a template cannot render for this recipient). 409 when the
    campaign's provider is gone (field ``provider``), or when ``to`` is on the suppression
    list (field ``to``, the entry named) unless ``allow_suppressed`` is true."""
    content = await run_in_threadpool(campaign_reads.load_content, campaign_id)
    try:
        to = normalize_address(body.to)
    except InvalidAddressError as exc:
        raise InvalidFieldError(str(exc), "to") from None
    try:
        config = await run_in_threadpool(provider_store.load_provider, content.provider)
    except provider_store.ProviderNotFoundError:
        gone = f"the campaign's provider {content.provider!r} does not exist"
        raise campaigns.CampaignStateError(gone, "provider") from None
    seq = body.seq or 0
    if body.vars is not None:
        recipient: dict[str, Any] = {"vars": body.vars}
    else:
        stored = await run_in_threadpool(stored_recipient_at, store.sync_client(), campaign_id, seq)
        if stored is None and body.seq is not None:
            count = await run_in_threadpool(stored_count, store.sync_client(), campaign_id)
            raise InvalidFieldError(f"the campaign has {count} recipients stored", "seq")
        recipient = stored or {}
    result = await send_campaign_test(
        content, config, to, recipient, seq, allow_suppressed=body.allow_suppressed
    )
    return TestEmailResult(ok=result.ok, error=result.error, detail=result.detail)


@router.get(
    "/{campaign_id}/messages",
    response_model=MessagePage,
    responses={**NOT_FOUND, **GONE},
    summary="Per-message outcomes",
)
def list_messages(
    campaign_id: CampaignId,
    status_: Annotated[
        MessageStatus | None,
        Query(
            alias="status",
            description="Only messages in this state (`queued`: not tried yet; the "
            "campaign's `queued` counter also counts `claimed` and `retry`)",
        ),
    ] = None,
    cursor: Annotated[str, Query(pattern=r"^\d{1,12}$", description="From `next_cursor`")] = "0",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    email: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=320,
            description="Only the messages to this address (caseless), on one page: "
            "`cursor` and `limit` do not apply",
        ),
    ] = None,
    callback: Annotated[
        CallbackCounter | None,
        Query(description="Only messages a callback of this kind was counted for (`clicked`)"),
    ] = None,
) -> MessagePage:
    """Messages in seq order: meta, email, status, error class, detail, attempts, and
    the callbacks counted for each (``callbacks``: delivered, clicked, ...; ``callback``
    keeps those a callback of that kind was counted for: who clicked, who bounced). A
    filtered page may be short or empty: go on while ``next_cursor`` is not null. With
    ``email``: what happened to that address in this campaign (422 naming ``email`` for
    one that is no address, unless the campaign was given it: a typo is not "never
    sent", and an inline list's bad address, failed at send time, can still be found)."""
    if email is not None:
        try:
            normalize_address(email)
        except InvalidAddressError as exc:
            if not message_pages.holds_address(campaign_id, email):
                raise InvalidFieldError(str(exc), "email") from None
    status = None if status_ is None else status_.value
    items, next_cursor = message_pages.messages_page(
        campaign_id,
        status=status,
        cursor=int(cursor),
        limit=limit,
        email=email,
        callback=None if callback is None else callback.value,
    )
    return MessagePage(
        items=[MessageOutcome.model_validate(i) for i in items],
        next_cursor=None if next_cursor is None else str(next_cursor),
    )
