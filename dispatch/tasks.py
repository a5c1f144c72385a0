"""Celery tasks: thin wrappers that load ids, call a plain function, map the outcome."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from celery import Task, bootsteps
from celery.exceptions import InvalidTaskError
from celery.signals import (
    celeryd_init,
    task_rejected,
    task_unknown,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.worker import state as worker_state
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from kombu.serialization import registry as serializers  # type: ignore[attr-defined]
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatch import (
    batch_enqueue,
    beat_pass,
    campaigns,
    effects,
    faults,
    lifecycle,
    retention,
    runtime,
    store,
    worker_health,
)
from dispatch.celery_app import MAX_TASK_BODY_BYTES, DispatchTask, TaskBodyTooLargeError, app
from dispatch.housekeeping import sweep
from dispatch.ledger import LeaseLostError
from dispatch.models import CampaignStatus
from dispatch.redis_server import ensure_redis_url
from dispatch.sending import run_batch
from dispatch.settings import get_settings, task_time_limit

if TYPE_CHECKING:
    from celery.worker.request import _InfoDict

log = logging.getLogger(__name__)


class _BodyNotShown(Request):
    """A ``dispatch.enqueue_campaign`` request as the worker shows it to monitors: its
    argument is a whole campaign (recipients' addresses and vars, the html), which
    Flower would show in its task list (the ``task-received`` event carries the
    caller's repr of the arguments, up to 1 KB) and on a worker's page (``inspect
    active``, ``reserved`` and ``scheduled`` answer with the arguments themselves, each
    recipient of the campaign). Monitors get the campaign's id and size instead; the
    task itself runs with its argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (Celery reads these two attributes, not only its properties, e.g. in repr())
        self._argsrepr = _shown_instead(self.args, self.kwargs)
        self._kwargsrepr = "{}" if not self.kwargs else "{...: not shown}"

    def info(self, safe: bool = False) -> _InfoDict:
        return super().info(safe=True)


def _shown_instead(args: Any, kwargs: Any) -> str:
    """What a monitor shows of ``enqueue_campaign``'s arguments: the id the caller gave
    (shown in logs and answers anyway) and how many recipients, never their data.
    Never raises, whatever the message holds: it runs in the worker's consumer, where
    an exception ends the worker (and the message, back in its queue, the next one)."""
    kwargs = kwargs or {}
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return "(campaign body not shown)"  # the task fails on them, as Celery's does
    given = [*args, *kwargs.values()]
    body = given[0] if len(given) == 1 else None
    if not isinstance(body, dict):
        return "(campaign body not shown)"
    recipients = body.get("recipients")
    count = len(recipients) if isinstance(recipients, list) else 0
    campaign = body.get("id")
    named = f"campaign {campaign[:100]!r}" if isinstance(campaign, str) else "campaign"
    return f"({named} with {count} recipients: body not shown)"


class _RetriedInsideTheVisibilityTimeout(DispatchTask):
    """A task whose retries wait at most a quarter of the broker's visibility timeout, as
    a batch's own re-enqueue does: Celery's backoff (up to 128 s for the 8th retry) went
    into the countdown as it was, and under a short DISPATCH_VISIBILITY_TIMEOUT the
    broker handed the waiting task out again, so it ran twice (DESIGN §7, PITFALLS)."""

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        if countdown is not None:
            countdown = min(countdown, get_settings().visibility_timeout / 4)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)


# Tasks that meet a broken Redis connection run again, with backoff, well inside the
# visibility timeout (they are safe to run twice).
_RETRY_ON_REDIS_ERRORS: dict[str, Any] = {
    "base": _RetriedInsideTheVisibilityTimeout,
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 8,
}


# What other services call (DESIGN §5). Its result is kept (the id, or the refusal: a
# caller whose app has ``backend=<the broker URL>`` reads it with ``.get()``); a refusal
# is expected (``throws``: Celery logs it without a traceback; we warn) and never retried.
# A broken Redis connection is retried: a list stored half-way (Redis restarted, a
# failover) was left so, a draft short of its rest or a campaign ``running`` for ever
# with "creation interrupted", for a repeat that a caller firing and forgetting never
# sends. Run again (the same task id, so the same campaign), it stores the rest.
@app.task(
    name="dispatch.enqueue_campaign",
    bind=True,
    ignore_result=False,
    throws=(campaigns.CampaignError,),
    Request=_BodyNotShown,
    **_RETRY_ON_REDIS_ERRORS,
)
def enqueue_campaign(self: Task[Any, str], *args: Any, **kwargs: Any) -> str:
    """Create (and start, unless a draft) a campaign from the JSON of POST /v1/campaigns;
    without an ``id`` it takes the task's id. Its one argument is the body (positional,
    or ``body=``): another count is refused as the body's fault, not answered with
    Python's ``TypeError``, whose count includes the task itself."""
    try:
        return campaigns.create_from_task(_the_body(args, kwargs), self.request.id)
    except campaigns.CampaignError as exc:  # the caller may not be watching: say it here
        log.warning(
            "campaign refused: %s",
            exc,
            extra={
                "task_id": self.request.id,
                "campaign_id": _campaign_id(args, kwargs, self.request.id),
                "field": exc.field,
            },
        )
        raise


def _campaign_id(args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None) -> str:
    """The id a refused campaign was posted under (the body's, else the task's), for the
    log line: what its sender searches the logs by."""
    body = args[0] if len(args) == 1 and not kwargs else kwargs.get("body")
    given = body.get("id") if isinstance(body, dict) else None
    return str(given if given is not None else task_id or "")[:200]


def _the_body(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The one argument ``dispatch.enqueue_campaign`` takes, or the refusal naming what
    the caller sent instead (the names of its keywords, never their values)."""
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and list(kwargs) == ["body"]:
        return kwargs["body"]
    sent = [f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"] if args else []
    if kwargs:
        names = ", ".join(repr(str(name)[:40]) for name in list(kwargs)[:5])
        more = f" and {len(kwargs) - 5} more" if len(kwargs) > 5 else ""
        sent.append(f"keyword argument{'s' if len(kwargs) > 1 else ''} {names}{more}")
    raise campaigns.CampaignError(
        "body: dispatch.enqueue_campaign takes one argument, the campaign (a JSON object: "
        f"args=[campaign]); it was sent {' and '.join(sent) or 'no argument'}",
        field="body",
    )


@task_rejected.connect
def _answer_a_message_refused_unread(
    sender: object = None, message: Message | None = None, exc: object = None, **_: object
) -> None:
    """A ``dispatch.enqueue_campaign`` the workers refuse unread never runs: one sent in
    a serializer they do not take (pickle, yaml, msgpack: ``accept_content`` is JSON
    only), whose body is over the size a task's body may be, is not a task message's
    (``celery_app.guarded_strategy``), or cannot be decoded (not JSON, not the UTF-8 it
    claims). Celery logs it and drops it, so the caller's ``.get()`` would wait for its
    timeout with no reason given: the refusal is stored as the task's result instead
    (the id is in the headers, which are JSON whatever the body's serializer), naming
    the field as every other refusal does. Every message refused unread, of any task, is
    counted (``dispatch_task_messages_refused_total``, by reason): a client whose
    messages are all refused, and that reads no result, is seen."""
    if message is None:
        return
    faults.count_sync(None, "refused", _refusal_reason(exc))
    if not isinstance(exc, ContentDisallowed | InvalidTaskError | DecodeError):
        return
    headers = message.headers or {}
    task_id = headers.get("id")
    if headers.get("task") != enqueue_campaign.name or not task_id:
        return
    refusal = campaigns.CampaignError(_why_refused_unread(message, exc), field="body")
    log.warning("campaign refused: %s", refusal, extra={"task_id": task_id, "field": "body"})
    try:
        app.backend.mark_as_failure(task_id, refusal)
    except Exception:  # never let it stop the consumer: the caller's .get() times out
        log.exception("could not store the refusal of task %s", task_id)


def _refusal_reason(exc: object) -> str:
    """The ``reason`` label of a message refused unread (``faults.REFUSALS``)."""
    if isinstance(exc, ContentDisallowed):
        return "serializer"
    if isinstance(exc, TaskBodyTooLargeError):
        return "too_large"
    if isinstance(exc, DecodeError):
        return "undecodable"
    return "malformed"  # (InvalidTaskError; None: not a task message at all)


@task_unknown.connect
def _count_an_unregistered_task(sender: object = None, **_: object) -> None:
    """A message naming a task no worker of this version knows (a client's typo, a newer
    API's task on an older worker): Celery logs it and answers its caller; counted."""
    faults.count_sync(None, "refused", "unregistered")


_SEND_IT_AS_A_TASK = "send it with send_task('dispatch.enqueue_campaign', args=[campaign])"


def _why_refused_unread(
    message: Message, exc: ContentDisallowed | InvalidTaskError | DecodeError
) -> str:
    """The refusal's text (what is wrong and what to do), never any of the body."""
    kind = message.content_type or "none"
    if isinstance(exc, ContentDisallowed):
        name = serializers.type_to_name.get(kind, kind)
        return (
            f"body: sent as {name} ({kind}); dispatch.enqueue_campaign takes JSON only: "
            "send it with serializer='json'"
        )
    if isinstance(exc, TaskBodyTooLargeError):
        return (
            f"body: {exc.described}, over the {MAX_TASK_BODY_BYTES} bytes "
            f"({MAX_TASK_BODY_BYTES // 2**20} MiB) a task's body may be: create the "
            'campaign as a draft with the task ("draft": true, no recipients) and append '
            "the recipients with POST /v1/campaigns/{id}/recipients (streamed, any size)"
        )
    if isinstance(exc, DecodeError):
        encoding = message.content_encoding or "none"
        return (
            f"body: cannot be decoded as its message says ({kind}, {encoding}): "
            f"{str(exc)[:200]}; {_SEND_IT_AS_A_TASK}"
        )
    return f"body: not a task message Celery can run: {exc}; {_SEND_IT_AS_A_TASK}"


@app.task(name="dispatch.expire_campaigns")
def expire_campaigns() -> list[str]:
    """Expire unfinished campaigns past their expires_at: unsent messages end ``expired``
    (run by beat)."""
    with beat_pass.failure_counted("expiry"):
        expired = lifecycle.expire_due()
    if expired:
        log.info("expired campaigns", extra={"campaign_ids": expired})
    return expired


@app.task(name="dispatch.start_campaign")
def start_campaign(campaign_id: str) -> int:
    return campaigns.start_campaign(campaign_id)


# A batch whose Redis connection broke (Redis restarted: each worker process's pooled
# connections fail once before they reconnect) runs again shortly instead of being lost
# until beat's sweep finds its campaign stalled. Running it again is safe: the batch skips
# what its ledger settled, and a message claimed in the broken run ends ``unknown``.
@app.task(name="dispatch.send_batch", **_RETRY_ON_REDIS_ERRORS)
def send_batch(campaign_id: str, batch: int, busy_polls: int = 0) -> dict[str, Any]:
    """Send one batch; re-enqueue it when messages wait for a later retry."""
    hostname = send_batch.request.hostname
    stop_key = store.worker_stopping_key(hostname) if hostname else ""
    try:
        result = runtime.run(
            lambda r: run_batch(
                campaign_id, batch, r=r, pool=runtime.session_pool(), stop_key=stop_key
            )
        )
    except LeaseLostError as exc:
        # This run stalled past its lease's TTL (a frozen or starved process): it wrote
        # nothing more, and nobody may hold the batch now. Failing the task left the rest
        # of the batch to housekeeping, minutes later (20 while other campaigns send).
        # The next run takes the lease (or polls while another run holds it), records
        # this run's claims unknown and sends the rest.
        log.warning(
            "%s; the batch is enqueued again",
            exc,
            extra={"campaign_id": campaign_id, "batch": batch},
        )
        # Counted: the unknown outcomes it leaves show in /metrics, not why (starved
        # workers, or a lease TTL too short for them).
        faults.count_sync(None, "lost", faults.BATCH_LEASE)
        _poll_again(campaign_id, batch, busy_polls)
        return {"lease_lost": True}
    if result.busy:
        # Another run holds the batch: one that is stopping (a pause, then a resume that
        # re-enqueued the batch) lets go within moments, a dead worker's lease expires.
        _poll_again(campaign_id, batch, busy_polls)
        return {"busy": True}
    if result.retry_at is not None:
        # Bounded well below the visibility timeout: never a long countdown (PITFALLS).
        delay = max(1.0, min(result.retry_at - time.time(), get_settings().visibility_timeout / 4))
        send_batch.apply_async(
            (campaign_id, batch), countdown=delay, priority=store.batch_priority(batch)
        )
    # No finish_if_done here: the ledger write that settles the last queued message
    # completes the campaign in the same script (and housekeeping checks behind it).
    log.info(
        "batch done",
        extra={
            "campaign_id": campaign_id,
            "batch": batch,
            "provider": result.provider,
            "counts": result.counts,
        },
    )
    return {"counts": result.counts, "retry_at": result.retry_at}


def _poll_again(campaign_id: str, batch: int, busy_polls: int) -> None:
    """Come back soon, then less and less often, at the latest once another run's lease
    would have expired, and finish whatever it left (a no-op if it finished). Never a
    countdown past the visibility timeout (PITFALLS), whatever the lease's TTL."""
    settings = get_settings()
    countdown = min(
        2.0 ** min(busy_polls, 16),
        settings.lease_ttl_ms / 1000 + 1,
        settings.visibility_timeout / 4,
    )
    send_batch.apply_async(
        (campaign_id, batch),
        {"busy_polls": busy_polls + 1},
        countdown=countdown,
        priority=store.batch_priority(batch),
    )


# Handed a big campaign by a cancel or the expiry (lifecycle.INLINE_SETTLE_LIMIT): safe
# to run twice (only queued or retry-waiting messages are settled), and a run that died
# half-way is finished by housekeeping (the campaign is on its active index).
@app.task(name="dispatch.settle_ended", **_RETRY_ON_REDIS_ERRORS)
def settle_ended(campaign_id: str, status: str) -> int:
    """Settle the unsent messages of a cancelled or expired campaign; how many."""
    return lifecycle.settle_ended(campaign_id, CampaignStatus(status), store.sync_client(), None)


@app.task(name="dispatch.housekeeping")
def housekeeping() -> dict[str, list[str]]:
    """Finish running campaigns with nothing left; re-enqueue stalled ones (beat)."""
    with beat_pass.failure_counted("housekeeping"):
        return sweep(store.sync_client(), batch_enqueue.enqueue_batch)


@app.task(name="dispatch.purge_finished")
def purge_finished() -> list[str]:
    """Remove the per-message data of campaigns finished longer than the retention (beat)."""
    with beat_pass.failure_counted("retention purge"):
        purged = retention.purge_due(store.sync_client())
    if purged:
        log.info("purged finished campaigns", extra={"campaign_ids": purged})
    return purged


@app.task(name="dispatch.release_scheduled")
def release_scheduled() -> int:
    """Start scheduled campaigns whose send_at has come (run by beat); how many."""
    with beat_pass.failure_counted("scheduled release"):
        started = lifecycle.release_due()
    if started:
        log.info("released scheduled campaigns", extra={"campaign_ids": started})
    return len(started)


@app.task(name="dispatch.process_callback", **_RETRY_ON_REDIS_ERRORS)
def process_callback(batch_id: str) -> int | None:
    """Apply one stored callback batch (idempotent: applied events are recognised)."""
    return effects.apply_batch(batch_id)


@app.task(name="dispatch.recover_callbacks")
def recover_callbacks(grace: float | None = None) -> int:
    """Enqueue again the callback batches whose task was lost (run by beat and at start)."""
    wait = get_settings().callback_recovery_seconds if grace is None else grace
    with beat_pass.failure_counted("callback recovery"):
        lost = effects.lost_batches(wait)
        for batch_id in lost:
            process_callback.apply_async((batch_id,), queue="events")
    if lost:
        log.warning("re-enqueued %d callback batches", len(lost))
    return len(lost)


# A worker asked to stop (SIGTERM from compose or systemd, Ctrl-C) waits for its running
# tasks. Its batches could take minutes at a provider's pace, past the supervisor's
# patience (then killed: messages on the wire end unknown, the rest wait for a lapsed
# lease or housekeeping). So the main process says so in Redis, and each batch hands its
# unsent messages on within a second (dispatch.sending.run_batch's stop_key).
@worker_shutting_down.connect
def _hand_batches_on(sender: object = None, **_: object) -> None:
    if _stop_path.unanswered:  # (the bootstep's call, after the signal's got no answer)
        return
    try:
        # Kept while it stops (compose gives 60 s); gone at its exit, or after this.
        _stop_path.client().set(store.worker_stopping_key(str(sender)), "1", ex=600)
    except Exception as exc:  # stopping anyway: the batches finish as before
        _stop_path.failed(exc)
        log.exception("could not tell the running batches to stop")


class _StopPath:
    """The Redis calls of a worker that stops (its stop mark, its note, its direct queue)
    each wait at most ``STOP_REDIS_TIMEOUT`` once, without redis-py's retries; and once
    Redis has not answered one, the later ones are not made. A Redis that stops answering
    without closing the connection (frozen, a failover, a dropped NAT entry) cost each of
    them 5-36 s of timeouts and retries: about 70 s in all, past compose's 60 s grace."""

    def __init__(self) -> None:
        self.unanswered = False
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                ensure_redis_url(),
                decode_responses=True,
                socket_timeout=STOP_REDIS_TIMEOUT,
                socket_connect_timeout=STOP_REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            self.unanswered = True


STOP_REDIS_TIMEOUT = 3.0  # seconds each Redis call of a stopping worker waits
_stop_path = _StopPath()


class _HandOnWhenStopping(bootsteps.StartStopStep):
    """Every warm shutdown, not only a signal: ``celery control shutdown`` (Flower's
    "Shut Down" button) sends no ``worker_shutting_down``. The worker stops its steps in
    the reverse order of their start, so this one (after the pool) says so before the
    pool waits for its running batches."""

    requires = ("celery.worker.components:Pool",)

    def stop(self, parent: Any) -> None:
        _hand_batches_on(parent.hostname)


app.steps["worker"].add(_HandOnWhenStopping)


@celeryd_init.connect
@worker_shutdown.connect
def _forget_the_stop(sender: object = None, **_: object) -> None:
    """A worker that stopped, or starts again under the same name, is not stopping
    (``celeryd_init`` sends the name, ``worker_shutdown`` the worker itself)."""
    name = getattr(sender, "hostname", sender)
    stopping = name is not sender
    if stopping and _stop_path.unanswered:  # Redis did not answer: the key expires
        log.warning("could not clear the stop mark of %s (Redis did not answer)", name)
        return
    try:
        _stop_path.client().delete(store.worker_stopping_key(str(name)))
        worker_health.forget(_stop_path.client(), str(name))
    except Exception as exc:  # Redis not up yet: Celery reports it; the key expires anyway
        if stopping:
            _stop_path.failed(exc)
        log.warning("could not clear the stop mark of %s", sender)


@worker_shutdown.connect
def _retire(sender: object = None, **_: object) -> None:
    """A worker's direct queue leaves Redis with it (worker_health.retire)."""
    hostname = getattr(sender, "hostname", None)
    if hostname:
        worker_health.retire(str(hostname), redis_answers=not _stop_path.unanswered)


@app.task(name="dispatch.canary")
def canary(hostname: str) -> None:
    """Sent by a worker to its own queue: it still takes tasks (dispatch.worker_health)."""
    worker_health.note(store.sync_client(), hostname, get_settings().worker_canary_seconds)


@worker_ready.connect
def _start_the_canary(sender: object = None, **_: object) -> None:
    hostname = getattr(sender, "hostname", None)
    pool = getattr(sender, "pool", None)  # (sender: the worker's consumer)
    settings = get_settings()
    limit = task_time_limit(settings.visibility_timeout)

    def busy() -> bool:
        processes = getattr(pool, "num_processes", None)
        return isinstance(processes, int) and pool_busy(processes, limit, time.time())

    if hostname:
        worker_health.start_canary(str(hostname), settings.worker_canary_seconds, busy)


def pool_busy(processes: int, time_limit: float, now: float) -> bool:
    """Every one of a worker's ``processes`` runs a task (its canary waits for one to
    end), each started within ``time_limit`` (the hard one, and a minute for the kill to
    be seen): an older one means the main process no longer sees its tasks end (its
    consumer stuck), and the worker must not be told busy for ever."""
    active = list(worker_state.active_requests)
    return len(active) >= processes > 0 and all(
        now - (request.time_start or now) < time_limit + 60 for request in active
    )


@worker_ready.connect
def _warn_about_redis(**_: object) -> None:
    try:
        problems = store.redis_problems(store.sync_client())
    except redis.RedisError:  # not reachable yet: Celery's own retries report it
        return
    for problem in problems:
        log.warning(problem)


@worker_ready.connect
def _recover_callbacks_at_start(**_: object) -> None:
    """A worker that starts picks up batches stored while no task could run them."""
    try:
        recover_callbacks.apply_async(queue="events")
    except Exception:  # never keep a worker from starting: beat will do it later
        log.exception("could not enqueue callback recovery")


@worker_process_shutdown.connect
def _close_kept_sessions(**_: object) -> None:
    """A worker process that stops says goodbye to its providers (SMTP QUIT) and gives
    its connection slots back instead of leaving them to expire."""
    try:
        runtime.shutdown()
    except Exception:  # stopping anyway: the slots expire by themselves
        log.exception("could not close kept provider sessions")
