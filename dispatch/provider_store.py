"""Provider configurations in Redis: validated, secrets encrypted, callback URL generated."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson
import redis
from pydantic import SecretStr

from dispatch import crypto, store
from dispatch.settings import get_settings, wait_problem
from providers.config import (
    SECRET_MASK,
    HttpConfig,
    ProviderBase,
    SecretPath,
    SmtpFamilyBase,
    child,
    endpoint_credentials,
    parse_provider_config,
    public_view,
    secret_paths,
    secret_value,
    set_secret,
)
from providers.netguard import PrivateEndpointError, check_endpoint

CALLBACK_TOKEN_FIELD = "_callback_token"
# The paths of a Generic HTTP body's credentials stored encrypted (``{"enc": ...}`` there;
# the user's body may hold such an object of its own anywhere else).
BODY_SECRETS_FIELD = "_body_secrets"
# What a provider's view adds to its configuration; given back on save, they are ignored
# (a view read and saved again is the same configuration).
VIEW_ONLY_FIELDS = frozenset({"callback_url", "warnings", "connects_to"})


class ProviderNotFoundError(KeyError):
    """No provider is saved under that nickname."""


class ProviderFieldError(ValueError):
    """A field of the configuration cannot be saved (HTTP 422); ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class MaskedSecretError(ProviderFieldError):
    """A secret field holds the mask, and no secret is stored to keep."""

    def __init__(self, field: str) -> None:
        super().__init__(
            f"{SECRET_MASK!r} stands for the {field} stored, but none is stored: give the "
            f"{field} itself",
            field,
        )


def _check_endpoint(config: ProviderBase) -> None:
    """DESIGN §4: an endpoint resolving to a private, loopback or link-local address is
    refused, here already (the transport checks again at every connect). A name that
    does not resolve from here is left to send time."""
    if not isinstance(config, HttpConfig):
        return
    found = endpoint_credentials(config)
    if found:
        raise ProviderFieldError(
            f"endpoint: the query parameter {found[0]!r} carries a credential, which the "
            f"endpoint would store and show in clear: give it in query (a secret there: "
            f"stored encrypted, masked when read)",
            "endpoint",
        )
    if get_settings().allow_private_endpoints:
        return
    try:
        asyncio.run(check_endpoint(config.endpoint, allow_private=False))
    except PrivateEndpointError as exc:
        raise ProviderFieldError(str(exc), "endpoint") from None
    except OSError:
        pass


def _encode(config: ProviderBase, token: str) -> bytes:
    data = config.model_dump(mode="json")
    in_body: list[SecretPath] = []
    for path in secret_paths(config):
        value = secret_value(config, path)
        set_secret(data, path, {"enc": crypto.encrypt(value)} if value else "")
        if value and path[0] == "body":
            in_body.append(path)
    if in_body:  # a body may hold an {"enc": ...} object of its own: ours are listed
        data[BODY_SECRETS_FIELD] = in_body
    data[CALLBACK_TOKEN_FIELD] = token
    return orjson.dumps(data)


def _sealed(value: Any) -> str | None:
    """The ciphertext of an encrypted value as stored (``{"enc": ...}``), else None."""
    if isinstance(value, dict) and set(value) == {"enc"}:
        return str(value["enc"])
    return None


def _encrypted(data: dict[str, Any]) -> Iterator[tuple[Any, str | int, str, str]]:
    """The encrypted values of a stored configuration, as (where, key, ciphertext, name):
    its secret fields, an HTTP provider's credential headers and query parameters, and
    the body's credentials listed in :data:`BODY_SECRETS_FIELD`."""
    for key, value in list(data.items()):
        if key in ("headers", "query", "body"):  # sections: a header named "enc" is data
            for name, inner in list(value.items()) if key != "body" and value else ():
                if (sealed := _sealed(inner)) is not None:
                    yield value, name, sealed, f"{key}.{name}"
        elif (sealed := _sealed(value)) is not None:
            yield data, key, sealed, key
    for path in data.get(BODY_SECRETS_FIELD) or ():
        where: Any = data
        for step in path[:-1]:
            where = child(where, str(step))
        last = str(path[-1])
        if (sealed := _sealed(child(where, last))) is not None:
            yield where, int(last) if isinstance(where, list) else last, sealed, ".".join(path)


def decode_provider(raw: str | bytes, *, secrets: bool = True) -> tuple[ProviderBase, str]:
    """A stored provider and its callback token; raises ``SecretKeyError``, ValidationError.

    ``secrets=False``: the secrets are left encrypted, shown as :data:`SECRET_MASK` (what
    a view shows anyway), so a key that no longer fits never hides the configuration.
    """
    data: dict[str, Any] = orjson.loads(raw)
    token = str(data.pop(CALLBACK_TOKEN_FIELD, ""))
    for where, key, sealed, _ in list(_encrypted(data)):
        where[key] = crypto.decrypt(sealed) if secrets else SECRET_MASK
    data.pop(BODY_SECRETS_FIELD, None)
    return parse_provider_config(data, stored=True), token


def _unreadable_secrets(raw: str | bytes) -> list[str]:
    """Warnings for the stored secrets the current DISPATCH_SECRET_KEY cannot decrypt."""
    problems = []
    for _, key, sealed, name in _encrypted(orjson.loads(raw)):
        try:
            crypto.decrypt(sealed)
        except crypto.SecretKeyError:
            problems.append(
                f"{name}: the stored secret does not decrypt with DISPATCH_SECRET_KEY (was "
                f"the key changed?): restore the key or list the old one in "
                f"DISPATCH_PREVIOUS_SECRET_KEYS, or save the provider again with its {key}"
            )
    return problems


def _masked(config: ProviderBase) -> list[SecretPath]:
    """Where ``config`` gives the mask for a secret (it stands for the stored one)."""
    return [path for path in secret_paths(config) if secret_value(config, path) == SECRET_MASK]


def _stored_secret(stored: dict[str, Any], path: SecretPath) -> str:
    """The secret a stored configuration (its JSON) holds at ``path``, decrypted ("" when
    none); raises :class:`ProviderFieldError` naming it when the current key cannot
    decrypt it."""
    value = _stored_at(stored, path)
    if isinstance(value, str):  # saved before its name made it a secret; "" when not set
        return "" if "$$" in value else value
    if not isinstance(value, dict) or set(value) != {"enc"}:
        return ""
    try:
        return crypto.decrypt(str(value["enc"]))
    except crypto.SecretKeyError:
        field = ".".join(path)
        raise ProviderFieldError(
            f"{field}: the stored {field} does not decrypt with DISPATCH_SECRET_KEY (was "
            f"the key changed?): give the {field} itself",
            field,
        ) from None


def _keep_stored_secrets(
    config: ProviderBase, given: dict[str, Any], stored: dict[str, Any] | None
) -> ProviderBase:
    """``config`` with the stored secret wherever it gives the mask (:data:`SECRET_MASK`),
    and in each secret field it leaves out when the stored provider is of the same kind
    (an update of other fields keeps the password; ``""`` given clears it). Raises
    :class:`MaskedSecretError` when a mask has no secret to keep, and
    :class:`ProviderFieldError` when the secret to keep does not decrypt.

    Only the secrets kept are decrypted: a secret given anew replaces one the current
    key cannot read (the README's remedy for a changed DISPATCH_SECRET_KEY)."""
    masked = _masked(config)
    omitted: list[SecretPath] = []
    if stored is not None and stored.get("kind") == getattr(config, "kind", None):
        omitted = [(name,) for name in config.secret_fields if name not in given]
    if stored is not None and (masked or omitted):
        _check_same_destination(config, stored, masked, omitted)
    update: dict[str, Any] = {}
    for path in masked + omitted:
        secret = _stored_secret(stored, path) if stored is not None else ""
        if not secret:
            if path in masked:
                raise MaskedSecretError(".".join(path))
            continue
        if len(path) == 1:
            update[path[0]] = SecretStr(secret)
        else:  # a copy of the section (headers, query, body), the secret put back in it
            if path[0] not in update:
                update[path[0]] = copy.deepcopy(getattr(config, path[0]))
            set_secret(update, path, secret)
    return config.model_copy(update=update) if update else config


def destination(config: ProviderBase) -> str:
    """Where a provider's secrets go: the SMTP server with its security (``none`` would
    send a password in the clear), or the origin of the HTTP endpoint; over TLS, with the
    certificates taken for it when not the default CAs' (``tls_verify`` false takes any:
    whoever sits on the way gets the secret; ``tls_ca`` those its CA signs)."""
    if isinstance(config, SmtpFamilyBase):
        host = config.effective_host.lower()
        security = config.effective_security
        return f"{host}:{config.effective_port} ({security}{_trusted(config, security != 'none')})"
    if isinstance(config, HttpConfig):
        url = urlsplit(config.endpoint)
        origin = f"{url.scheme}://{url.netloc.rpartition('@')[2].lower()}"
        trusted = _trusted(config, url.scheme.lower() == "https")
        return f"{origin} ({trusted.removeprefix(', ')})" if trusted else origin
    return ""


def _trusted(config: ProviderBase, tls: bool) -> str:
    """``destination``'s words for the certificates a TLS connection takes ("" for the
    default CAs, or no TLS)."""
    if not tls:
        return ""
    if not config.tls_verify:
        return ", any certificate: tls_verify false"
    if config.tls_ca:  # (its PEM text, however its lines are broken)
        digest = hashlib.sha256("".join(config.tls_ca.split()).encode()).hexdigest()[:12]
        return f", certificates of tls_ca {digest}"
    return ""


def _check_same_destination(
    config: ProviderBase,
    stored: dict[str, Any],
    masked: list[SecretPath],
    omitted: list[SecretPath],
) -> None:
    """A stored secret is kept only for the destination it was given for: whoever may
    save providers must not be able to send a password they cannot read to a server of
    their choosing. Raises :class:`ProviderFieldError` naming the first secret kept."""
    kept = masked + [path for path in omitted if _stored_at(stored, path)]
    if not kept:
        return
    try:
        before = destination(decode_provider(orjson.dumps(stored), secrets=False)[0])
    except ValueError:  # no longer valid: not known to be the same
        before = ""
    after = destination(config)
    if before != after:
        field = ".".join(kept[0])
        raise ProviderFieldError(
            f"{field}: the provider now sends to {after} instead of {before or 'unknown'}; "
            f"a stored {field} only goes where it was given for: give the {field} itself "
            '(or "" for none)',
            field,
        )


def _stored_at(stored: dict[str, Any], path: SecretPath) -> Any:
    """What a stored configuration (its JSON) holds at ``path``, encrypted; None if none."""
    value: Any = stored
    for key in path:
        value = child(value, key)
    if path[0] == "body" and _sealed(value) is not None:  # ours only where listed
        listed = {tuple(p) for p in stored.get(BODY_SECRETS_FIELD) or ()}
        return value if path in listed else None
    return value


def save_provider(data: dict[str, Any], client: redis.Redis | None = None) -> ProviderBase:
    """Validate and store a provider configuration (create or replace).

    The callback token is kept across replacements so that the URL given to the ESP
    stays valid. What :func:`provider_view` shows can be saved back as it is: the mask
    in a secret field keeps the stored secret, the view's own fields are ignored. A
    replacement that leaves out a secret field (``password``) keeps the stored secret.
    Raises ``pydantic.ValidationError`` naming the field at fault,
    :class:`MaskedSecretError`, :class:`ProviderFieldError`.
    """
    r = client or store.sync_client()
    given = {k: v for k, v in data.items() if k not in VIEW_ONLY_FIELDS}
    config: ProviderBase = parse_provider_config(given)
    if isinstance(config, SmtpFamilyBase):  # (a read shows them applied: see provider_view)
        config = config.presets_left_empty()
    _check_endpoint(config)
    existing = r.get(store.provider_key(config.nickname))
    stored: dict[str, Any] | None = orjson.loads(existing) if existing else None
    token = str(stored.get(CALLBACK_TOKEN_FIELD, "")) if stored is not None else ""
    config = _keep_stored_secrets(config, given, stored)
    pipe = r.pipeline()
    pipe.set(
        store.provider_key(config.nickname), _encode(config, token or secrets.token_urlsafe(24))
    )
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
    try:
        return decode_provider(raw)
    except crypto.SecretKeyError:
        raise crypto.SecretKeyError(
            f"provider {nickname!r}: its stored secrets do not decrypt with "
            "DISPATCH_SECRET_KEY (was the key changed?): restore the key or list the old "
            "one in DISPATCH_PREVIOUS_SECRET_KEYS, or save the "
            "provider again with its secrets"
        ) from None


def list_providers(client: redis.Redis | None = None) -> list[str]:
    return sorted(str(n) for n in (client or store.sync_client()).smembers(store.PROVIDERS_SET))


class Resealed(NamedTuple):
    """What :func:`reseal_provider` found in one provider's stored secrets (their names)."""

    resealed: list[str]  # written with a previous key: written again with the current one
    current: list[str]  # written with the current key already
    unreadable: list[str]  # no key fits: left as they are


def reseal_provider(
    nickname: str, client: redis.Redis | None = None, *, check: bool = False
) -> Resealed:
    """Write the stored secrets of provider ``nickname`` that a key in
    DISPATCH_PREVIOUS_SECRET_KEYS wrote again with DISPATCH_SECRET_KEY, changing nothing
    else, so that the old key can leave the list once no provider needs it (the links of
    mail already delivered may still: README, changing the key). ``check``: only say.

    Written only over the configuration read: one saved meanwhile is read again, never
    overwritten. Raises :class:`ProviderNotFoundError`, ``SecretKeyError`` when
    DISPATCH_SECRET_KEY is not set (else every secret would read as one no key decrypts).
    """
    if not get_settings().secret_key.get_secret_value():
        raise crypto.SecretKeyError("DISPATCH_SECRET_KEY is not set")
    r = client or store.sync_client()
    key = store.provider_key(nickname)
    while True:
        raw = r.get(key)
        if raw is None:
            raise ProviderNotFoundError(nickname)
        data: dict[str, Any] = orjson.loads(raw)
        found = Resealed([], [], [])
        for where, at, sealed, name in list(_encrypted(data)):
            try:
                again = crypto.reencrypt(sealed)
            except crypto.SecretKeyError:
                found.unreadable.append(name)
                continue
            (found.current if again is None else found.resealed).append(name)
            if again is not None:
                where[at] = {"enc": again}
        if check or not found.resealed or r.eval(_SET_IF_SAME, 1, key, raw, orjson.dumps(data)):
            return found
        # saved (or deleted) meanwhile: read it again


# Replace a value only if it is still the one read (a provider saved meanwhile wins).
_SET_IF_SAME = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


# The hashes /metrics reads whose fields are ``<nickname>|...`` (dispatch.metrics).
_STATS_BY_PROVIDER = (store.MESSAGE_STATS_HASH, store.SEND_STATS_HASH)
_STATS_FIELDS_PER_READ = 1000


def delete_provider(nickname: str, client: redis.Redis | None = None) -> bool:
    """Delete the provider and its figures in /metrics (providers come and go for weeks:
    a deleted one's series are not exported for ever). Its pace, quota and connection
    slot keys expire by themselves (dispatch.limits). Batches sending through it stop
    within a second and pause their campaigns (dispatch.status_watch).

    The figures of every provider no longer saved go too: what a deleted provider's
    campaigns counted after its deletion (a cancel settling their messages, a batch's
    lease released with its send figures) would otherwise stay in the hashes /metrics
    reads at each scrape, for good. Each hash is read a thousand fields a round trip."""
    r = client or store.sync_client()
    saved = {str(n) for n in r.smembers(store.PROVIDERS_SET)} - {nickname}
    saved.add(store.NO_PROVIDER)
    stats = {
        name: [
            field
            for field, _ in r.hscan_iter(name, count=_STATS_FIELDS_PER_READ)
            if str(field).rpartition("|")[0] not in saved
        ]
        for name in _STATS_BY_PROVIDER
    }
    pipe = r.pipeline()
    pipe.delete(store.provider_key(nickname))
    pipe.srem(store.PROVIDERS_SET, nickname)
    for name, fields in stats.items():
        if fields:
            pipe.hdel(name, *fields)
    deleted = pipe.execute()[0]
    return bool(deleted)


def callback_url(nickname: str, token: str) -> str:
    """``<DISPATCH_PUBLIC_URL>/v1/callbacks/<nickname>/<token>`` (DESIGN §6)."""
    return f"{get_settings().public_url.rstrip('/')}/v1/callbacks/{nickname}/{token}"


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _one_click_warnings(config: ProviderBase) -> list[str]:
    """RFC 8058 §3.1: the one-click link of List-Unsubscribe MUST be https (Gmail and
    Yahoo ignore another): a preference center whose links are under an http://
    DISPATCH_PUBLIC_URL (one not on this machine: that is a trial) is said so."""
    url = urlsplit(get_settings().public_url)
    if config.preference_center == "none" or url.scheme == "https":
        return []
    if (url.hostname or "") in _LOOPBACK_HOSTS:
        return []
    return [
        f"preference_center: DISPATCH_PUBLIC_URL is {url.scheme}://{url.netloc}, so the "
        "List-Unsubscribe link in every message is not https, which RFC 8058 one-click "
        "unsubscribe requires (mailbox providers ignore it): set an https:// "
        "DISPATCH_PUBLIC_URL"
    ]


def time_limit_warnings(config: ProviderBase) -> list[str]:
    """A provider whose waits for answers may outlast what a batch run under this
    process's DISPATCH_VISIBILITY_TIMEOUT leaves its last chunk (settings.wait_problem)."""
    visibility = get_settings().visibility_timeout
    problem = wait_problem(visibility, config.longest_wait, config.wait_fields())
    return [problem] if problem else []


def providers_past_time_limit(client: redis.Redis | None = None) -> list[str]:
    """:func:`time_limit_warnings` of every stored provider, each naming it (for the
    workers: at their start and in ``dispatch health``)."""
    found = []
    for nickname, raw in _saved_configurations(client or store.sync_client()):
        try:
            config = decode_provider(raw, secrets=False)[0]
        except Exception:  # unreadable (its view says why)
            continue
        found += [f"provider {nickname!r}: {w}" for w in time_limit_warnings(config)]
    return found


def provider_view(nickname: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """The provider as shown to users: secrets masked, ``callback_url`` and ``warnings``
    added (a secret the current key cannot decrypt is one), and for the SMTP kinds
    ``connects_to`` (host, port and security with the presets applied); raises
    :class:`ProviderNotFoundError`."""
    raw = (client or store.sync_client()).get(store.provider_key(nickname))
    if raw is None:
        raise ProviderNotFoundError(nickname)
    return _view_of(nickname, raw)


def provider_views(client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """:func:`provider_view` of every saved provider, by nickname; one deleted while the
    list is read is left out (it answered 404 for the whole list, naming that one)."""
    return [_view_of(nickname, raw) for nickname, raw in _saved_configurations(client)]


def _saved_configurations(client: redis.Redis | None = None) -> list[tuple[str, str | bytes]]:
    """Each saved provider's nickname and stored configuration, by nickname, read in one
    round trip (one ``GET`` each took 300 round trips for 300 providers), without those
    deleted meanwhile."""
    r = client or store.sync_client()
    nicknames = list_providers(r)
    raws = r.mget([store.provider_key(n) for n in nicknames]) if nicknames else []
    return [(n, raw) for n, raw in zip(nicknames, raws, strict=True) if raw is not None]


def _view_of(nickname: str, raw: str | bytes) -> dict[str, Any]:
    """:func:`provider_view` of a stored configuration."""
    config, token = decode_provider(raw, secrets=False)
    view = public_view(config)
    view["callback_url"] = callback_url(nickname, token)
    view["warnings"] = (
        config.warnings()
        + _unreadable_secrets(raw)
        + _one_click_warnings(config)
        + time_limit_warnings(config)
    )
    if isinstance(config, SmtpFamilyBase):  # host "", port 0: the preset's; where it is
        # DESIGN §2's defaults, shown in their own fields too (saved back, they are
        # left empty again: save_provider).
        where = {
            "host": config.effective_host,
            "port": config.effective_port,
            "security": config.effective_security,
        }
        view.update(where)
        view["connects_to"] = dict(where)
    return view
