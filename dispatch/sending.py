"""Send one batch of a campaign: render, claim, send through the provider, record.

``run_batch`` is a plain coroutine (the Celery task only calls it). It owns the batch
through a lease, skips every message the ledger already settled, and runs several
provider sessions side by side, each reused for many messages. Transient failures are
retried with exponential backoff and jitter: short waits inside the batch, longer ones
by handing the batch back to the broker with a countdown shorter than the visibility
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from dispatch import incidents, store
from dispatch.batch_campaign import BatchCampaign
from dispatch.batch_items import (
    Item,
    begin_batch,
    drop_suppressed,
    load_batch,
    terminal_state,
    unsent_record,
    unsettled,
)
from dispatch.batch_outcomes import BatchOutcomes, PlannedWrite
from dispatch.claim_returns import WAITED, give_back_after_failure, give_back_claims
from dispatch.housekeeping import note_parked, note_progress
from dispatch.ledger import BatchLease, LedgerWriter, Records, claim_record, record
from dispatch.lifecycle import expire_now, pause_running
from dispatch.limits import Grant, QuotaExhaustedError
from dispatch.message_logs import log_lost_claims
from dispatch.models import CampaignStatus, MessageState
from dispatch.process_cache import (
    chunk_size,
    compiled_for,
    content_of,
    known_fingerprint,
    provider_for,
)
from dispatch.rendering import RenderError
from dispatch.send_stats import SendStats
from dispatch.session_pool import KeptSession, SessionPool
from dispatch.settings import Settings, cut_after, get_settings
from dispatch.status_watch import pace_horizon, provider_gone, provider_replaced, watch_status
from dispatch.suppressions import suppression_key
from providers.addresses import InvalidAddressError
from providers.base import (
    CutShort,
    OutcomeStatus,
    OutgoingMessage,
    SendOutcome,
    Session,
    known_at_cut,
)
from providers.config import HttpConfig
from providers.errors import (
    ConfigurationError,
    ErrorClass,
    ProviderError,
    ThrottledError,
    TransientError,
)

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What happened to a batch run; ``retry_at`` set when messages wait for a retry."""

    campaign_id: str
    batch: int
    busy: bool = False  # another worker holds the batch
    provider: str = ""  # the campaign's provider's nickname, once read
    counts: dict[str, int] = field(default_factory=dict)
    retry_at: float | None = None
    paused_reason: str = ""


# Outcomes of messages the provider did not take: not counted against its daily quotas.
_REFUSED = frozenset((OutcomeStatus.FAILED, OutcomeStatus.RETRY, OutcomeStatus.NOT_SENT))
# Why a message of a chunk the batch stopped in (paused, cancelled...) waits unsent.
_STOPPED = "claimed, not attempted: the batch stopped before its turn in the chunk came"
# Longest a chunk's building holds the event loop without giving it a turn (see _build).
BUILD_SLICE_SECONDS = 0.05
BUILD_PAUSE_SECONDS = 0.005  # the turn it gives


class BatchSender(BatchOutcomes):
    """Runs the sessions of one batch over a shared queue of messages."""

    def __init__(
        self,
        campaign: BatchCampaign,
        writer: LedgerWriter,
        items: list[Item],
        settings: Settings,
        pool: SessionPool | None = None,
        pool_key: tuple[str, str] = ("", ""),
    ) -> None:
        self.cut = asyncio.Event()  # (before the base's init: it may finish at once)
        self.on_wire: set[Session] = set()  # sessions sending a chunk now (see finish)
        super().__init__(campaign, writer, items, settings)
        self.pool = pool  # where sessions go when the batch is done (None: closed)
        self.pool_key = pool_key
        self.holding = 0  # senders that got a connection slot (or brought a kept one)
        self.slot_deadline = time.monotonic() + settings.slot_wait_seconds
        self.starved = False  # none got a slot in time: the batch goes back to the broker
        self.handed_on = False  # its worker is shutting down: the batch goes back too
        # The run lasted its time budget (status_watch.run_budget): senders take no new
        # chunk and the batch goes back too, but the chunks they reserved the pace for
        # go first. A reservation is never given back (cut short, the next run's came
        # after it), so none is made further ahead than ``horizon`` (it waits and asks
        # again): each is sent by the end of the run. ``cut``: set when senders stop
        # resting otherwise (a backoff, a pause).
        self.out_of_time = False
        self.horizon = pace_horizon(settings.visibility_timeout)
        # Its provider was saved again with another configuration: the batch goes back
        # too, to run with the new one (the stored configuration it watches, see
        # status_watch._status_changed: what a save must change to reach it).
        self.reconfigured = False
        self.configuration = pool_key[1]
        self.aborted = False  # a sender failed: the run ends with its error
        # Celery kills the task at its time limit (every session's chunk then unknown,
        # the batch stalled until beat's sweep): a wait for answers still on then is
        # cut short just before, and the batch handed on (see _send_chunks).
        self.deadline = time.monotonic() + cut_after(settings.visibility_timeout)

    @property
    def stopped(self) -> bool:
        """Senders take no more messages: the campaign stopped (paused, cancelled, a
        configuration error, its provider deleted or changed), the worker hands the
        batch on, or a sender failed."""
        return self.halted or self.out_of_time

    @property
    def halted(self) -> bool:
        """:attr:`stopped` other than by the run's time budget: nothing more goes out."""
        return bool(self.c.stop_reason) or self.handed_on or self.reconfigured or self.aborted

    def finish(self) -> None:
        super().finish()
        self.cut.set()
        if self.on_wire and self.halted:
            # Nothing more goes out, the rest of a chunk on the wire included: its messages
            # go one after the other, each after the last one's answer (minutes, for a
            # server that checks content before it answers).
            for session in self.on_wire:
                session.stop()

    def run_out(self) -> None:
        """The run lasted its time budget: hand the batch on once the chunks on the wire,
        and those the senders reserved the pace for (within ``horizon``), are out."""
        self.out_of_time = True
        self.cut.set()
        self.wake.set()

    def abort(self) -> None:
        """A sender failed: the others stop after the chunk they are sending."""
        self.aborted = True
        self.finish()

    # -- the sending loop ----------------------------------------------------------------
    async def _next_chunk(self) -> list[Item]:
        """Wait for the next items (up to chunk_size); [] when the batch is over."""
        queue = self.queue
        while not queue:
            if self.done.is_set() or self.out_of_time:
                return []
            self.wake.clear()
            await self.wake.wait()
        n = min(len(queue), self.c.chunk_size)
        return [queue.popleft() for _ in range(n)]

    def _stop_waiting(self) -> bool:
        """Whether a sender waiting for a connection slot gives up: the batch is over or
        stopped, or none of its senders got a slot within ``slot_wait_seconds`` (the
        process is then better used by another provider's batch; see run_batch)."""
        if self.done.is_set() or self.stopped:
            return True
        if not self.holding and time.monotonic() >= self.slot_deadline:
            self.starved = True
            return True
        return False

    async def run_session(self, kept: KeptSession | None = None) -> None:
        """One sender: a connection slot of the provider, then its own session, reused
        (``kept``: a slot and session an earlier batch left in the pool)."""
        slots = self.c.slots
        if kept is None:
            kept = KeptSession(self.pool_key, slots, secrets.token_hex(8))
            if not await slots.acquire(kept.token):
                await give_back_claims(self.writer, self.queue, WAITED)
                if not await slots.hold(kept.token, self._stop_waiting):
                    return
        self.holding += 1
        renewer = asyncio.create_task(slots.renew(kept.token, kept.lose_slot))
        keep_in: SessionPool | None = None  # set once the sender ended cleanly
        try:
            await self._send_chunks(kept)
            keep_in = None if self.stopped else self.pool
        finally:
            renewer.cancel()
            if keep_in is None:
                await kept.close()
            else:
                with contextlib.suppress(Exception):
                    await keep_in.keep(kept)

    async def _send_chunks(self, kept: KeptSession) -> None:
        while not self.stopped:
            chunk = await self._next_chunk()
            if not chunk:
                return
            if self.stopped:
                self.put_back(chunk)  # left queued for resume
                return
            if kept.slot_lost:
                await give_back_claims(self.writer, chunk, WAITED)
                if not await self._slot_again(kept):
                    self.put_back(chunk)
                    return
            reserved = await self._reserve(chunk)
            if reserved is None:  # (back in the queue: it waits, or the batch stopped)
                continue
            grant, chunk = reserved
            if await self._expired():  # (the pace held them back past expires_at)
                self.put_back(chunk)
                await self.c.limiter.settle(grant, len(chunk))
                return
            if time.monotonic() >= self.deadline:  # (see deadline): the next run sends them
                self.put_back(chunk)
                await self.c.limiter.settle(grant, len(chunk))
                self.run_out()
                return
            # Built and claimed right before they go out: none waits claimed.
            messages = await self._claim(await self._build(chunk))
            unsent = len(chunk) - len(messages)  # not buildable, or settled by someone else
            if not messages:
                await self.c.limiter.settle(grant, unsent)
                continue
            await self.c.limiter.refund(grant, unsent)
            if kept.session is None and not kept.slot_lost:
                # Cut at the deadline too: an opening (connect, greeting, EHLO, STARTTLS,
                # AUTH: each up to the provider's timeout) on until Celery's kill left
                # the chunk claimed and the batch stalled until beat's sweep.
                opening = asyncio.timeout(max(0.0, self.deadline - time.monotonic()))
                try:
                    with kept.in_use():
                        async with opening:
                            session = await kept.stack.enter_async_context(
                                self.c.transport.session()
                            )
                except Exception as exc:
                    if not opening.expired() and not isinstance(exc, ProviderError):
                        raise
                    await self.c.limiter.settle(grant, len(messages))  # none went out
                    if opening.expired():  # (see deadline): the next run sends them
                        await self._cut_back(messages, ErrorClass.TIMEOUT, _OPEN_CUT)
                        self.run_out()
                        return
                    assert isinstance(exc, ProviderError)
                    await self._session_failed(messages, exc)
                    if isinstance(exc, ConfigurationError):
                        return
                    continue
                kept.session = session
            if kept.slot_lost:  # told while the chunk waited (its pace, Redis) or while its
                # session opened (lose_slot leaves that to it): not sent, closed at once
                await kept.drop_session()
                await self.c.limiter.settle(grant, len(messages))  # none went out
                await self._unclaim(messages)
                continue
            assert kept.session is not None
            session = kept.session
            started = time.perf_counter()
            cut = asyncio.timeout(max(0.0, self.deadline - time.monotonic()))
            given_back = 0  # claimed, never handed over: not counted against the quotas
            self.on_wire.add(session)
            if self.halted:  # (halted while it opened)
                session.stop()
            try:
                with kept.in_use():
                    async with cut:
                        outcomes = await session.send([m for _, m in messages])
            except Exception as exc:
                elapsed = time.perf_counter() - started
                known = known_at_cut(session) if cut.expired() else None  # (before its close)
                await kept.drop_session()
                if known is not None:  # (whatever the adapter made of it)
                    self.run_out()  # the run is at its end: hand on
                    given_back = len(messages)
                    messages, outcomes = await self._after_cut(messages, known)
                    given_back -= len(messages)
                elif isinstance(exc, ProviderError):
                    self.stats.observe(elapsed, len(messages))
                    await self.c.limiter.settle(grant, len(messages))  # none went out
                    await self._session_failed(messages, exc)
                    if isinstance(exc, ConfigurationError):
                        return
                    continue
                else:  # an adapter's bug: this chunk alone pays for it
                    log.exception(
                        "batch of campaign %s: the adapter failed", self.c.content.id,
                        extra=self.outcome_log.context,
                    )  # fmt: skip
                    outcomes = [_unknown(item.seq, exc) for item, _ in messages]
            finally:
                self.on_wire.discard(session)
            took = time.perf_counter() - started
            if kept.slot_lost:  # (told while on the wire): closed before the writes below
                await kept.drop_session()
            refused = given_back + sum(1 for o in outcomes if o.status in _REFUSED)
            await self.c.limiter.settle(grant, refused)  # only what the provider took counts
            stopped = {o.seq for o in outcomes if o.status is OutcomeStatus.NOT_SENT}
            if stopped:  # (see finish): they wait, their claims given back
                await self._unclaim([(i, m) for i, m in messages if i.seq in stopped], _STOPPED)
                messages = [(i, m) for i, m in messages if i.seq not in stopped]
                outcomes = [o for o in outcomes if o.seq not in stopped]
            self.stats.observe(took, len(messages))  # (those handed over)
            if messages:
                await self._rest(await self._apply(messages, outcomes))

    async def _after_cut(
        self, messages: list[tuple[Item, OutgoingMessage]], known: CutShort
    ) -> tuple[list[tuple[Item, OutgoingMessage]], list[SendOutcome]]:
        """A chunk's send cut short at the run's deadline: those of ``messages`` never
        handed over wait again (their claims given back, not an attempt: the next run
        sends them). Returns the others and their outcomes: what the provider answered,
        else ``unknown`` (perhaps taken; DESIGN §7)."""
        never = set(known.not_handed_over)
        back = [(item, m) for item, m in messages if item.seq in never]
        # (an HTTP provider's messages are "Dispatch failed", not "SMTP timeout": DESIGN §2)
        http = isinstance(self.c.provider, HttpConfig)
        error_class = ErrorClass.DISPATCH_FAILED_HTTP if http else ErrorClass.TIMEOUT
        if back:
            await self._cut_back(back, error_class, _SEND_CUT)
        rest = [(item, m) for item, m in messages if item.seq not in never]
        answered = {o.seq: o for o in known.outcomes}
        return rest, [
            answered.get(item.seq) or _cut_short(item.seq, error_class) for item, _ in rest
        ]

    async def _reserve(self, chunk: list[Item]) -> tuple[Grant, list[Item]] | None:
        """Reserve ``chunk`` on the provider's quotas and pace, and wait until it may go:
        the grant and the part of the chunk it covers (the rest is back in the queue), or
        None when the whole chunk is (the quota's last sends are out elsewhere, the pace
        is booked past ``horizon``, or the batch stopped)."""
        limiter = self.c.limiter
        while True:
            try:
                grant = await limiter.take_some(len(chunk), tracked=True, horizon=self.horizon)
            except QuotaExhaustedError as exc:
                self.put_back(chunk)
                await give_back_claims(self.writer, chunk, exc.detail)
                self._stop_for(exc)
                return None
            if not grant.count:  # some may come back, or the pace frees up: ask again
                self.put_back(chunk)
                await give_back_claims(self.writer, chunk, WAITED)
                await self._rest(grant.wait)
                return None
            if grant.count < len(chunk):  # the last of today's quota: the rest waits
                rest, chunk = chunk[grant.count :], chunk[: grant.count]
                self.put_back(rest)  # (not claimed while the granted part is on the wire)
                await give_back_claims(self.writer, rest, WAITED)
            if grant.wait <= 0:
                return grant, chunk
            # The provider's pace (or its hold): a pause or cancel meanwhile stops them,
            # the run's time budget does not (reserved within ``horizon``: see run_out).
            await give_back_claims(self.writer, chunk, WAITED)
            await self._rest(grant.wait, self.done)
            if not self.halted and not await limiter.held():
                return grant, chunk
            # Halted; or a throttling reply held the provider (or held it longer) while
            # they waited: their turn fell in the hold, they book again, after it.
            await limiter.settle(grant, len(chunk))
            if self.stopped:
                self.put_back(chunk)
                return None

    async def _unclaim(
        self, messages: list[tuple[Item, OutgoingMessage]], detail: str = WAITED
    ) -> None:
        """Claimed messages not handed over wait in the queue, their claims given back
        (no attempt, as while they waited for their pace)."""
        items = _not_an_attempt(messages)
        for item in items:
            item.claimed = True
        self.put_back(items)
        await give_back_claims(self.writer, items, detail)

    async def _slot_again(self, kept: KeptSession) -> bool:
        """The slot was not renewed in time (a stall of this process or of Redis, longer
        than most of its TTL): it may expire, and another worker take it, so the
        connection closes (max_connections holds) and the sender waits for a slot
        again; False if the batch stopped meanwhile."""
        log.warning(
            "campaign %s: its connection slot could not be renewed in time (it may "
            "expire, and another sender take it): the connection closes, and reconnects "
            "once a slot is held again", self.c.content.id,
            extra=self.outcome_log.context,
        )  # fmt: skip
        self.stats.slots_lost += 1
        await kept.drop_session()
        if not await self.c.slots.hold(kept.token, self._stop_waiting):
            return False
        kept.slot_lost = False  # (the renewal may have seen it gone while we waited)
        return True

    async def _expired(self) -> bool:
        """Whether the campaign's ``expires_at`` has passed: then it is ``expired`` and the
        batch stops, its chunk unsent (the status watch sees it only at its next poll, and
        nothing may go out after it)."""
        expires_at = self.c.content.expires_at
        if expires_at is None or expires_at > datetime.now(UTC):
            return False
        await expire_now(self.writer.client, self.c.content.id)
        self.c.status = CampaignStatus.EXPIRED
        self.c.stop_reason = f"campaign {self.c.status}"
        self.finish()
        return True

    async def _rest(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Wait ``seconds`` (the provider's pace, a backoff or a throttle's pause), less
        when the batch ends meanwhile (paused, cancelled, handed on by a stopping worker:
        nothing more is sent after it, and the worker need not wait it out) or, unless
        ``until`` says otherwise, when the run is out of time."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((until or self.cut).wait(), seconds)

    async def _build(self, chunk: list[Item]) -> list[tuple[Item, OutgoingMessage]]:
        """Render the items; those that cannot be built fail at once."""
        built: list[tuple[Item, OutgoingMessage]] = []
        failed: list[PlannedWrite] = []
        # A chunk of an HTTP batch holds up to 1000 messages, and a template may take up to
        # its render limit for each: the event loop gets a turn every BUILD_SLICE_SECONDS,
        # so the lease's renewal and the status watch run meanwhile.
        turn_at = time.monotonic() + BUILD_SLICE_SECONDS
        for item in chunk:
            if time.monotonic() > turn_at:  # (60 ns a message)
                # Not sleep(0): a renewal's round trip to Redis takes the loop a few turns.
                await asyncio.sleep(BUILD_PAUSE_SECONDS)
                turn_at = time.monotonic() + BUILD_SLICE_SECONDS
            item.attempts += 1
            try:
                built.append((item, self.c.build(item)))
            except InvalidAddressError as exc:
                failed.append(
                    self._final(
                        item,
                        MessageState.FAILED,
                        error_class=ErrorClass.INVALID_RECIPIENT.value,
                        detail=str(exc),
                    )
                )
            except Exception as exc:  # a template or value this message cannot carry
                detail = str(exc)
                if not isinstance(exc, RenderError | ValueError):  # not foreseen: a bug
                    log.exception(
                        "campaign %s: building message %s", self.c.content.id, item.seq,
                        extra={**self.outcome_log.context, "seq": item.seq},
                    )  # fmt: skip
                    detail = f"internal error: {type(exc).__name__}: {exc}"
                failed.append(
                    self._final(
                        item,
                        MessageState.FAILED,
                        error_class=ErrorClass.INVALID_MESSAGE.value,
                        detail=detail,
                    )
                )
        # Written over what they were (claimed by the load, queued, or waiting for a
        # retry), unless a cancel (or the expiry) settled them meanwhile.
        await self._commit(failed, claimed=False)
        for w in failed:
            w.item.claimed = False  # settled
        return built

    async def _claim(
        self, built: list[tuple[Item, OutgoingMessage]]
    ) -> list[tuple[Item, OutgoingMessage]]:
        """Claim the built items the load did not; those someone else settled meanwhile
        are dropped (never sent twice)."""
        wanted = [item for item, _ in built if not item.claimed]
        # Checked against the suppression list again here, not only when the batch was
        # loaded: a long batch (a slow pace) sends minutes after its load.
        answers = iter(
            await self.writer.claim_screened_many(
                [(i.seq, claim_record(i.attempts), suppression_key(i.email)) for i in wanted]
            )
        )
        ready = []
        for item, message in built:
            answer = "1" if item.claimed else next(answers)
            if answer == "1":
                item.claimed = False  # attempted from here on: its outcome is recorded
                item.attempted = True
                ready.append((item, message))
            elif answer == "2":  # suppressed since the load: recorded so
                self._settle(MessageState.SUPPRESSED.value)
            else:  # settled by someone else meanwhile: never send twice
                self._one_less()
        return ready

    def _stop_for(self, exc: ConfigurationError) -> None:
        """The batch stops, and its campaign pauses, for ``exc``."""
        # A used-up quota is no connection error: its detail says it all.
        quota = isinstance(exc, QuotaExhaustedError)
        self.c.stop_reason = exc.detail if quota else f"{exc.error_class.value}: {exc.detail}"
        self.c.stop_kind = incidents.kind_of(exc)
        self.c.resume_at = exc.resumes_at if isinstance(exc, QuotaExhaustedError) else None

    async def _not_attempted(
        self, messages: list[tuple[Item, OutgoingMessage]], error_class: ErrorClass, detail: str
    ) -> None:
        """None of these claimed messages was handed over: their claims are given back
        (not an attempt) and they wait in the queue (for resume, or the next run)."""
        writes = []
        for item in _not_an_attempt(messages):
            rec = record(
                MessageState.RETRY,
                attempts=item.attempts,
                error_class=error_class.value,
                detail=detail,
                throttles=item.throttles,  # (kept: a give-back must not reset them)
            )
            writes.append((item.seq, rec, ""))
        self.put_back(item for item, _ in messages)
        await self.writer.give_back_many(writes)

    async def _cut_back(
        self, messages: list[tuple[Item, OutgoingMessage]], error_class: ErrorClass, detail: str
    ) -> None:
        """Claimed messages a run's deadline cut before they were handed over: given back
        (:meth:`_not_attempted`), each such cut counted as a throttled try (not an
        attempt). A provider whose waits never fit a run (a connect or greeting stalled
        past the cut under a ``timeout`` longer than the run can wait: warned, not
        refused, see ``settings.wait_problem``) cut every run at the same place, and
        nothing ended the batch: its messages now fail after ``max_throttles`` such runs,
        saying why."""
        back: list[tuple[Item, OutgoingMessage]] = []
        over: list[tuple[Item, OutgoingMessage]] = []
        for item, message in messages:
            item.throttles += 1
            over_limit = item.throttles >= self.settings.max_throttles
            (over if over_limit else back).append((item, message))
        if back:
            await self._not_attempted(back, error_class, detail)
        if over:
            _not_an_attempt(over)
            limit = self.settings.max_throttles
            gave_up = f"gave up after {limit} throttled tries, the last a run cut short: {detail}"
            await self._commit(
                [
                    self._final(
                        item,
                        MessageState.FAILED,
                        error_class=error_class.value,
                        detail=gave_up,
                        meta=message.meta,
                    )
                    for item, message in over
                ]
            )

    async def _session_failed(
        self, messages: list[tuple[Item, OutgoingMessage]], exc: ProviderError
    ) -> None:
        """The session could not start or died before these messages were handed over."""
        if isinstance(exc, ConfigurationError):
            self._stop_for(exc)
            await self._not_attempted(messages, exc.error_class, exc.detail)
            return
        assert isinstance(exc, TransientError)
        jitter, now = random.uniform(0.5, 1.0), time.time()  # (one for the chunk: see _retry)
        delay = await self._commit(
            [
                self._retry(item, SendOutcome.from_error(item.seq, exc), message.meta, jitter, now)
                for item, message in messages
            ]
        )
        if isinstance(exc, ThrottledError):  # the provider is held too
            delay = await self._slow_down(delay, exc.retry_after)
        await self._rest(min(delay, self.settings.inline_retry_seconds))


# Why a chunk whose session was still opening at the run's deadline waits again.
_OPEN_CUT = (
    "not sent: the provider's session was still opening at the batch task's time limit "
    "(DISPATCH_VISIBILITY_TIMEOUT / 2); the next run sends it"
)


# Why a message of a chunk cut at the run's deadline, never handed over, waits again.
_SEND_CUT = (
    "not sent: the batch task's time limit (DISPATCH_VISIBILITY_TIMEOUT / 2) came before it "
    "was handed over; the next run sends it"
)


def _not_an_attempt(messages: list[tuple[Item, OutgoingMessage]]) -> list[Item]:
    """Their claims' attempt taken back (claimed, never handed over): their items."""
    items = [item for item, _ in messages]
    for item in items:
        item.attempted = False
        item.attempts -= 1
    return items


def _cut_short(seq: int, error_class: ErrorClass) -> SendOutcome:
    """The outcome of a message still waiting for its answer at the batch run's time
    limit (DESIGN §7: unknown, never resent)."""
    detail = "no answer before the batch task's time limit (DISPATCH_VISIBILITY_TIMEOUT / 2)"
    return SendOutcome(seq, OutcomeStatus.UNKNOWN, error_class, detail)


def _unknown(seq: int, exc: Exception) -> SendOutcome:
    """The outcome of a message whose hand-over raised what no adapter should: it may
    or may not have gone out (DESIGN §7: such messages end ``unknown``, never resent)."""
    detail = f"internal error: {type(exc).__name__}: {exc}"
    return SendOutcome(seq, OutcomeStatus.UNKNOWN, ErrorClass.DISPATCH_FAILED_HTTP, detail)


async def run_batch(
    campaign_id: str,
    batch: int,
    *,
    r: aioredis.Redis,
    settings: Settings | None = None,
    pool: SessionPool | None = None,
    stop_key: str = "",
) -> BatchResult:
    """Send every unsettled message of one batch. Raises only for infrastructure errors.

    ``pool``: this process's sessions kept from earlier batches (dispatch.session_pool);
    the batch takes those of its provider and leaves its own there. None: the batch's
    sessions are closed when it ends. ``stop_key``: a key whose existence means this
    process's worker is shutting down: the batch stops after the chunks on the wire,
    gives back the rest and asks to run again shortly (another worker takes it over).
    """
    settings = settings or get_settings()
    result = BatchResult(campaign_id, batch)
    lease = BatchLease(r, campaign_id, batch, settings.lease_ttl_ms)
    # Round trips are few: under load each one waits in Redis's queue behind other
    # workers' scripts. The first takes the lease and reads the campaign and its
    # provider (the content only when this process does not hold it yet).
    stats: SendStats | None = None  # the send metrics of this run, once it sends
    stats_provider = ""
    begun = await begin_batch(r, lease, campaign_id, known_fingerprint(campaign_id))
    if not begun.acquired:
        result.busy = True
        return result
    try:
        content = content_of(campaign_id, begun)
        if content is None:
            log.warning(
                "batch %s/%s: campaign does not exist", campaign_id, batch,
                extra={"campaign_id": campaign_id, "batch": batch},
            )  # fmt: skip
            return result
        result.provider = content.provider
        status = begun.status
        size = int(begun.batch_size or settings.batch_size)
        raw_provider = begun.provider
        if begun.nickname != content.provider:  # stored without its provider's name
            raw = await r.get(store.provider_key(content.provider))
            raw_provider = None if raw is None else str(raw)
        # A batch that goes out as one chunk is claimed by its load (no claim round trip
        # of its own); others claim each chunk right before it is sent.
        one_chunk = (
            raw_provider is not None
            and status == CampaignStatus.RUNNING.value
            and chunk_size(content.provider, raw_provider, settings) >= size
        )
        loaded = await load_batch(
            r,
            campaign_id,
            batch * size,
            size,
            content.category,
            lease if one_chunk else None,
            content.cc + content.bcc,
        )
        writer = LedgerWriter(
            r, campaign_id, lease.token, batch, content.provider, content.category
        )
        items, stale, retry_at = unsettled(loaded, settings)
        run_items = items  # (all of them: see give_back_after_failure)
        unrecorded: list[tuple[int, bytes, str]] = []  # (the sender's, once it runs)
        try:
            await writer.put_many(stale)
            if stale:
                log_lost_claims(campaign_id, batch, [seq for seq, _, _ in stale])
            terminal = terminal_state(status, content)
            if terminal is MessageState.EXPIRED and status != CampaignStatus.EXPIRED.value:
                await expire_now(r, campaign_id)  # before its last message settles
            if terminal is not None:
                # Only over what is still unsettled: a cancel settling the same messages
                # meanwhile wins (its records, its counts; /metrics counts each once).
                made = Records()
                ends = [(i.seq, unsent_record(made, terminal, i), "") for i in items]
                written = await writer.put_unsettled_many(ends)
                if any(written):
                    result.counts[terminal.value] = sum(written)
                return result
            if status != CampaignStatus.RUNNING.value:
                return result  # paused or not started: resume re-enqueues the batch
            items, suppressed = await drop_suppressed(
                writer, items, loaded.suppressed, loaded.opted_out, content.category
            )
            if suppressed:
                result.counts["suppressed"] = suppressed
            if raw_provider is None:
                gone = provider_gone(content.provider)
                if await pause_running(r, campaign_id, gone):  # once, not by every batch
                    kind = incidents.PauseKind.PROVIDER_DELETED
                    await incidents.paused(r, campaign_id, content.provider, kind, gone)
                return result
            provider, transport = provider_for(content.provider, raw_provider, settings)
            campaign = BatchCampaign(
                content,
                provider,
                transport,
                compiled_for(content),
                begun.send_date or datetime.now(UTC).strftime("%Y%m%d"),
                settings,
                r,
                loaded.suppressed_copies,
            )
            pool_key = (content.provider, raw_provider)
            sender = BatchSender(campaign, writer, items, settings, pool, pool_key)
            unrecorded = sender.unrecorded
            n = max(1, min(campaign.transport.max_sessions, settings.sessions_per_worker))
            n = min(n, max(1, len(items) // max(1, campaign.chunk_size)))
            kept: list[KeptSession | None] = []
            if pool is not None:
                kept.extend(await pool.take(pool_key, n))
            kept += [None] * (n - len(kept))
            watcher = asyncio.create_task(watch_status(r, campaign, sender, stop_key))
            sessions = [asyncio.create_task(sender.run_session(k)) for k in kept]
            try:
                await asyncio.gather(*sessions)
            except BaseException:
                # One sender failed: the others take no more messages, and the chunks
                # they have on the wire are recorded before the run gives up its claims
                # and its lease (not by orphans after it: as lost sends).
                sender.abort()
                await asyncio.gather(*sessions, return_exceptions=True)
                raise
            finally:
                watcher.cancel()
                sender.outcome_log.close()
                stats, stats_provider = sender.stats, provider.nickname  # sent with the release
            if (
                campaign.stop_reason
                and campaign.status is CampaignStatus.RUNNING
                and campaign.stop_kind is not incidents.PauseKind.PROVIDER_DELETED
                and await provider_replaced(r, provider, raw_provider)
            ):
                # The configuration that failed (a refused password) was replaced while
                # the batch used it: what failed no longer holds; the batch runs again
                # with the new one rather than pausing the campaign with a stale reason.
                campaign.stop_reason = ""
                sender.reconfigured = True
            if campaign.stop_reason and campaign.status is CampaignStatus.RUNNING:
                # A configuration error: pause with the reason instead of failing everyone.
                await give_back_claims(writer, sender.queue)
                if await pause_running(r, campaign_id, campaign.stop_reason, campaign.resume_at):
                    await incidents.paused(
                        r, campaign_id, provider.nickname, campaign.stop_kind, campaign.stop_reason
                    )
                result.paused_reason = campaign.stop_reason
            elif campaign.status in (CampaignStatus.CANCELLED, CampaignStatus.EXPIRED):
                state = MessageState(campaign.status.value)
                left = list(sender.queue)
                left += sender.waiting  # parked for an inline retry
                made = Records()  # (over what is still unsettled, as above)
                await writer.put_unsettled_many(
                    [(i.seq, unsent_record(made, state, i), "") for i in left]
                )
            else:
                await give_back_claims(writer, sender.queue)
                on = sender.handed_on or sender.out_of_time or sender.reconfigured
                if on and (sender.queue or sender.waiting):
                    # Its worker is shutting down, or the run lasted its time budget:
                    # another run takes the rest over now (not after a lapsed lease, nor
                    # unknown after a kill at the deadline). Its provider changed: the
                    # rest goes with the new configuration.
                    how = "handed_on" if sender.handed_on or sender.out_of_time else "reconfigured"
                    result.counts[how] = len(sender.queue) + len(sender.waiting)
                    retry_at = time.time()
                    await note_progress(r, campaign_id)
                elif sender.starved and (sender.queue or sender.waiting):
                    # Every slot of the provider is in use elsewhere: back to the broker
                    # for a moment. The campaign is alive (housekeeping must not think
                    # its batches lost and enqueue them twice). (Retries loaded before
                    # their time too: nothing else brings them back.)
                    result.counts["deferred"] = len(sender.queue) + len(sender.waiting)
                    sender.stats.deferred += 1  # sent with the lease's release
                    again = time.time() + random.uniform(1.0, 2.0)
                    retry_at = min(retry_at or again, again)
                    await note_progress(r, campaign_id)
            for key, value in sender.counts.items():
                result.counts[key] = result.counts.get(key, 0) + value
            if sender.parked_until is not None:
                retry_at = min(retry_at or sender.parked_until, sender.parked_until)
            result.retry_at = retry_at
            return result
        except Exception:
            # Whatever this run claimed and did not attempt goes back, and what it sent
            # is recorded, once Redis lets us.
            await give_back_after_failure(writer, run_items, lease.ttl_ms, unrecorded)
            raise
    finally:

        def metrics(pipe: Pipeline) -> None:
            if stats is not None:
                stats.add_to(pipe, stats_provider)
            if result.retry_at is not None:
                note_parked(pipe, campaign_id, result.retry_at)

        await lease.release(metrics)
