"""Service settings: every ``DISPATCH_*`` environment variable, read in one place."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
DEFAULT_ACCOUNT_ID = "1"
DEFAULT_BATCH_SIZE = 1000
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_THROTTLES = 50
DEFAULT_RETRY_BASE_SECONDS = 2.0
DEFAULT_RETRY_MAX_SECONDS = 600.0
DEFAULT_INLINE_RETRY_SECONDS = 30.0
DEFAULT_VISIBILITY_TIMEOUT = 3600
DEFAULT_SESSIONS_PER_WORKER = 8
DEFAULT_LEASE_TTL_MS = 60_000
DEFAULT_SESSION_IDLE_SECONDS = 2.0
DEFAULT_SLOT_WAIT_SECONDS = 5.0
# Callbacks: how long a seen event is remembered (SendGrid retries for up to 24 h, SNS
# for up to 1 h, reference §1.1 and §2.1), and how old an unprocessed inbox batch must be
# before its task is presumed lost and it is enqueued again.
DEFAULT_CALLBACK_DEDUPE_TTL_SECONDS = 3 * 24 * 3600
DEFAULT_CALLBACK_RECOVERY_SECONDS = 60.0
DEFAULT_SENDGRID_SIGNATURE_TOLERANCE_SECONDS = 72 * 3600
_FOLLOWS_DEDUPE_TTL: Any = None  # (the tolerance's default, read once the TTL is known)
# SNS retries an HTTP/S delivery for at most an hour (a hard limit of every delivery
# policy): an older signed envelope is a replay (providers.callbacks.sns).
DEFAULT_SNS_MAX_AGE_SECONDS = 2 * 3600
# What Redis keeps: a finished campaign's per-message data for this many days after its
# last change (0: for ever), and about this many entries of the dispatch:events stream.
DEFAULT_RETENTION_DAYS = 30.0
# SES and SendGrid sends: how long each message's provider id is kept, to attribute a
# callback that carries no meta (dispatch.provider_ids). Bounces and complaints come
# within hours to days of the send.
DEFAULT_PROVIDER_ID_DAYS = 7.0
DEFAULT_EVENTS_MAXLEN = 1_000_000
# The reputation guard (dispatch.reputation): shares of sent messages past which a running
# campaign pauses, judged once this many were sent.
DEFAULT_PAUSE_HARD_BOUNCE_RATE = 0.05
DEFAULT_PAUSE_SPAM_RATE = 0.003
DEFAULT_PAUSE_MIN_SENT = 1000
# The failure breaker (dispatch.batch_outcomes): a campaign that has sent nothing pauses
# once this many of its messages failed, over all its batches, not for the recipients'
# own fault (0: never).
DEFAULT_PAUSE_AFTER_FAILURES = 100
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's from_url accepts
# Settings whose value an error message must not repeat (a Redis URL may hold a password).
_SECRET_FIELDS = frozenset({"secret_key", "previous_secret_keys", "api_tokens", "redis_url"})


class SettingsError(RuntimeError):
    """A ``DISPATCH_*`` variable holds a value the service cannot use; the message names
    each variable at fault (a RuntimeError, so no ``except ValueError`` swallows it)."""


class Settings(BaseSettings):
    """Configuration from the environment (prefix ``DISPATCH_``); see the README table."""

    # A number is finite: "inf" seconds or days is no setting (DISPATCH_RETRY_MAX_SECONDS=inf
    # made housekeeping wait for ever before it restarted a stalled campaign).
    model_config = SettingsConfigDict(
        env_prefix="DISPATCH_", frozen=True, extra="ignore", allow_inf_nan=False
    )

    # Unset: an embedded Redis server is started for the process tree (dispatch.redis_server).
    redis_url: str = ""
    public_url: str = DEFAULT_PUBLIC_URL
    api_tokens: Annotated[tuple[str, ...], NoDecode] = ()
    # Encrypts unsubscribe tokens and provider secrets at rest.
    secret_key: SecretStr = SecretStr("")
    # Keys used before secret_key (comma-separated): what they wrote is still read
    # (unsubscribe links of mail already delivered, stored secrets), nothing is written
    # with them (dispatch.crypto).
    previous_secret_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Part of every message's meta, the value of a machine-read header (DESIGN §3):
    # printable ASCII without the '|' between the meta's fields.
    account_id: str = DEFAULT_ACCOUNT_ID
    allow_private_endpoints: bool = False
    sns_cert_dir: str = ""
    sns_host_pattern: str = r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$"

    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=1000)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=50)
    # A try the provider throttled (it asked us to slow down: SMTP 421/450/451/454, HTTP
    # 429/503) is not an attempt: the message waits, with growing backoff, up to this
    # many throttled tries (about 5 hours at the default backoff), then fails.
    max_throttles: int = Field(default=DEFAULT_MAX_THROTTLES, ge=1, le=1000)
    retry_base_seconds: float = Field(default=DEFAULT_RETRY_BASE_SECONDS, gt=0)
    retry_max_seconds: float = Field(default=DEFAULT_RETRY_MAX_SECONDS, gt=0)
    # Retries due within this many seconds wait inside the batch task; later ones are
    # handed back to the broker (never as a countdown past the visibility timeout).
    inline_retry_seconds: float = Field(default=DEFAULT_INLINE_RETRY_SECONDS, ge=0)
    visibility_timeout: int = Field(default=DEFAULT_VISIBILITY_TIMEOUT, ge=60)
    # Batch tasks each worker process reserves beyond the one it runs (Celery's
    # worker_prefetch_multiplier): 4 saves a fetch per batch; 1 makes a campaign created
    # behind a paced one wait only for the batches running (README: Operations).
    worker_prefetch: int = Field(default=4, ge=1, le=64)
    # SMTP connections (HTTP clients) one worker process opens per provider at most;
    # the provider's max_connections caps it across all workers.
    sessions_per_worker: int = Field(default=DEFAULT_SESSIONS_PER_WORKER, ge=1, le=64)
    # Provider sessions (connections) a worker process keeps open after a batch for the
    # next one, closed after this many idle seconds (0: closed with each batch).
    session_idle_seconds: float = Field(default=DEFAULT_SESSION_IDLE_SECONDS, ge=0, le=300)
    # A batch none of whose sessions got a connection slot of its provider within this
    # many seconds (its max_connections all in use elsewhere) goes back to the broker
    # for a moment, so that its worker process runs other providers' batches meanwhile.
    slot_wait_seconds: float = Field(default=DEFAULT_SLOT_WAIT_SECONDS, gt=0, le=300)
    # A batch's lease: a dead worker's batch can be taken over this long after it died.
    lease_ttl_ms: int = Field(default=DEFAULT_LEASE_TTL_MS, ge=200)
    callback_dedupe_ttl_seconds: int = Field(default=DEFAULT_CALLBACK_DEDUPE_TTL_SECONDS, ge=60)
    callback_recovery_seconds: float = Field(default=DEFAULT_CALLBACK_RECOVERY_SECONDS, ge=0)
    # SNS: largest accepted age of an envelope's signed Timestamp (0: no bound). Shorter
    # than the dedupe TTL, so that a replayed notification is refused or recognised.
    sns_max_age_seconds: int = Field(default=DEFAULT_SNS_MAX_AGE_SECONDS, ge=0)
    # Signed Event Webhook: largest accepted distance between its timestamp and now
    # (0: no bound; reference §2.5 advises a generous window). At most the dedupe TTL:
    # a post is signed before it is received, so a replay within the window is recognised.
    # Unset: DEFAULT_SENDGRID_SIGNATURE_TOLERANCE_SECONDS, or the dedupe TTL when shorter.
    sendgrid_signature_tolerance_seconds: int = Field(default=_FOLLOWS_DEDUPE_TTL, ge=0)
    retention_days: float = Field(default=DEFAULT_RETENTION_DAYS, ge=0)
    provider_id_days: float = Field(default=DEFAULT_PROVIDER_ID_DAYS, ge=0, le=365)
    events_maxlen: int = Field(default=DEFAULT_EVENTS_MAXLEN, ge=1000)
    # Each worker sends itself a canary task this often (dispatch.worker_health).
    worker_canary_seconds: float = Field(default=30.0, gt=0, le=3600)
    pause_hard_bounce_rate: float = Field(default=DEFAULT_PAUSE_HARD_BOUNCE_RATE, ge=0, le=1)
    pause_spam_rate: float = Field(default=DEFAULT_PAUSE_SPAM_RATE, ge=0, le=1)
    pause_min_sent: int = Field(default=DEFAULT_PAUSE_MIN_SENT, ge=1)
    pause_after_failures: int = Field(default=DEFAULT_PAUSE_AFTER_FAILURES, ge=0)
    log_level: str = "INFO"
    # "masked": recipients' addresses in log lines as j***@example.com (dispatch.logs).
    log_addresses: Literal["full", "masked"] = "full"

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # Each key as written, its spaces kept (dispatch.crypto reads with it stripped
        # too, for "old, older"): DISPATCH_SECRET_KEY is used as it is, and one that ended
        # in a newline (a Kubernetes secret made from a file) wrote everything with it.
        if isinstance(value, str):
            return tuple(k for k in value.split(",") if k.strip())
        return value

    @field_validator("log_addresses", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        # (the pattern alone answered "String should match pattern '^[\x20-\x7b...'")
        if not re.fullmatch(r"[\x20-\x7b\x7d\x7e]{1,64}", value):
            raise ValueError(
                "must be 1 to 64 printable ASCII characters without '|' (it is a field "
                "of every message's meta, which '|' separates)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            _ = parts.port
        except ValueError:  # its text repeats the "port": a password cut at a '/', '?', '#'
            raise ValueError(
                "has a port that is not a number (a password with '/', '?' or '#' must "
                "be percent-encoded: %2F, %3F, %23)"
            ) from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        # The base of the links in every message (List-Unsubscribe, callback URLs).
        if not value.isascii():  # List-Unsubscribe is a machine-read header
            raise ValueError("must be ASCII (an internationalized host in its xn-- form)")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        _ = parts.port
        return value

    @field_validator("sns_max_age_seconds")
    @classmethod
    def _within_dedupe(cls, value: int, info: ValidationInfo) -> int:
        ttl = info.data.get("callback_dedupe_ttl_seconds")
        if value and ttl is not None and value >= ttl:
            raise ValueError(
                f"must be less than DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS ({ttl}): an SNS "
                "message replayed after that would be applied again"
            )
        return value

    @field_validator("sendgrid_signature_tolerance_seconds", mode="before")
    @classmethod
    def _default_within_dedupe(cls, value: object, info: ValidationInfo) -> object:
        # A TTL lowered (to save memory) shortens the default window with it: refusing it
        # stopped at start a deployment that never set the tolerance (nor uses SendGrid).
        if value is not None:
            return value
        ttl = info.data.get("callback_dedupe_ttl_seconds")
        default = DEFAULT_SENDGRID_SIGNATURE_TOLERANCE_SECONDS
        return default if ttl is None else min(default, ttl)

    @field_validator("sendgrid_signature_tolerance_seconds")
    @classmethod
    def _not_past_dedupe(cls, value: int, info: ValidationInfo) -> int:
        ttl = info.data.get("callback_dedupe_ttl_seconds")
        if value and ttl is not None and value > ttl:
            raise ValueError(
                f"must not be more than DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS ({ttl}): a "
                "signed SendGrid post replayed after that would be applied again"
            )
        return value

    @field_validator("sns_host_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value


def describe(exc: ValidationError) -> str:
    """One line per variable at fault: ``DISPATCH_BATCH_SIZE='abc': ...``."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        shown = "" if name in _SECRET_FIELDS else f"={err.get('input')!r}"
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"DISPATCH_{name.upper()}{shown}: {message}")
    return "; ".join(lines)


# What a batch run keeps after its last wait on the provider ended (its outcomes written,
# the batch handed on) before the task's time limit, at most (a tenth of a short limit).
RUN_MARGIN_SECONDS = 10.0


def task_time_limit(visibility_timeout: int) -> int:
    """Seconds after which Celery kills a task (its hard time limit): half the visibility
    timeout, well inside it (PITFALLS: no real acks on Redis)."""
    return visibility_timeout // 2


def cut_after(visibility_timeout: int) -> float:
    """Seconds into a batch run after which a wait for a provider's answers is cut short
    and no chunk starts (dispatch.sending): just before Celery kills the task."""
    limit = task_time_limit(visibility_timeout)
    return limit - min(RUN_MARGIN_SECONDS, limit / 10)


def wait_problem(visibility_timeout: int, wait: float, fields: str) -> str:
    """Why a provider whose chunk may wait ``wait`` seconds for answers (made of
    ``fields``, its timeouts) does not fit a batch run under this visibility timeout, ""
    when it does. A run takes chunks for a quarter of it (dispatch.status_watch); the
    task is killed at half of it, and a wait still on then is cut short before
    (dispatch.sending): the chunk's messages end unknown. (A chunk a pace holds may start
    an eighth later: what it leaves is not asked of every paced provider.)"""
    room = cut_after(visibility_timeout) - visibility_timeout / 4
    if wait <= room:
        return ""
    least = math.ceil((wait + RUN_MARGIN_SECONDS) * 4)
    return (
        f"its sends may wait {wait:g} s for answers ({fields}), but under "
        f"DISPATCH_VISIBILITY_TIMEOUT={visibility_timeout} a batch run's last chunk may "
        f"start {max(0.0, room):g} s before the run is cut short at its time limit: a later "
        "answer is lost and its messages end unknown; set DISPATCH_VISIBILITY_TIMEOUT to "
        f"{least} or more, or lower them"
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (read once); raises :class:`SettingsError`."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
