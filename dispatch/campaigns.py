"""Campaign lifecycle: create (idempotent by id), append recipients, start, read status."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from dispatch import store
from dispatch.models import (
    COUNTER_NAMES,
    CampaignContent,
    CampaignRequest,
    CampaignStatus,
    Recipient,
)
from dispatch.provider_store import ProviderNotFoundError, load_provider
from dispatch.rendering import SERVICE_NAMES, CompiledContent, RenderError
from dispatch.settings import get_settings

APPEND_CHUNK = 1000
EnqueueBatch = Callable[[str, int], None]


class CampaignError(ValueError):
    """The campaign is invalid; ``field`` names what is at fault (HTTP 422)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class CampaignConflictError(CampaignError):
    """The id is taken by a campaign with other content (HTTP 409)."""


class CampaignNotFoundError(KeyError):
    """No campaign has that id."""


class CampaignStateError(CampaignError):
    """The operation does not fit the campaign's status (HTTP 409)."""


def _fingerprint(request: CampaignRequest) -> str:
    body = request.model_dump(mode="json", exclude={"id"})
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def validate_content(request: CampaignRequest) -> CompiledContent:
    """Compile the templates and check that every variable they use can be resolved.

    Raises :class:`CampaignError` naming the template part or the unknown variable.
    """
    try:
        compiled = CompiledContent(
            subject=request.subject, html=request.html, text=request.text, amp=request.amp
        )
    except RenderError as exc:
        raise CampaignError(str(exc), field=str(exc).split(":", 1)[0]) from exc
    known = set(request.vars) | SERVICE_NAMES
    if request.recipients:
        # A name is resolvable if the campaign or every recipient provides it.
        missing_for = {
            name: sum(1 for r in request.recipients if name not in r.vars)
            for name in compiled.variables - known
        }
        unknown = sorted(name for name, count in missing_for.items() if count)
    else:
        unknown = []
    if unknown:
        raise CampaignError(
            f"unknown template variable(s): {', '.join(unknown)} (in neither the campaign "
            "vars nor every recipient's vars)",
            field="vars",
        )
    return compiled


def create_campaign(
    request: CampaignRequest,
    *,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
) -> tuple[str, bool]:
    """Store a campaign and, unless it is a draft or has no recipients, start it.

    Returns ``(campaign_id, created)``; re-posting the same id with the same content
    returns ``created=False`` and changes nothing. Raises :class:`CampaignError` (422),
    :class:`CampaignConflictError` (409).
    """
    r = client or store.sync_client()
    try:
        load_provider(request.provider, r)
    except ProviderNotFoundError:
        raise CampaignError(f"provider {request.provider!r} does not exist", "provider") from None
    validate_content(request)
    campaign_id = request.id or secrets.token_hex(8)
    content = request.content(campaign_id)
    _check_provider_payload(content, request.recipients, r)
    fingerprint = _fingerprint(request)
    key = store.campaign_key(campaign_id)
    created = r.hsetnx(key, "fingerprint", fingerprint)
    if not created:
        if r.hget(key, "fingerprint") != fingerprint:
            raise CampaignConflictError(
                f"campaign {campaign_id!r} exists with other content", field="id"
            )
        return campaign_id, False
    now = time.time()
    pipe = r.pipeline()
    pipe.hset(
        key,
        mapping={
            "content": content.model_dump_json(),
            "status": CampaignStatus.DRAFT.value,
            "created_at": str(now),
            "reason": "",
        },
    )
    pipe.hset(store.counters_key(campaign_id), mapping={name: 0 for name in COUNTER_NAMES})
    pipe.zadd(store.CAMPAIGNS_ZSET, {campaign_id: now})
    pipe.execute()
    if request.recipients:
        append_recipients(campaign_id, request.recipients, client=r)
        if not request.draft:
            start_campaign(campaign_id, client=r, enqueue=enqueue)
    return campaign_id, True


def _check_provider_payload(
    content: CampaignContent, recipients: list[Recipient], r: redis.Redis
) -> None:
    """Provider-specific checks of the content (the HTTP kind checks its placeholders)."""
    from dispatch import payload_checks

    payload_checks.check_campaign_payload(content, recipients, load_provider(content.provider, r))


def append_recipients(
    campaign_id: str, recipients: Iterable[Recipient], *, client: redis.Redis | None = None
) -> int:
    """Append recipients to a draft campaign, streaming in chunks; returns how many.

    Raises :class:`CampaignNotFoundError`, :class:`CampaignStateError` if it has started.
    """
    r = client or store.sync_client()
    status = get_status(campaign_id, r)
    if status not in (CampaignStatus.DRAFT,):
        raise CampaignStateError(f"campaign {campaign_id!r} is {status}: recipients are closed")
    count = 0
    for chunk in _chunks(recipients, APPEND_CHUNK):
        pipe = r.pipeline(transaction=False)
        pipe.rpush(
            store.recipients_key(campaign_id), *(orjson.dumps(x.model_dump()) for x in chunk)
        )
        pipe.hincrby(store.counters_key(campaign_id), "total", len(chunk))
        pipe.hincrby(store.counters_key(campaign_id), "queued", len(chunk))
        pipe.execute()
        count += len(chunk)
    return count


def _chunks(items: Iterable[Recipient], size: int) -> Iterator[list[Recipient]]:
    chunk: list[Recipient] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def start_campaign(
    campaign_id: str, *, client: redis.Redis | None = None, enqueue: EnqueueBatch | None = None
) -> int:
    """Start a draft (or release a scheduled) campaign; returns the number of batches.

    A campaign whose ``send_at`` is in the future becomes ``scheduled`` and is released
    by beat. Raises :class:`CampaignStateError` when it is not a draft or scheduled.
    """
    r = client or store.sync_client()
    content = load_content(campaign_id, r)
    status = get_status(campaign_id, r)
    if status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        raise CampaignStateError(f"campaign {campaign_id!r} is {status}, cannot start")
    now = datetime.now(UTC)
    if content.send_at is not None and content.send_at > now:
        r.hset(store.campaign_key(campaign_id), "status", CampaignStatus.SCHEDULED.value)
        r.zadd(store.SCHEDULED_ZSET, {campaign_id: content.send_at.timestamp()})
        return 0
    total = r.llen(store.recipients_key(campaign_id))
    batches = math.ceil(total / get_settings().batch_size)
    pipe = r.pipeline()
    pipe.hset(
        store.campaign_key(campaign_id),
        mapping={
            "status": CampaignStatus.RUNNING.value,
            "send_date": now.strftime("%Y%m%d"),
            "started_at": str(now.timestamp()),
            "batches": str(batches),
            "batch_size": str(get_settings().batch_size),
        },
    )
    pipe.zrem(store.SCHEDULED_ZSET, campaign_id)
    pipe.execute()
    if total == 0:
        finish_if_done(campaign_id, r)
        return 0
    send = enqueue or _celery_enqueue
    for batch in range(batches):
        send(campaign_id, batch)
    return batches


def _celery_enqueue(campaign_id: str, batch: int) -> None:
    from dispatch.tasks import send_batch

    send_batch.apply_async((campaign_id, batch), queue="sends")


def load_content(campaign_id: str, client: redis.Redis | None = None) -> CampaignContent:
    """The campaign's content; raises :class:`CampaignNotFoundError`."""
    raw = (client or store.sync_client()).hget(store.campaign_key(campaign_id), "content")
    if raw is None:
        raise CampaignNotFoundError(campaign_id)
    return CampaignContent.model_validate_json(raw)


def get_status(campaign_id: str, client: redis.Redis | None = None) -> CampaignStatus:
    """The campaign's status; raises :class:`CampaignNotFoundError`."""
    raw = (client or store.sync_client()).hget(store.campaign_key(campaign_id), "status")
    if raw is None:
        raise CampaignNotFoundError(campaign_id)
    return CampaignStatus(str(raw))


def get_counters(campaign_id: str, client: redis.Redis | None = None) -> dict[str, int]:
    raw = (client or store.sync_client()).hgetall(store.counters_key(campaign_id))
    return {name: int(raw.get(name, 0)) for name in COUNTER_NAMES}


def campaign_summary(campaign_id: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """Status, reason and counters of a campaign (``GET /v1/campaigns/{id}``)."""
    r = client or store.sync_client()
    data = r.hgetall(store.campaign_key(campaign_id))
    if not data:
        raise CampaignNotFoundError(campaign_id)
    content = CampaignContent.model_validate_json(data["content"])
    return {
        "id": campaign_id,
        "provider": content.provider,
        "status": data["status"],
        "reason": data.get("reason", ""),
        "created_at": float(data.get("created_at", 0)),
        "send_date": data.get("send_date", ""),
        **get_counters(campaign_id, r),
    }


_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'queued') or '0') > 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at', ARGV[1])
return 1
"""


def finish_if_done(campaign_id: str, client: redis.Redis | None = None) -> bool:
    """Mark a running campaign ``completed`` once no message is left queued (atomic)."""
    r = client or store.sync_client()
    keys = [store.campaign_key(campaign_id), store.counters_key(campaign_id)]
    return bool(r.eval(_FINISH, 2, *keys, str(time.time())))


def set_status(
    campaign_id: str, status: CampaignStatus, reason: str = "", client: redis.Redis | None = None
) -> None:
    (client or store.sync_client()).hset(
        store.campaign_key(campaign_id), mapping={"status": status.value, "reason": reason}
    )
