"""Campaign lifecycle: create (idempotent by id), fill with its list, start, finish."""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from dispatch import store
from dispatch.batch_enqueue import EnqueueBatch, background_enqueuer, batch_enqueuer
from dispatch.campaign_checks import (
    check_amp_has_html,
    check_campaign,
    check_copies_not_suppressed,
    check_not_expired,
    first_request_errors,
    offset_given,
    request_fingerprint,
    validation_problems,
)
from dispatch.campaign_errors import (
    CampaignConflictError,
    CampaignError,
    CampaignNotFoundError,
    CampaignStateError,
)
from dispatch.campaign_reads import get_status, load_content
from dispatch.models import (
    COUNTER_NAMES,
    CampaignContent,
    CampaignRequest,
    CampaignStatus,
    Recipient,
    campaign_request,
)
from dispatch.provider_store import ProviderNotFoundError, load_provider
from dispatch.recipient_append import RecipientAppender, append_recipients, chunks
from dispatch.recipient_pages import stored_count
from dispatch.settings import get_settings

__all__ = ["CampaignConflictError", "CampaignError", "CampaignNotFoundError", "CampaignStateError"]


# A campaign is stored whole or not at all, in one step with the claim of its id: a
# repeat of the same request (a client retrying, two identical posts at once) finds it
# complete, never an id whose content is still being written (that answered 404), and
# a creation that fails half-way cannot leave an id claimed with no campaign under it.
# A campaign posted with its list to start at once is stored filling (ARGV[9]: the size
# of its batches, '' for any other, ARGV[10] its send date): running, ``appending``, in
# the active index. Stored as a draft and set filling in a second step, a repeat of the
# request landing between the two answered ``draft`` with no recipients, and a creator
# that died between them left a draft that no repeat ever filled (review X24).
# started_at and filled_at are Redis's time, as housekeeping and a take-over read them.
# Returns nil once stored, else the fingerprint already under that id.
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'fingerprint', ARGV[1]) == 0 then
  return redis.call('HGET', KEYS[1], 'fingerprint')
end
redis.call('HSET', KEYS[1], 'content', ARGV[2], 'provider', ARGV[3], 'status', 'draft',
           'created_at', ARGV[4], 'reason', '')
if ARGV[9] ~= '' then
  local t = redis.call('TIME')
  local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', now, 'send_date', ARGV[10],
             'batch_size', ARGV[9], 'appending', '1', 'filled', '0', 'filled_at', t[1])
  redis.call('ZADD', KEYS[7], now, ARGV[5])
end
for i = 11, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], 0) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[7])
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'send_at', ARGV[8]) end
return false
"""


def create_campaign(
    request: CampaignRequest,
    *,
    client: redis.Redis | None = None,
    enqueue: EnqueueBatch | None = None,
) -> tuple[str, bool]:
    """Store a campaign and, unless it is a draft or has no recipients, start it.

    Returns ``(campaign_id, created)``; re-posting the same id with the same content
    returns ``created=False`` and changes nothing. Raises :class:`CampaignError` (422),
    :class:`CampaignConflictError` and :class:`SuppressedCopyError` (409).
    """
    r = client or store.sync_client()
    try:
        provider = load_provider(request.provider, r)
    except ProviderNotFoundError:
        raise CampaignError(f"provider {request.provider!r} does not exist", "provider") from None
    campaign_id = request.id or secrets.token_hex(8)
    content = check_campaign(request, provider, campaign_id)
    fingerprint = request_fingerprint(request)
    stored = r.hget(store.campaign_key(campaign_id), "fingerprint")
    # Stored by a version that hashed the times as given: a repeat all the same.
    if (
        stored not in (None, fingerprint)
        and offset_given(request)
        and stored == request_fingerprint(request, times_as_given=True)
    ):
        fingerprint = stored
    if stored != fingerprint:  # (a repeat is answered as before)
        check_amp_has_html(request)
        check_copies_not_suppressed(content, r)
    now = time.time()
    # Only a repeat of a campaign stored before its expiry is answered (as a repeat).
    if stored != fingerprint:
        check_not_expired(content, now)
    fill = bool(request.recipients) and not request.draft and not send_later(content, r)
    found = r.eval(
        _CREATE,
        7,
        store.campaign_key(campaign_id),
        store.counters_key(campaign_id),
        store.CAMPAIGNS_ZSET,
        store.CATEGORIES_SET,
        store.EXPIRING_ZSET,
        store.KEPT_ZSET,
        store.ACTIVE_ZSET,
        fingerprint,
        content.model_dump_json(),
        content.provider,  # read with the campaign by each batch run
        repr(now),
        campaign_id,
        content.category,
        "" if content.expires_at is None else repr(content.expires_at.timestamp()),
        "" if content.send_at is None else repr(content.send_at.timestamp()),
        str(get_settings().batch_size) if fill else "",
        datetime.now(UTC).strftime("%Y%m%d"),
        *COUNTER_NAMES,
    )
    if found is not None:
        if found != fingerprint:
            raise CampaignConflictError(
                f"campaign {campaign_id!r} exists with other content", field="id"
            )
        if not request.recipients:
            return campaign_id, False
        # Told apart by how it was stored, not by the request: one with a send_at that
        # had passed was stored filling, and a repeat taken for a draft's never took over
        # from a filler that died (the campaign ``running`` with part of its list for ever).
        resume_at = _await_fill(campaign_id, r)
        if resume_at is not None:
            with background_enqueuer(enqueue) as send:
                _append_and_send(campaign_id, request.recipients, r, send, resume_at)
        else:
            _complete_draft(campaign_id, request, r, enqueue)
        return campaign_id, False
    if fill:
        with background_enqueuer(enqueue) as send:
            _append_and_send(campaign_id, request.recipients, r, send)
    elif request.recipients:
        _complete_draft(campaign_id, request, r, enqueue)
    return campaign_id, True


def _complete_draft(
    campaign_id: str, request: CampaignRequest, r: redis.Redis, enqueue: EnqueueBatch | None
) -> None:
    """Store the list of a request that posted a draft (or a campaign for later) while
    the campaign is a draft, then start it unless it is a draft: for that request, and
    for each repeat of it. If the request stopped half-way (Redis failed, the process
    died), the campaign is still a draft with part of the list: the repeat stores the
    rest (the addresses stored are skipped) and starts it as that request would have.
    Once the campaign has started (by a repeat, or by the client), the request changes
    nothing more and answers as the campaign stands: a repeat posted while the first
    request still stored the list, which stored it all and started it first, made that
    request answer 409 "recipients can only be appended to a draft" for a campaign
    created whole (review Y25).
    """
    if get_status(campaign_id, r) is not CampaignStatus.DRAFT:
        return
    with contextlib.suppress(CampaignStateError):  # started meanwhile: it has its list
        append_recipients(campaign_id, request.recipients, client=r)
        if not request.draft:
            start_campaign(campaign_id, client=r, enqueue=enqueue)


def create_from_task(body: Any, task_id: str | None) -> str:
    """``create_campaign`` for the ``dispatch.enqueue_campaign`` task, with the JSON of
    ``POST /v1/campaigns``; returns the campaign's id.

    A body without an ``id`` takes the task's: a task run again (its worker died before
    acknowledging it) is a repeat of the same campaign, not a second one sent to the
    same recipients, and the caller can follow it by the id ``send_task`` gave it.
    An ``id`` given as a ``uuid.UUID`` (Celery's JSON carries it typed, and it arrives
    as one) is its standard string form, the id it names over HTTP.
    Raises :class:`CampaignError` naming the field (an invalid body too), and
    :class:`CampaignConflictError`.
    """
    from_task = isinstance(body, dict) and body.get("id") is None and bool(task_id)
    if from_task:
        body = {**body, "id": task_id}
    elif isinstance(body, dict) and isinstance(body.get("id"), uuid.UUID):
        body = {**body, "id": str(body["id"])}
    try:
        request = campaign_request(body)
    except ValidationError as exc:
        # Only the first problem is told: not every error built (seconds for a long list
        # of bad recipients, the worker held all the while; review E22).
        errors = first_request_errors(body, exc, 1)[:1] if isinstance(body, dict) else exc.errors()
        problems = validation_problems(errors)
        field, message = problems[0]
        if from_task and field == "id":  # the caller sent no id: say whose it was
            message = (
                f"the body has none, so the task id {task_id!r} was taken, and it is not "
                f"a campaign id ({message}): give an `id` in the body, or a task id of 1 "
                "to 64 letters, digits, '_', '.', ':' and '-'"
            )
        count = max(len(problems), exc.error_count())
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise CampaignError(f"{field}: {message}{more}", field=field) from None
    try:
        return create_campaign(request)[0]
    except CampaignError as exc:
        # The caller reads only the text: name the field first, as the API's detail does.
        if exc.field and not str(exc).startswith(f"{exc.field}: "):
            exc.args = (f"{exc.field}: {exc}",)
        raise


# A filler (the request that posted a campaign with its list) whose progress stopped
# this long ago is taken for dead: a repeat of the same request takes over from there.
FILL_STALE_SECONDS = 30.0
INTERRUPTED_REASON = (
    "creation interrupted: post the same request again to store the rest of its recipients"
)

_TAKE_OVER_FILL = """
if redis.call('HEXISTS', KEYS[1], 'appending') == 0 then return false end
local t = tonumber(redis.call('TIME')[1])
if t - tonumber(redis.call('HGET', KEYS[1], 'filled_at') or '0') < tonumber(ARGV[1]) then
  return false
end
redis.call('HSET', KEYS[1], 'filled_at', t, 'reason', '')
return redis.call('HGET', KEYS[1], 'filled') or '0'
"""


def _append_and_send(
    campaign_id: str,
    recipients: list[Recipient],
    r: redis.Redis,
    enqueue: EnqueueBatch,
    resume_at: int | None = None,
) -> None:
    """Start at once and enqueue each batch as soon as its recipients are stored.

    The first messages leave while a long list is still being stored. The campaign
    carries an ``appending`` mark meanwhile, so that it cannot complete between two
    chunks (its ``queued`` counter can touch 0 while later batches are not stored yet),
    and how far into ``recipients`` it got (``filled``, written with each chunk). When
    this fails half-way (Redis, the process), what is stored sends and the campaign
    waits, ``appending``: a repeat of the request resumes at ``resume_at`` (the stored
    addresses are skipped), and it completes once the whole list is stored.
    """
    key = store.campaign_key(campaign_id)
    # The size its batches are cut to was stored with it (a fill taken over: the setting
    # may differ since).
    size = int(r.hget(key, "batch_size") or get_settings().batch_size)
    stored = enqueued = 0
    try:
        appender = RecipientAppender(campaign_id, r, filling=True)
        if resume_at is None:
            resume_at = 0
        else:
            appender.know_stored()
            stored = stored_count(r, campaign_id)
            enqueued = stored // size
        position = resume_at
        for chunk in chunks(recipients[resume_at:], size):
            stored += appender.add(chunk, (position, position + len(chunk)))[0]
            position += len(chunk)
            while (enqueued + 1) * size <= stored:
                enqueue(campaign_id, enqueued)
                enqueued += 1
    except CampaignStateError:
        if get_status(campaign_id, r) in (CampaignStatus.CANCELLED, CampaignStatus.EXPIRED):
            # Ended while it was stored (cancelled, or expired by a batch): the rest will
            # never be sent. What is stored settles through its batches; the campaign
            # was made and answers as it stands.
            batches = math.ceil(stored / size)
            pipe = r.pipeline()
            pipe.hset(key, "batches", str(batches))
            pipe.hdel(key, "appending", "filled", "filled_at")
            pipe.execute()
            for batch in range(enqueued, batches):
                enqueue(campaign_id, batch)
            return
        raise  # another request took the filling over: it carries on
    except Exception:
        # What is stored sends; the campaign waits for a repeat of the request.
        with contextlib.suppress(Exception):
            batches = math.ceil(stored / size)
            r.hset(
                key,
                mapping={"batches": str(batches), "reason": INTERRUPTED_REASON, "filled_at": "0"},
            )
            for batch in range(enqueued, batches):
                enqueue(campaign_id, batch)
        raise
    batches = math.ceil(stored / size)
    pipe = r.pipeline()
    pipe.hset(key, "batches", str(batches))
    pipe.hdel(key, "appending", "filled", "filled_at")
    pipe.execute()
    # A fill taken over enqueues every batch: the dead filler's may have been lost
    # (a batch enqueued twice finds its lease taken, or nothing left to send).
    for batch in range(0 if resume_at else enqueued, batches):
        enqueue(campaign_id, batch)
    finish_if_done(campaign_id, r)


FILL_WAIT_LIMIT_SECONDS = 600.0  # a repeat waits this long at most for a live filler


def _await_fill(campaign_id: str, r: redis.Redis) -> int | None:
    """A repeat of the request that posted a campaign with its list answers with the
    whole list stored: it waits while the first request still stores it, and takes over
    (returns where to resume) once that one failed or died. None: nothing left to store."""
    deadline = time.monotonic() + FILL_WAIT_LIMIT_SECONDS
    while True:
        resume_at = _take_over_fill(campaign_id, r)
        if resume_at is not None:
            return resume_at
        if not r.hexists(store.campaign_key(campaign_id), "appending"):
            return None
        if time.monotonic() > deadline:
            return None  # answered as it stands; a later repeat can still take over
        time.sleep(0.2)


def _take_over_fill(campaign_id: str, r: redis.Redis) -> int | None:
    """Where to resume filling a campaign whose filler stopped (failed, or died: no
    progress for :data:`FILL_STALE_SECONDS`); None when it needs none or one is alive."""
    at = r.eval(_TAKE_OVER_FILL, 1, store.campaign_key(campaign_id), FILL_STALE_SECONDS)
    return None if at is None else int(at)


# Start (or schedule) a draft or scheduled campaign in one step: the status check, the
# count of its recipients and the move out of ``draft`` cannot interleave with an append
# (whose script refuses once the status left ``draft``), so every recipient stored is in
# a batch. Read apart, an append landing between them stored recipients past the last
# batch: never sent, the campaign ``running`` for ever. ARGV: the size of a batch (empty:
# schedule for ARGV[2] instead), send_at's timestamp, the campaign id, send date.
# started_at is Redis's time, as housekeeping reads it (an API host's clock half an hour
# ahead kept a campaign whose tasks were lost from restarting that long).
# Returns {batches, ''}, or {-1, status} when the status does not allow it. The draft's
# set of addresses goes with the draft: nothing appends once it has left (76 bytes a
# recipient, kept until the purge otherwise). A total that is not a count (a hand edit,
# a bug) is refused before that set goes: Redis keeps what a script wrote before it
# raised, and a start that raised there left a draft without it, whose next append
# stored (and whose start sent) the addresses it already had a second time.
_START = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'draft' and cur ~= 'scheduled' then return {-1, cur or ''} end
local total = redis.call('HGET', KEYS[2], 'total') or '0'
if ARGV[1] ~= '' and total ~= '0' and not (#total <= 18 and string.find(total, '^[1-9]%d*$')) then
  return redis.error_reply(KEYS[2] .. ' total is ' .. total .. ', not an integer: not started')
end
redis.call('UNLINK', KEYS[5])
if ARGV[1] == '' then
  redis.call('HSET', KEYS[1], 'status', 'scheduled')
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  return {0, ''}
end
total = tonumber(total)
local batches = math.ceil(total / tonumber(ARGV[1]))
local t = redis.call('TIME')
local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
redis.call('HSET', KEYS[1], 'status', 'running', 'send_date', ARGV[4], 'started_at', now,
           'batches', batches, 'batch_size', ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[3])
return {batches, ''}
"""


def watch_active(r: redis.Redis, campaign_id: str) -> None:
    """The campaign went ``running`` again (resumed, failed messages retried)."""
    r.zadd(store.ACTIVE_ZSET, {campaign_id: time.time()})


# Takes a campaign off the active index only if it is finished at that moment: a resume
# or retry between the sweep's read and this puts it back running (and adds it again).
_UNWATCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'paused' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def unwatch_finished(r: redis.Redis, campaign_id: str) -> bool:
    """Take a finished (or vanished) campaign off the active index; False if it is not."""
    return bool(
        r.eval(_UNWATCH, 2, store.campaign_key(campaign_id), store.ACTIVE_ZSET, campaign_id)
    )


def send_later(content: CampaignContent, r: redis.Redis) -> bool:
    """Whether the campaign's ``send_at`` is still ahead, on Redis's clock: the one beat's
    release reads, whichever host runs it (an API or worker host whose clock ran ten
    minutes ahead started a campaign due in five at once)."""
    return content.send_at is not None and content.send_at.timestamp() > store.redis_time(r)


def start_campaign(
    campaign_id: str, *, client: redis.Redis | None = None, enqueue: EnqueueBatch | None = None
) -> int:
    """Start a draft (or release a scheduled) campaign; returns the number of batches.

    A campaign whose ``send_at`` is in the future becomes ``scheduled`` and is released
    by beat. Raises :class:`CampaignNotFoundError`, :class:`CampaignStateError` when it
    is not a draft or scheduled.
    """
    r = client or store.sync_client()
    content = load_content(campaign_id, r)
    now = datetime.now(UTC)
    later = send_later(content, r)
    batches, found = r.eval(
        _START,
        5,
        store.campaign_key(campaign_id),
        store.counters_key(campaign_id),
        store.SCHEDULED_ZSET,
        store.ACTIVE_ZSET,
        store.addresses_key(campaign_id),
        "" if later else str(get_settings().batch_size),
        repr(content.send_at.timestamp()) if content.send_at is not None else "0",
        campaign_id,
        now.strftime("%Y%m%d"),
    )
    if int(batches) < 0:
        raise CampaignStateError(
            f"campaign {campaign_id!r} is {found}: it cannot be started", field="status"
        )
    if later:
        return 0
    if not batches:
        finish_if_done(campaign_id, r)
        return 0
    with batch_enqueuer(enqueue) as send:
        for batch in range(int(batches)):
            send(campaign_id, batch)
    return int(batches)


_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'appending') == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'queued') or '0') > 0 then return 0 end
local t = redis.call('TIME')  -- (Redis's clock, as the ledger's completion and started_at)
redis.call('HSET', KEYS[1], 'status', 'completed',
  'completed_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
return 1
"""


def finish_if_done(campaign_id: str, client: redis.Redis | None = None) -> bool:
    """Mark a running campaign ``completed`` once no message is left queued (atomic)."""
    r = client or store.sync_client()
    keys = [store.campaign_key(campaign_id), store.counters_key(campaign_id)]
    return bool(r.eval(_FINISH, 2, *keys))


def set_status(
    campaign_id: str, status: CampaignStatus, reason: str = "", client: redis.Redis | None = None
) -> None:
    (client or store.sync_client()).hset(
        store.campaign_key(campaign_id), mapping={"status": status.value, "reason": reason}
    )
