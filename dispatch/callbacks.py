"""The callback gateway: authenticate, parse by provider kind, store durably, answer.

:func:`ingest` serves ``POST /v1/callbacks/{nickname}/{token}`` (DESIGN §6):

1. the nickname and token are checked (constant time; an unknown nickname and a wrong
   token get the same answer);
2. the body is parsed by the provider's kind: the generic format (``smtp``, ``gmail``,
   ``http``), SNS envelopes (``ses``), the Event Webhook (``sendgrid``);
3. an SNS ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL``;
4. the accepted events are written to the Redis inbox (one MULTI) **before** the answer,
   then the ``dispatch.process_callback`` task is enqueued on the ``events`` queue. A lost
   task is recovered from the inbox (``dispatch.recover_callbacks``);
5. the answer takes the shape of the provider's kind.

Answers: a request refused as a whole (malformed, failed authentication or signature,
too many events, a body over :data:`MAX_BODY_BYTES`) gets ``{"status": "error",
"message": ..., "error_code": 400}`` for every kind (the only seed shape that carries a
message); event-level results get the kind's shape: ``success`` / ``partial_success`` for
``smtp``, ``gmail``, ``ses``, ``sendgrid`` and ``TOTAL_EVENTS`` / ``PROCESSED_EVENTS`` /
``UNPROCESSED_EVENTS`` for ``http``. A request whose every event is bad is answered 400.
When Redis cannot take the events the answer is 503 (with ``Retry-After``, added by the
route), so the provider retries.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
import redis
from prometheus_client import Counter

from dispatch import store
from dispatch.effects import inbox_record
from dispatch.provider_store import CALLBACK_TOKEN_FIELD, decode_provider
from dispatch.settings import get_settings
from providers.callbacks import (
    CallbackRejected,
    CallbackResult,
    ChainedCertificateSource,
    DirectoryCertificateSource,
    EventType,
    HttpsCertificateSource,
    SnsVerifier,
    escape_text,
    parse_generic,
    parse_sendgrid,
    parse_ses_callback,
)
from providers.config import (
    NICKNAME_PATTERN,
    ProviderBase,
    SendgridConfig,
    SesConfig,
)

log = logging.getLogger(__name__)

SUCCESS_MESSAGE = "Callback processed successfully"
AUTH_FAILED = "invalid callback URL"
SERVER_ERROR = "Server error"
SUBSCRIBE_TIMEOUT = 10.0
# Larger than any real batch (SendGrid posts at most 768 KB, reference §2.1).
MAX_BODY_BYTES = 8 * 1024 * 1024
# DESIGN §6: a request malformed as a whole is a 400, as more than 1000 events are.
BODY_TOO_LARGE = f"invalid payload: body larger than {MAX_BODY_BYTES} bytes"

# By provider nickname, as the other metrics: nicknames are the operator's, few and known
# (only authenticated requests are counted, so a caller cannot invent one).
CALLBACK_EVENTS = Counter(
    "dispatch_callback_events",
    "Callback events taken in (stored, or recorded and ignored: other) or refused by index "
    "(invalid), by provider and type; a request answered 5xx counts when it comes again.",
    ["provider", "type"],
)
CALLBACK_REQUESTS = Counter(
    "dispatch_callback_requests",
    "Callback requests answered, by HTTP status.",
    ["status"],
)
# Present from the start, so that the first refusal shows as an increase (an alert's rate):
# every status ingest answers (502: an SNS subscription not confirmed).
for _status in ("200", "400", "500", "502", "503"):
    CALLBACK_REQUESTS.labels(_status)

Enqueue = Callable[[str], None]
_NICKNAME = re.compile(NICKNAME_PATTERN)
# Compared against when the nickname is unknown, so both refusals take the same path.
_DUMMY_TOKEN = secrets.token_urlsafe(24)


@dataclass(frozen=True)
class CallbackAnswer:
    """The HTTP status and JSON body to answer a callback request with."""

    status: int
    body: dict[str, Any]


def error_answer(status: int, message: str) -> CallbackAnswer:
    """The seeds' error shape: ``{"status": "error", "message", "error_code"}``.

    Messages may quote what the provider sent: a lone surrogate in one is escaped, so that
    the answer can be encoded.
    """
    body = {"status": "error", "message": escape_text(message), "error_code": status}
    return CallbackAnswer(status, body)


def authenticate(nickname: str, token: str, client: redis.Redis | None = None) -> ProviderBase:
    """The provider whose callback URL this is.

    Raises :class:`CallbackRejected` (400, one message for an unknown nickname and a wrong
    token), ``redis.RedisError`` when Redis fails, ``SecretKeyError`` or
    ``pydantic.ValidationError`` when the stored provider cannot be read.
    """
    raw = None
    if _NICKNAME.fullmatch(nickname):
        raw = (client or store.sync_client()).get(store.provider_key(nickname))
    stored = _DUMMY_TOKEN
    if raw is not None:
        stored = str(orjson.loads(raw).get(CALLBACK_TOKEN_FIELD) or _DUMMY_TOKEN)
    matches = hmac.compare_digest(token.encode(), stored.encode())
    if raw is None or not matches:
        raise CallbackRejected(AUTH_FAILED)
    return decode_provider(raw)[0]


@functools.lru_cache(maxsize=4)
def sns_verifier(cert_dir: str, host_pattern: str) -> SnsVerifier:
    """The process's verifier for these settings (it caches certificates by URL).

    Certificates are looked up in ``cert_dir`` (``DISPATCH_SNS_CERT_DIR``) by the file
    name of ``SigningCertURL`` first, then fetched over HTTPS.
    """
    https = HttpsCertificateSource()
    source = ChainedCertificateSource(DirectoryCertificateSource(cert_dir), https)
    return SnsVerifier(source if cert_dir else https, host_pattern=host_pattern)


def parse(config: ProviderBase, body: bytes, headers: Mapping[str, str]) -> CallbackResult:
    """Parse ``body`` in the format of the provider's kind.

    Raises :class:`CallbackRejected` for a request refused as a whole.
    """
    settings = get_settings()
    if isinstance(config, SesConfig):
        verifier = sns_verifier(settings.sns_cert_dir, settings.sns_host_pattern)
        max_age = settings.sns_max_age_seconds
        return parse_ses_callback(
            body,
            verifier=verifier,
            topic_arns=config.sns_topic_arns,
            headers=headers,
            max_age=timedelta(seconds=max_age) if max_age else None,
        )
    if isinstance(config, SendgridConfig):
        tolerance = settings.sendgrid_signature_tolerance_seconds
        return parse_sendgrid(
            body,
            headers=headers,
            public_key=config.webhook_public_key or None,
            tolerance=timedelta(seconds=tolerance) if tolerance else None,
        )
    return parse_generic(body)


def confirm_subscription(url: str, timeout: float = SUBSCRIBE_TIMEOUT) -> None:
    """GET an SNS ``SubscribeURL`` (already checked by :class:`SnsVerifier`).

    TLS is verified against the system's CA store (``SSL_CERT_FILE`` is honoured);
    redirects are not followed; the answer's status is all that is read (its body, of
    any size, is not). Raises :class:`CallbackRejected` (502) when the GET fails, so that
    SNS sends the confirmation again.
    """
    try:
        with (
            httpx.Client(
                verify=ssl.create_default_context(), timeout=timeout, follow_redirects=False
            ) as client,
            client.stream("GET", url) as response,
        ):
            pass
    except httpx.HTTPError as exc:
        raise CallbackRejected(f"SubscribeURL not confirmed: {type(exc).__name__}", 502) from exc
    if not response.is_success:
        raise CallbackRejected(f"SubscribeURL not confirmed: HTTP {response.status_code}", 502)


def store_batch(
    provider: str,
    kind: str,
    events: Sequence[Mapping[str, Any]],
    client: redis.Redis | None = None,
) -> str:
    """Write accepted events (:func:`~dispatch.effects.inbox_record`'s) to the inbox as
    an :class:`~dispatch.effects.InboxBatch` (one MULTI); returns the batch id.

    Raises ``redis.RedisError``: then nothing was stored.
    """
    r = client or store.sync_client()
    received = time.time()
    batch_id = f"{time.time_ns():x}-{secrets.token_hex(4)}"
    batch = {"id": batch_id, "provider": provider, "kind": kind, "received": received,
             "events": events}  # fmt: skip
    try:
        data = orjson.dumps(batch)
    except TypeError:  # an integer past 64 bits: a meta's seq may be any integer
        data = json.dumps(batch).encode()
    pipe = r.pipeline(transaction=True)
    pipe.hset(store.CALLBACK_INBOX_HASH, batch_id, data)
    pipe.zadd(store.CALLBACK_PENDING_ZSET, {batch_id: received})
    pipe.execute()
    return batch_id


def celery_enqueue(batch_id: str) -> None:
    """Hand a stored batch to ``dispatch.process_callback`` on the ``events`` queue.

    Raises what the broker raises (the batch stays in the inbox for recovery).
    """
    from dispatch.tasks import process_callback

    process_callback.apply_async((batch_id,), queue=store.EVENTS_QUEUE, retry=False)


def answer(kind: str, result: CallbackResult) -> CallbackAnswer:
    """The answer to a parsed request, in the shape of the provider's kind (DESIGN §6)."""
    status = 400 if result.total and not result.processed else 200
    if kind == "http":
        return CallbackAnswer(
            status,
            {
                "TOTAL_EVENTS": result.total,
                "PROCESSED_EVENTS": result.processed,
                "UNPROCESSED_EVENTS": [
                    {"index": item.index, "error": escape_text(item.error)}
                    for item in result.errors
                ],
            },
        )
    if not result.failed:
        return CallbackAnswer(status, {"status": "success", "message": SUCCESS_MESSAGE})
    if not result.processed:
        first = result.errors[0]
        message = first.error if result.total == 1 else f"event {first.index}: {first.error}"
        return error_answer(400, message)
    return CallbackAnswer(
        status,
        {
            "status": "partial_success",
            "processed": result.processed,
            "failed": result.failed,
            "errors": [
                {"event_index": item.index, "error": escape_text(item.error)}
                for item in result.errors
            ],
        },
    )


def ingest(
    nickname: str,
    token: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    client: redis.Redis | None = None,
    enqueue: Enqueue | None = None,
    config: ProviderBase | None = None,
) -> CallbackAnswer:
    """Handle one callback request end to end; never raises (every outcome is an answer).

    ``enqueue`` hands a stored batch to its task (default: Celery); when it fails the
    batch is still durable, the answer is still 200 and recovery applies it later.
    ``config``: the provider :func:`check_url` found for this URL (else it is looked up).
    """
    r = client or store.sync_client()
    kind = "unknown"
    try:
        config = config or authenticate(nickname, token, r)
        kind = str(getattr(config, "kind", "unknown"))
        # The provider's refused-events series exists before its first refusal, so that
        # the refusal shows as an increase (as the request statuses above).
        CALLBACK_EVENTS.labels(nickname, "invalid")
        result = parse(config, body, headers)
        if result.subscribe_url:
            confirm_subscription(result.subscribe_url)
            log.info("SNS subscription confirmed", extra={"provider": nickname})
        if result.ignored:
            log.info("callback ignored: %s", result.ignored, extra={"provider": nickname})
        events = [e for e in result.events if e.type is not EventType.OTHER]
        if result.failed:
            first = result.errors[0]
            log.info(
                "callback for %s: %d of %d events refused (event %d: %s)",
                nickname,
                result.failed,
                result.total,
                first.index,
                first.error,
                extra={"provider": nickname},
            )
        if events:
            batch_id = store_batch(nickname, kind, [inbox_record(e) for e in events], r)
            try:
                (enqueue or celery_enqueue)(batch_id)
            except Exception:  # durable already: recovery will hand it out again
                log.exception("callback batch %s stored but not enqueued", batch_id)
        # Counted once accepted: a request answered 503 is sent again, and counted then.
        count_events(nickname, result)
        reply = answer(kind, result)
    except Exception as exc:
        reply = _refusal(nickname, exc)
    CALLBACK_REQUESTS.labels(str(reply.status)).inc()
    return reply


def check_url(
    nickname: str, token: str, client: redis.Redis | None = None
) -> ProviderBase | CallbackAnswer:
    """The provider whose callback URL this is, or the answer that refuses the request
    (logged and counted as :func:`ingest`'s): the route asks before it reads a body, so
    that a caller without the URL's token cannot make the API hold megabytes."""
    try:
        return authenticate(nickname, token, client)
    except Exception as exc:
        reply = _refusal(nickname, exc)
    CALLBACK_REQUESTS.labels(str(reply.status)).inc()
    return reply


def _refusal(nickname: str, exc: Exception) -> CallbackAnswer:
    """The answer to a callback request that failed with ``exc``, logged (call it from
    the ``except`` block: an unexpected error's traceback goes with it)."""
    if isinstance(exc, CallbackRejected):
        # A refusal is the provider's to fix, or someone probing: named here, since the
        # provider only sees the answer and the access log only the status.
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(
            level,
            "callback for %s not accepted: %s",
            nickname,
            exc.message,
            extra={"provider": nickname, "status": exc.status},
        )
        return error_answer(exc.status, exc.message)
    if isinstance(exc, redis.RedisError):
        log.error(
            "callback for %s refused, Redis unavailable: %s",
            nickname,
            exc,
            extra={"provider": nickname},
        )
        return error_answer(503, SERVER_ERROR)
    log.exception("callback for %s failed", nickname)
    return error_answer(500, SERVER_ERROR)


def count_events(nickname: str, result: CallbackResult) -> None:
    """Add a request's events to ``dispatch_callback_events_total``, by type and refused."""
    counts: dict[str, int] = {}
    for event in result.events:  # one metric update a type, not one an event
        counts[event.type.value] = counts.get(event.type.value, 0) + 1
    for kind, count in counts.items():
        CALLBACK_EVENTS.labels(nickname, kind).inc(count)
    if result.failed:
        CALLBACK_EVENTS.labels(nickname, "invalid").inc(result.failed)


def refuse_too_large() -> CallbackAnswer:
    """The answer to a body over :data:`MAX_BODY_BYTES` (never read to its end)."""
    reply = error_answer(400, BODY_TOO_LARGE)
    CALLBACK_REQUESTS.labels(str(reply.status)).inc()
    return reply


def probe(nickname: str, token: str, client: redis.Redis | None = None) -> CallbackAnswer:
    """Answer a provider's GET or HEAD on its callback URL: 200 when the URL is valid."""
    try:
        authenticate(nickname, token, client)
    except CallbackRejected as exc:
        return error_answer(exc.status, exc.message)
    except redis.RedisError:
        return error_answer(503, SERVER_ERROR)
    except Exception:
        log.exception("callback probe for %s failed", nickname)
        return error_answer(500, SERVER_ERROR)
    return CallbackAnswer(200, {"status": "success", "message": "Callback URL is valid"})
