"""Routes of the callback gateway: ``/v1/callbacks/{nickname}/{token}`` (DESIGN §6).

Exempt from the API's bearer token: the unguessable token in the URL authenticates the
provider. The work happens in :mod:`dispatch.callbacks`, in a worker thread.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dispatch import callbacks
from dispatch.api.body_limits import STREAMED, BodyTooLargeError, read_bounded
from dispatch.api.errors import CALLBACK_RESPONSES, PROBE_RESPONSES, RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

# Bodies are cut off at callbacks.MAX_BODY_BYTES by the routes themselves, answered in the
# seeds' shape (DESIGN §6); a probe's is left unread: no route answers the app's 413.
router = APIRouter(tags=["callbacks"], max_body_size=STREAMED)
PATH = "/v1/callbacks/{nickname}/{token}"


def _response(reply: callbacks.CallbackAnswer) -> Response:
    """The answer as JSON; a 503 (Redis cannot serve, or an SNS signing certificate cannot
    be fetched) says when to come back, as the API's other 503s do (RFC 9110 §10.2.3)."""
    unavailable = reply.status == 503
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if unavailable else None
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)


@router.post(PATH, responses=CALLBACK_RESPONSES)
async def receive_callback(nickname: str, token: str, request: Request) -> Response:
    """Accept a provider's callback: events are durable in Redis before this answers.
    The URL's token is checked before the body is read (a caller without it gets its 400
    at once, and the API holds none of what it sends)."""
    config = await run_in_threadpool(callbacks.check_url, nickname, token)
    if isinstance(config, callbacks.CallbackAnswer):
        return _response(config)
    try:
        body = await read_bounded(request, callbacks.MAX_BODY_BYTES)  # (SNS: text/plain)
    except BodyTooLargeError:
        reply = callbacks.refuse_too_large()
    except ClientDisconnect:
        # A provider's own timeout or a dropped connection: nothing was stored, and the
        # provider sends the request again. Not the API's fault: no traceback.
        log.info(
            "callback for %s: the provider went away mid-body; nothing stored",
            nickname,
            extra={"provider": nickname},
        )
        return Response(status_code=400)  # nobody reads it
    else:
        headers = dict(request.headers)
        reply = await run_in_threadpool(
            callbacks.ingest, nickname, token, body, headers, config=config
        )
    return _response(reply)


@router.get(PATH, responses=PROBE_RESPONSES)
def probe_callback(nickname: str, token: str) -> Response:
    """Providers' URL probes: 200 when the URL is a provider's callback URL."""
    return _response(callbacks.probe(nickname, token))


# HEAD answers like GET; kept out of the schema, where it would repeat GET's operation.
router.head(PATH, include_in_schema=False)(probe_callback)
