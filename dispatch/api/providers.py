"""``/v1/providers``: save, read, list, delete and test provider configurations (DESIGN §2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from dispatch import provider_store, store
from dispatch.api.auth import require_token
from dispatch.api.errors import (
    CONFLICT,
    ERROR_RESPONSES,
    NOT_FOUND,
    InvalidFieldError,
    invalid_provider,
)
from dispatch.api.json_bodies import StrictJsonRoute
from dispatch.api.provider_schemas import KIND_MODELS
from dispatch.api.schemas import ProviderList, ProviderView, TestEmailRequest, TestEmailResult
from dispatch.test_email import send_shared_test_email
from providers.addresses import InvalidAddressError, normalize_address
from providers.config import NICKNAME_PATTERN

router = APIRouter(
    prefix="/v1/providers",
    tags=["providers"],
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    route_class=StrictJsonRoute,
)

Nickname = Annotated[str, Path(pattern=NICKNAME_PATTERN, description="The provider's nickname")]

# One example per kind; the body's schema is put in by provider_schemas.add_provider_schemas.
_CONFIG_EXAMPLES: list[dict[str, Any]] = [
    {
        "kind": "smtp",
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "mailer",
        "password": "secret",
        "from_name": "Acme Deals",
        "from_address": "deals@acme.example",
    },
    {
        "kind": "ses",
        "region": "eu-west-1",
        "username": "AKIAEXAMPLESMTPUSER",
        "password": "smtp-password",
        "from_address": "deals@acme.example",
        "sns_topic_arns": ["arn:aws:sns:eu-west-1:123456789012:ses-events"],
    },
    {"kind": "sendgrid", "password": "SG.key", "from_address": "deals@acme.example"},
    {
        "kind": "gmail",
        "username": "deals@acme.example",
        "password": "abcdefghijklmnop",
        "from_address": "deals@acme.example",
    },
    {
        "kind": "http",
        "endpoint": "https://esp.example/send",
        "headers": {"X-Api-Key": "k"},
        "body": {  # DESIGN §4's message object
            "to": "$$To",
            "mid": "$$MessageID",
            "heading": "$$Subject",
            "content": "$$HTML",
            "from": "$$FromName",
            "senderaddr": "$$FromAddress",
        },
        "from_address": "deals@acme.example",
    },
]


def _view(nickname: str) -> ProviderView:
    return ProviderView.model_validate(provider_store.provider_view(nickname))


@router.put(
    "/{nickname}",
    response_model=ProviderView,
    responses={201: {"model": ProviderView, "description": "Created"}},
    summary="Create or replace a provider",
)
def put_provider(
    nickname: Nickname,
    response: Response,
    config: Annotated[
        dict[str, Any],
        Body(
            description=(
                f"The configuration: `kind` ({', '.join(KIND_MODELS)}) and that kind's "
                "fields, flat (DESIGN §2, §4). `nickname` may be left out; if given it must "
                "match the path. Secrets are stored encrypted and never returned; the mask "
                "a read shows (`********`) keeps the stored secret, and the read's "
                "`callback_url`, `warnings` and `connects_to` are ignored, so a read can be "
                "saved back."
            ),
            examples=_CONFIG_EXAMPLES,
        ),
    ],
) -> ProviderView | JSONResponse:
    """Validate the configuration for its kind and store it under ``nickname``.

    The callback URL (and its token) stays the same when a provider is replaced.
    """
    data = {**config, "nickname": config.get("nickname", nickname)}
    if data["nickname"] != nickname:
        raise InvalidFieldError(
            f"{data['nickname']!r} does not match the nickname in the path", "nickname"
        )
    existed = bool(store.sync_client().exists(store.provider_key(nickname)))
    try:
        provider_store.save_provider(data)
    except ValidationError as exc:
        return invalid_provider(exc, str(data.get("kind", "")))
    except provider_store.ProviderFieldError as exc:
        raise InvalidFieldError(str(exc), exc.field) from None
    response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
    return _view(nickname)


@router.get("", response_model=ProviderList, summary="List providers")
def list_providers() -> ProviderList:
    """Every provider, secrets masked, by nickname."""
    views = provider_store.provider_views()
    return ProviderList(items=[ProviderView.model_validate(v) for v in views])


@router.get(
    "/{nickname}", response_model=ProviderView, responses=NOT_FOUND, summary="Read a provider"
)
def get_provider(nickname: Nickname) -> ProviderView:
    """The configuration with secrets masked and the generated ``callback_url``."""
    return _view(nickname)


@router.delete(
    "/{nickname}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Delete a provider",
)
def delete_provider(nickname: Nickname) -> Response:
    """Forget the provider. Campaigns that still use it pause when they next send."""
    if not provider_store.delete_provider(nickname):
        raise provider_store.ProviderNotFoundError(nickname)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{nickname}/test",
    response_model=TestEmailResult,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Send a test email through a provider",
)
async def test_provider(nickname: Nickname, body: TestEmailRequest) -> TestEmailResult:
    """Send one real message to ``to`` and say whether the provider took it; ``vars``
    are the recipient's (an HTTP payload's custom ``$$`` placeholders take them).

    ``error`` is one of the error classes of DESIGN §2 (``SMTP connection error``,
    ``SMTP invalid email ID``, ``SMTP dispatching failed``, ``SMTP timeout``,
    ``Dispatch failed``) or null. A ``to`` on the suppression list is refused, nothing
    sent (409, field ``to``, naming the entry), unless ``allow_suppressed``.
    """
    config = await run_in_threadpool(provider_store.load_provider, nickname)
    try:
        to = normalize_address(body.to)
    except InvalidAddressError as exc:
        raise InvalidFieldError(str(exc), "to") from None
    result = await send_shared_test_email(
        config, to, vars=body.vars, allow_suppressed=body.allow_suppressed
    )
    return TestEmailResult(ok=result.ok, error=result.error, detail=result.detail)
