"""Provider configurations in Redis: validated, secrets encrypted, callback URL generated."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import redis

from dispatch import crypto, store
from dispatch.settings import get_settings
from providers.config import ProviderBase, parse_provider_config, public_view

CALLBACK_TOKEN_FIELD = "_callback_token"


class ProviderNotFoundError(KeyError):
    """No provider is saved under that nickname."""


def _encode(config: ProviderBase, token: str) -> bytes:
    data = config.model_dump(mode="json")
    for name in config.secret_fields:
        value = getattr(config, name).get_secret_value()
        data[name] = {"enc": crypto.encrypt(value)} if value else ""
    data[CALLBACK_TOKEN_FIELD] = token
    return orjson.dumps(data)


def decode_provider(raw: str | bytes) -> tuple[ProviderBase, str]:
    """A stored provider and its callback token; raises ``SecretKeyError``, ValidationError."""
    data: dict[str, Any] = orjson.loads(raw)
    token = str(data.pop(CALLBACK_TOKEN_FIELD, ""))
    for key, value in list(data.items()):
        if isinstance(value, dict) and set(value) == {"enc"}:
            data[key] = crypto.decrypt(str(value["enc"]))
    return parse_provider_config(data, stored=True), token


def save_provider(data: dict[str, Any], client: redis.Redis | None = None) -> ProviderBase:
    """Validate and store a provider configuration (create or replace).

    The callback token is kept across replacements so that the URL given to the ESP
    stays valid. Raises ``pydantic.ValidationError`` naming the field at fault.
    """
    r = client or store.sync_client()
    config = parse_provider_config(data)
    existing = r.get(store.provider_key(config.nickname))
    token = decode_provider(existing)[1] if existing else secrets.token_urlsafe(24)
    pipe = r.pipeline()
    pipe.set(store.provider_key(config.nickname), _encode(config, token))
    pipe.sadd(store.PROVIDERS_SET, config.nickname)
    pipe.execute()
    return config


def load_provider(nickname: str, client: redis.Redis | None = None) -> ProviderBase:
    """The provider saved under ``nickname``; raises :class:`ProviderNotFoundError`."""
    return load_provider_with_token(nickname, client)[0]


def load_provider_with_token(
    nickname: str, client: redis.Redis | None = None
) -> tuple[ProviderBase, str]:
    """The provider and its callback token; raises :class:`ProviderNotFoundError`."""
    raw = (client or store.sync_client()).get(store.provider_key(nickname))
    if raw is None:
        raise ProviderNotFoundError(nickname)
    return decode_provider(raw)


def list_providers(client: redis.Redis | None = None) -> list[str]:
    return sorted(str(n) for n in (client or store.sync_client()).smembers(store.PROVIDERS_SET))


def delete_provider(nickname: str, client: redis.Redis | None = None) -> bool:
    r = client or store.sync_client()
    pipe = r.pipeline()
    pipe.delete(store.provider_key(nickname))
    pipe.srem(store.PROVIDERS_SET, nickname)
    deleted, _ = pipe.execute()
    return bool(deleted)


def callback_url(nickname: str, token: str) -> str:
    """``<DISPATCH_PUBLIC_URL>/v1/callbacks/<nickname>/<token>`` (DESIGN §6)."""
    return f"{get_settings().public_url.rstrip('/')}/v1/callbacks/{nickname}/{token}"


def provider_view(nickname: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """The provider as shown to users: secrets masked, ``callback_url`` added."""
    config, token = load_provider_with_token(nickname, client)
    view = public_view(config)
    view["callback_url"] = callback_url(nickname, token)
    return view
