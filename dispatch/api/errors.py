"""JSON error answers of the /v1 API: the one place domain exceptions become HTTP statuses.

Every error body is ``{"detail": <what is wrong>, "field": <where, or null>, "errors":
[{"field", "message"}, ...]}`` (:class:`dispatch.api.schemas.ErrorBody`); with a
``field``, ``detail`` reads ``"<field>: <message>"`` and ``errors`` lists each problem:

* 422: an invalid body (one that is not JSON, or not UTF-8, too), query or path value
  (``field`` names it, dotted: ``recipients.3.email``; ``content-type`` for a body not
  sent as JSON, ``content-encoding`` for one sent compressed), an invalid provider
  configuration, an invalid campaign (unknown template variable or placeholder:
  ``field`` names it);
* 409: the campaign id is taken by other content (``id``), or the operation does not
  fit the campaign's status (``status``);
* 410: the campaign's per-message records were removed by the retention policy
  (``campaign_id``);
* 404: no such campaign, provider or suppression; 401: no valid bearer token
  (``authorization``, with ``WWW-Authenticate``); 403: with no tokens configured, a
  request to another host name or from a web page of another site (``host``, ``origin``);
* 413: a body over 64 MiB (``body``), on every route but those that stream theirs;
* 405: a method the path does not take (``Allow`` lists those it does; HEAD wherever
  GET, :mod:`dispatch.api.methods`);
* 503: Redis (the system of record) cannot serve: down, loading, read-only after a
  failover, or out of memory; try again after ``Retry-After`` seconds.

The callback routes answer in the shapes of DESIGN §6 instead, and pages as pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatch.api.auth import ForeignRequestError
from dispatch.api.body_limits import MAX_API_BODY_BYTES
from dispatch.api.json_bodies import BodyValueError
from dispatch.api.methods import allowed_methods
from dispatch.api.schemas import (
    CallbackError,
    CallbackPartialSuccess,
    CallbackSuccess,
    ErrorBody,
    FieldProblem,
    HealthError,
    HttpCallbackResult,
)
from dispatch.campaign_checks import first_request_errors, validation_problems
from dispatch.campaigns import (
    CampaignConflictError,
    CampaignError,
    CampaignNotFoundError,
    CampaignStateError,
)
from dispatch.crypto import SecretKeyError
from dispatch.provider_store import ProviderNotFoundError
from dispatch.retention import CampaignPurgedError
from providers.callbacks.events import MAX_EVENTS, escape_text
from providers.callbacks.sendgrid import MAX_SENDGRID_EVENTS

_REQUEST_PARTS = ("body", "query", "path", "header", "cookie")
# A 422 lists this many problems; its detail counts the others. (A campaign of 300,000
# recipients with a misnamed key had a 42 MB answer listing 600,000.)
MAX_LISTED_PROBLEMS = 1000
_CALLBACKS = "/v1/callbacks/"  # their answers are fixed by DESIGN §6
RETRY_AFTER_SECONDS = 5  # what a 503 asks: Redis restarts or fails over in seconds
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,  # maxmemory reached (noeviction): writes refused
)


class InvalidFieldError(ValueError):
    """A value the models cannot check by themselves is wrong (422); ``field`` names it."""

    def __init__(self, message: str, field: str, problems: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.problems = tuple(problems)  # (field, message) each, when there are several


class NotFoundError(LookupError):
    """A named resource does not exist (404); ``field`` is the path parameter."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def error_response(
    status_code: int,
    message: str,
    field: str | None = None,
    problems: Iterable[FieldProblem] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error body; ``message`` is what is wrong with ``field`` (named once in
    ``detail``), ``problems`` each problem (default: that one).

    A field or message may quote the request: a key holding a lone surrogate
    (``{"\\ud800": 1e400}``) is named with it escaped (``\\ud800``), not answered with a
    500 because the body cannot be written as UTF-8."""
    message, field = escape_text(message), field and escape_text(field)
    errors = [
        FieldProblem(field=escape_text(p.field), message=escape_text(p.message)) for p in problems
    ]
    detail = message
    if field:
        message = message.removeprefix(f"{field}: ")
        detail = f"{field}: {message}"
        errors = errors or [FieldProblem(field=field, message=message)]
    body = ErrorBody(detail=detail, field=field, errors=errors)
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _unprocessable(
    errors: Iterable[Mapping[str, Any]], drop_prefix: tuple[str, ...] = (), in_all: int = 0
) -> JSONResponse:
    """422 for pydantic ``errors``; ``in_all`` counts the errors when only the first are
    given."""
    problems = validation_problems(errors, drop_prefix=drop_prefix) or [("body", "invalid")]
    field, message = problems[0]
    if max(len(problems), in_all) > 1:
        message += f" (and {max(len(problems), in_all) - 1} more)"
    listed = [FieldProblem(field=f, message=m) for f, m in problems[:MAX_LISTED_PROBLEMS]]
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, message, field, listed)


def invalid_campaign(body: dict[str, Any], exc: ValidationError) -> JSONResponse:
    """422 for a campaign's body ``CampaignRequest`` refused (``exc``), listing the first
    problems, however many recipients are at fault."""
    errors = first_request_errors(body, exc, MAX_LISTED_PROBLEMS)
    return _unprocessable(errors, in_all=exc.error_count())


def invalid_provider(exc: ValidationError, kind: str) -> JSONResponse:
    """422 for a provider configuration, without the union's ``kind`` tag in the fields."""
    return _unprocessable(exc.errors(), drop_prefix=(kind,) if kind else ())


def _not_json(request: Request) -> str | None:
    """The request's Content-Type when it is not JSON (``"none"`` when absent), else None.

    FastAPI reads a body as JSON only when it says it is (``strict_content_type``: a form
    post from a web page cannot pass for an API call), and otherwise reports the body as
    "not a valid dictionary": the header is what the caller has to fix."""
    content_type = request.headers.get("content-type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    return content_type or "none"


def _compressed(request: Request) -> JSONResponse | None:
    """422 naming ``content-encoding`` for a body sent compressed to a route that reads
    it whole (only the recipient append inflates one), else None."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    message = (
        f"{encoding!r}: this route reads its body uncompressed (only the recipient append "
        "takes gzip or deflate)"
    )
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, message, "content-encoding")


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        kind = err.get("type")
        if loc[:1] == ("body",) and kind != "missing" and (sent := _not_json(request)):
            message = f"send the body as JSON with Content-Type: application/json (not {sent})"
            return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, message, "content-type")
        if kind == "json_invalid":
            if compressed := _compressed(request):
                return compressed
            reason = (err.get("ctx") or {}).get("error", "")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            err = {**err, "msg": f"not valid JSON ({reason}{at})"}
            loc = ("body",)
        elif loc == ("body",) and kind == "missing":
            err = {**err, "msg": "empty: send a JSON object"}
        elif loc and loc[0] in _REQUEST_PARTS and (len(loc) > 1 or kind != "missing"):
            loc = loc[1:]  # a body-level error then names its field by its message
        errors.append({**err, "loc": loc})
    return _unprocessable(errors)


async def _pydantic_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return _unprocessable(exc.errors())


async def _campaign_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CampaignError)
    if isinstance(exc, CampaignPurgedError):
        code = status.HTTP_410_GONE
    elif isinstance(exc, CampaignConflictError | CampaignStateError):
        code = status.HTTP_409_CONFLICT
    else:
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    problems = [FieldProblem(field=f, message=m) for f, m in exc.problems]
    return error_response(code, str(exc), exc.field or None, problems)


async def _invalid_field(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidFieldError)
    problems = [FieldProblem(field=f, message=m) for f, m in exc.problems]
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc), exc.field, problems)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's and Starlette's own errors (401 from the token check, unknown routes,
    a body that cannot be read) in the API's shape; other paths keep theirs."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    own = path.startswith("/v1/") and not path.startswith(_CALLBACKS)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        exc = _not_allowed(request, path, str(exc.detail) if not own else None)
    if not own:
        return await http_exception_handler(request, exc)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.__cause__ is not None:
        # FastAPI could not read the body at all (not UTF-8, say): invalid input too.
        if compressed := _compressed(request):
            return compressed
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"not readable as JSON: {exc.__cause__}", "body"
        )
    if exc.status_code == status.HTTP_413_CONTENT_TOO_LARGE:
        return too_large_response()
    if isinstance(exc, BodyValueError | ForeignRequestError):
        return error_response(exc.status_code, str(exc.detail), exc.field)
    field = "authorization" if exc.status_code == status.HTTP_401_UNAUTHORIZED else None
    return error_response(exc.status_code, str(exc.detail), field, headers=exc.headers)


def _not_allowed(request: Request, path: str, detail: str | None) -> StarletteHTTPException:
    """The 405 with every method the path takes in ``Allow`` (Starlette's named those of
    one route of the path); ``detail``, else one naming them."""
    allowed = allowed_methods(request.app.router, request.scope)
    if detail is None:
        detail = f"{request.method} is not allowed on {path}: it takes {', '.join(allowed)}"
    return StarletteHTTPException(
        status.HTTP_405_METHOD_NOT_ALLOWED, detail, headers={"Allow": ", ".join(allowed)}
    )


def too_large_response() -> JSONResponse:
    """413 for a body over the API's limit, found from its Content-Length or while read."""
    limit = f"{MAX_API_BODY_BYTES // 2**20} MiB"
    return error_response(status.HTTP_413_CONTENT_TOO_LARGE, f"over {limit}", "body")


async def _redis_error(request: Request, exc: Exception) -> Response:
    """503 with ``Retry-After`` when Redis cannot serve (the caller should come back,
    not report a bug); any other Redis error is raised again (500, in the server's log)."""
    if not isinstance(exc, _UNAVAILABLE):
        raise exc
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"the service's Redis cannot serve ({type(exc).__name__}): try again later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, CampaignNotFoundError):
        return error_response(404, f"no campaign {exc.args[0]!r}", "campaign_id")
    if isinstance(exc, ProviderNotFoundError):
        return error_response(404, f"no provider {exc.args[0]!r}", "nickname")
    assert isinstance(exc, NotFoundError)
    return error_response(404, str(exc), exc.field)


async def _unreadable_secrets(request: Request, exc: Exception) -> JSONResponse:
    """A provider whose stored secrets the current key cannot read: nothing can be sent
    through it until the key is restored or the provider saved again (not a 500)."""
    return error_response(status.HTTP_409_CONFLICT, str(exc), "provider")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _pydantic_validation)
    app.add_exception_handler(CampaignError, _campaign_error)
    app.add_exception_handler(InvalidFieldError, _invalid_field)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(SecretKeyError, _unreadable_secrets)
    for exc_type in (CampaignNotFoundError, ProviderNotFoundError, NotFoundError):
        app.add_exception_handler(exc_type, _not_found)


# Shared ``responses=`` for route declarations (the OpenAPI document lists them).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "Missing or invalid bearer token",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {
        "model": ErrorBody,
        "description": "Without DISPATCH_API_TOKENS: a `host` not local, or an `origin` "
        "(a web page's request) other than the API's own",
    },
    422: {"model": ErrorBody, "description": "Invalid input; `field` names it"},
    503: {
        "model": ErrorBody,
        "description": "Redis cannot serve: try again after `Retry-After` seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "Conflicts with the current state"}
}
GONE: dict[int | str, dict[str, Any]] = {
    410: {
        "model": ErrorBody,
        "description": "The per-message records were removed (DISPATCH_RETENTION_DAYS)",
    }
}

_TOO_LARGE = "The body is over 64 MiB (`field`: `body`)"


def _ref_of_name(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ref(model: type[Any]) -> dict[str, str]:
    return _ref_of_name(model.__name__)


def _json_of(*models: type[Any]) -> dict[str, Any]:
    schema = _ref(models[0]) if len(models) == 1 else {"anyOf": [_ref(m) for m in models]}
    return {"content": {"application/json": {"schema": schema}}}


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}}}
_CALLBACK_REFUSED = "Not accepted (`error_code` repeats the status)"
# The callback routes' answers (DESIGN §6, dispatch.callbacks); the models themselves are
# put in the document by app.py's openapi (they are no route's response_model).
CALLBACK_MODELS = (
    CallbackSuccess,
    CallbackPartialSuccess,
    HttpCallbackResult,
    CallbackError,
)
CALLBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Accepted: every event, or some (`partial_success`; the `http` "
        "kind's answer lists the others)",
        **_json_of(CallbackSuccess, CallbackPartialSuccess, HttpCallbackResult),
    },
    400: {
        "description": "Malformed as a whole, failed authentication (unknown nickname or "
        f"token, bad signature), over {MAX_EVENTS:,} events ({MAX_SENDGRID_EVENTS:,} for "
        "`sendgrid`, whose posts may hold more) or 8 MB, or every event refused",
        **_json_of(CallbackError, HttpCallbackResult),
    },
    502: {
        "description": "SNS SubscriptionConfirmation: the SubscribeURL could not be fetched",
        **_json_of(CallbackError),
    },
    500: {
        "description": "The service failed (a provider whose saved key cannot be used, or a "
        "bug): the provider sends again",
        **_json_of(CallbackError),
    },
    503: {
        "description": "Redis cannot take the events, or an SNS signing certificate cannot "
        "be fetched: send again (after `Retry-After` seconds)",
        "headers": _RETRY_AFTER,
        **_json_of(CallbackError),
    },
}
PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The URL is a provider's callback URL", **_json_of(CallbackSuccess)},
    400: {"description": _CALLBACK_REFUSED + ": not a callback URL", **_json_of(CallbackError)},
    500: CALLBACK_RESPONSES[500],
    503: {
        "description": "Redis cannot serve: try again after `Retry-After` seconds",
        "headers": _RETRY_AFTER,
        **_json_of(CallbackError),
    },
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthError, "description": "Redis does not answer"},
}

_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "The link's token is not valid (a page saying so)", **_HTML},
    503: {
        "description": "Redis cannot serve: a page asking to come back; nothing was changed",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        **_HTML,
    },
}
REDIRECT: dict[int | str, dict[str, Any]] = {
    303: {
        "description": "The provider has a custom preference center: go there, with the token",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
}
FORM_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "The form is over 64 KiB; nothing was saved", **_HTML}
}


def complete_document(
    document: dict[str, Any], bounded: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The OpenAPI document as the routes really answer: the callback answer models
    added to its schemas, FastAPI's default 422 (``HTTPValidationError``, a shape this
    API never answers) dropped where a route cannot answer 422 at all (callbacks, pages:
    their path parameters are any text), and the 413 listed for each operation of
    ``bounded`` ((method, path) pairs): those the app's body limit applies to answer it
    for any body over the limit, before they run, even those that take no body."""
    for method, path in bounded:
        responses = document["paths"][path][method]["responses"]
        responses.setdefault("413", {"description": _TOO_LARGE, **_json_of(ErrorBody)})
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _, defs = models_json_schema(
        [(model, "serialization") for model in CALLBACK_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(defs.get("$defs", {}))
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            default = responses.get("422", {}).get("content", {}).get("application/json", {})
            if default.get("schema") == _ref_of_name("HTTPValidationError"):
                del responses["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
