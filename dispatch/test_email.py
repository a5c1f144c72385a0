"""The provider test email (DESIGN §2): one real message through a provider, and its verdict.

The message goes through the same adapter as a campaign's, so a good answer means the
provider really took a message: host, port, security, credentials and sender all work.
Failures are named with the error classes of DESIGN §2 (``SMTP connection error``,
``SMTP invalid email ID``, ``SMTP dispatching failed``, ``SMTP timeout``,
``Dispatch failed``).

A Generic HTTP payload may use custom ``$$`` placeholders; the test request's ``vars``
fill them, as a recipient's vars fill them in a campaign.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis

from dispatch import provider_ids, suppressions
from dispatch.campaigns import CampaignStateError
from dispatch.limits import ConnectionSlots, Grant, ProviderLimiter, QuotaExhaustedError
from dispatch.settings import Settings, get_settings
from dispatch.unsubscribe import recipient_links
from providers.addresses import normalize_address
from providers.base import (
    CutShort,
    OutcomeStatus,
    OutgoingMessage,
    SendOutcome,
    Transport,
    known_at_cut,
)
from providers.config import HttpConfig, ProviderBase
from providers.errors import ErrorClass, ProviderError
from providers.http_config import placeholder_usage
from providers.placeholders import is_custom
from providers.registry import build_transport

log = logging.getLogger(__name__)

TEST_CAMPAIGN_PREFIX = "test-"
# How long a test message's links find its provider (a tester may click days later).
TEST_LINK_SECONDS = 30 * 86_400
TEST_CATEGORY = "test"
# The whole exchange is bounded even if the provider's own timeout is long.
DEFAULT_DEADLINE_SECONDS = 60.0
TEST_SLOT_WAIT_SECONDS = 10.0  # for one of the provider's connections, while campaigns run
CLOSE_GRACE_SECONDS = 0.5  # a test past its deadline waits this for each step of its close
SLOT_CLOSE_SECONDS = 5.0  # a test's connection slot outlives its deadline this long


def exchange_seconds(config: ProviderBase, deadline: float) -> float:
    """What a test's exchange with the provider is kept of its ``deadline`` after a wait
    (for the pace, or for a quota's send out with a campaign): the provider's
    ``timeout``, one step's wait (a connection, a login, a reply), but at most half the
    deadline, so that a provider with a long ``timeout`` still lets a test wait a little.

    A wait that leaves less is refused at once, saying when to try again: an exchange
    given only what was left (1 s, after a wait ending just inside the deadline) timed
    out in an SMTP login and answered "outcome unknown, check the inbox" for a message
    that was never sent."""
    return min(float(getattr(config, "timeout", deadline)), deadline / 2)


@dataclass(frozen=True, slots=True)
class TestEmailResult:
    """``ok``, the error class (None when ok) and the provider's answer or the reason."""

    __test__ = False  # not a pytest test class

    ok: bool
    error: str | None
    detail: str


def _timeout_class(config: ProviderBase, smtp: ErrorClass = ErrorClass.TIMEOUT) -> ErrorClass:
    return ErrorClass.DISPATCH_FAILED_HTTP if isinstance(config, HttpConfig) else smtp


def build_test_message(
    config: ProviderBase, to: str, settings: Settings, vars: Mapping[str, Any] | None = None
) -> OutgoingMessage:
    """The test message for ``config``; raises ``InvalidAddressError`` for a bad ``to``.

    ``vars`` fill custom placeholders at both levels: the test message is its campaign's
    only recipient, so a batch payload's globals take them as campaign vars.
    """
    address = normalize_address(to)
    campaign_id = f"{TEST_CAMPAIGN_PREFIX}{secrets.token_hex(4)}"
    day = datetime.now(UTC).strftime("%Y%m%d")
    meta = f"{address}|{settings.account_id}|{campaign_id}|{day}|0|{TEST_CATEGORY}|0|"
    kind = getattr(config, "kind", "provider")
    html = (
        f"<p>This is a test message from <b>dispatch</b> through the {kind} provider "
        f"<code>{config.nickname}</code>.</p><p>If you can read it, the provider works.</p>"
    )
    headers, unsubscribe_url, preferences_url = recipient_links(
        config.preference_center, config.preference_center_url, campaign_id, 0, address,
        TEST_CATEGORY,
    )  # fmt: skip
    return OutgoingMessage(
        seq=0,
        meta=meta,
        campaign_id=campaign_id,
        to=address,
        subject=f"dispatch test message ({config.nickname})",
        html=html,
        text=(
            f"This is a test message from dispatch through the {kind} provider "
            f"{config.nickname}. If you can read it, the provider works."
        ),
        from_address=config.from_address,
        from_name=config.from_name,
        reply_to=config.reply_to,
        headers=headers,
        user_vars=vars or {},
        campaign_vars=vars or {},
        unsubscribe_url=unsubscribe_url,
        preferences_url=preferences_url,
    )


def _missing_vars(config: ProviderBase, vars: Mapping[str, Any]) -> list[str]:
    """The custom placeholders of an HTTP payload that ``vars`` leave without a value."""
    if not isinstance(config, HttpConfig):
        return []
    return sorted(n for n in placeholder_usage(config).every if is_custom(n) and n not in vars)


def _verdict(outcome: SendOutcome) -> TestEmailResult:
    if outcome.status is OutcomeStatus.SENT:
        return TestEmailResult(True, None, outcome.detail or "accepted")
    error = outcome.error_class or ErrorClass.DISPATCH_FAILED_SMTP
    detail = outcome.detail
    if outcome.status is OutcomeStatus.RETRY:
        detail = f"temporary failure: {detail}"
    elif outcome.status is OutcomeStatus.UNKNOWN:
        detail = f"outcome unknown: {detail}"
    return TestEmailResult(False, error.value, detail)


class SuppressedTestAddressError(CampaignStateError):
    """The test address is on the suppression list (HTTP 409, field ``to``); ``entry``
    is its suppression entry."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        email = entry.get("email", "")
        super().__init__(
            f"{email} is on the suppression list ({suppressions.describe(dict(entry))}): no "
            "test message is sent to it. Send it anyway with allow_suppressed (CLI: "
            f"--allow-suppressed), or remove the entry (DELETE /v1/suppressions/{email}, "
            f"CLI: dispatch suppressions remove {email})",
            "to",
        )
        self.entry = dict(entry)


async def refuse_suppressed(to: str, limits: aioredis.Redis) -> None:
    """Raises :class:`SuppressedTestAddressError` when ``to`` is on the suppression list:
    a test message is a real message in a real inbox, and someone who complained or
    bounced must not get it unless the caller says so."""
    entry = await suppressions.get_async(to, limits)
    if entry is not None:
        raise SuppressedTestAddressError(entry)


def tested_provider_key(test_id: str) -> str:
    """String: the provider nickname a test message (campaign id ``test_id``) went through."""
    from dispatch import store

    return f"{store.PREFIX}:campaign-test:{test_id}"


def provider_of_test(r: redis.Redis, test_id: str) -> str | None:
    """The provider of the test message ``test_id`` (None: no such test, or long ago)."""
    if not test_id.startswith(TEST_CAMPAIGN_PREFIX):
        return None
    found = r.get(tested_provider_key(test_id))
    return None if found is None else found if isinstance(found, str) else found.decode()


async def send_test_email(
    config: ProviderBase,
    to: str,
    *,
    vars: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    deadline: float = DEFAULT_DEADLINE_SECONDS,
    limits: aioredis.Redis | None = None,
) -> TestEmailResult:
    """Send one test message through ``config`` to ``to``, ``vars`` as its recipient's;
    never raises for the provider's failures (they are the answer), only
    ``InvalidAddressError`` for a bad ``to``. With ``limits`` (the Redis the workers
    share) it keeps to the provider's connections, pace and quotas as a campaign does.
    """
    settings = settings or get_settings()
    message = build_test_message(config, to, settings, vars)
    missing = _missing_vars(config, vars or {})
    if missing:  # the message could not be built: nothing to send
        names = ", ".join(f"$${name}" for name in missing)
        detail = f'no value for {names}: give it in "vars" (as a recipient\'s vars)'
        return TestEmailResult(False, ErrorClass.INVALID_MESSAGE.value, detail)
    if limits is not None and message.unsubscribe_url:  # its links find the provider
        key = tested_provider_key(message.campaign_id)
        await limits.set(key, config.nickname, ex=TEST_LINK_SECONDS)
    return await send_one(config, message, settings=settings, deadline=deadline, limits=limits)


async def send_one(
    config: ProviderBase,
    message: OutgoingMessage,
    *,
    settings: Settings | None = None,
    deadline: float = DEFAULT_DEADLINE_SECONDS,
    limits: aioredis.Redis | None = None,
    transport: Transport | None = None,
) -> TestEmailResult:
    """Send ``message`` alone through ``config`` (``transport``: its transport, when the
    caller built it) and say how it went; never raises for the provider's failures.
    With ``limits``, within the provider's limits (see :func:`send_test_email`)."""
    settings = settings or get_settings()
    if transport is None:
        transport = build_transport(
            config, allow_private_endpoints=settings.allow_private_endpoints
        )

    exchange = _Exchange(config, transport, message, deadline)
    try:
        if limits is None:
            return await exchange.within(deadline)
        result = await _within_limits(limits, config, exchange, deadline, settings)
        if result.ok and exchange.outcome is not None:
            await _remember_id(limits, transport.kind, message, exchange.outcome, settings)
        return result
    except ProviderError as exc:
        return TestEmailResult(False, exc.error_class.value, exc.detail)


@dataclass(slots=True)
class _Exchange:
    """A test message's exchange with its provider (:meth:`run`), and what it learnt,
    which answers when the test's ``deadline`` cuts it (:meth:`within`)."""

    config: ProviderBase
    transport: Transport
    message: OutgoingMessage
    deadline: float  # the test's, named in its answer
    opened: bool = False  # the session opened: the message may have been handed over
    outcome: SendOutcome | None = None  # the provider's answer
    refusal: ProviderError | None = None  # the session's refusal (nothing taken)
    known: CutShort | None = None  # what the session knew when its send was cancelled
    # Perhaps taken: cut while on the wire, or answered "unknown" (a connection lost after
    # the message's end): it counts against the quotas, as a campaign's message does.
    unknown: bool = False

    async def run(self) -> TestEmailResult:
        async with self.transport.session() as session:
            self.opened = True
            try:
                self.outcome = (await session.send([self.message]))[0]
            except ProviderError as exc:
                self.refusal = exc
                raise
            except asyncio.CancelledError:
                self.known = known_at_cut(session)  # (before its close)
                raise
        return _verdict(self.outcome)

    async def within(self, seconds: float) -> TestEmailResult:
        """:meth:`run` within ``seconds`` (see :func:`_bounded`); raises ``ProviderError``
        as it does. Cut short, the answer is what the provider answered before the cut
        (a close still waiting for its goodbye), or "not sent" when the message was
        certainly not handed over (the connection or its login still opening, an SMTP
        server not yet answering the commands before its content), else "outcome
        unknown": an "outcome unknown, check the inbox" for a message never sent made
        its sender wait, and look, for nothing."""
        try:
            result = await _bounded(self.run, seconds)
        except ProviderError:  # (a ProviderTimeoutError is a TimeoutError too: not a cut)
            raise
        except TimeoutError:
            pass
        else:
            if self.outcome is not None:
                self._note(self.outcome)
            return result
        seq = self.message.seq
        if self.outcome is not None:
            return _verdict(self._note(self.outcome))
        if self.refusal is not None:
            return TestEmailResult(False, self.refusal.error_class.value, self.refusal.detail)
        known = self.known or CutShort()
        answered = [o for o in known.outcomes if o.seq == seq]
        if answered:
            return _verdict(self._note(answered[0]))
        if not self.opened or seq in known.not_handed_over:
            return TestEmailResult(
                False,
                _timeout_class(self.config).value,
                f"not sent: no answer within {self.deadline:g} s before the message was "
                "handed over (the connection, its login or the commands before the "
                "message's content were still unanswered); sending the test again is safe",
            )
        # The message may be on the wire (an SMTP server may check it for minutes before
        # it answers its end: data_timeout): sending the test again may deliver two.
        self.unknown = True
        return TestEmailResult(
            False,
            _timeout_class(self.config).value,
            f"outcome unknown: no answer within {self.deadline:g} s (the provider may have "
            "taken the message: check the inbox before sending another)",
        )

    def _note(self, outcome: SendOutcome) -> SendOutcome:
        """``outcome``, noted as perhaps taken when it is unknown."""
        if outcome.status is OutcomeStatus.UNKNOWN:
            self.unknown = True
        return outcome


async def _bounded(
    exchange: Callable[[], Awaitable[TestEmailResult]], seconds: float
) -> TestEmailResult:
    """``exchange()`` within ``seconds``, its connection's close included; raises
    ``TimeoutError``. ``asyncio.wait_for`` waits for the exchange it cancelled to end,
    and its session's close then waits for the reply to its QUIT, which a server still
    checking the message's end sends after that (up to the provider's ``timeout``, 30 s
    by default): a test took 90 s, past the API client's read timeout (75 s), which said
    "may have arrived" of a test that answered. Each further cancel ends the wait its
    close is in (the connection is dropped, without a goodbye)."""
    task = asyncio.ensure_future(exchange())
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if task in done:
            return task.result()
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_GRACE_SECONDS)
    except asyncio.CancelledError:  # the caller gave up: so does the exchange
        task.cancel()
        raise
    if not task.cancelled() and task.exception() is None:
        return task.result()  # (it answered as it was cancelled)
    raise TimeoutError


async def _remember_id(
    client: aioredis.Redis,
    kind: str,
    message: OutgoingMessage,
    outcome: SendOutcome,
    settings: Settings,
) -> None:
    """Keep the provider's id of a test message it took, as a campaign's send keeps its
    messages' (:mod:`dispatch.provider_ids`): a callback about it that comes without its
    meta (SES without original headers, a SendGrid asynchronous bounce) then names the
    test id, as one with the meta does. A test to a bad address bounces: its suppression
    entry and ``Notification Failed`` name the test, not nothing (it counts in no
    campaign either way). Not kept (logged), the answer is the same."""
    if kind not in provider_ids.INDEXED_KINDS or not outcome.provider_message_id:
        return
    sent = [(outcome.provider_message_id, message.meta, message.seq)]
    metas = provider_ids.entries(kind, message.campaign_id, sent)
    try:
        await provider_ids.remember(client, metas, settings.provider_id_days)
    except redis.RedisError as exc:
        log.warning(
            "test message %s: the provider's id %s was not kept (%s): its callbacks "
            "without meta will name no test",
            message.campaign_id, outcome.provider_message_id, exc,
        )  # fmt: skip


async def _within_limits(
    client: aioredis.Redis,
    config: ProviderBase,
    exchange: _Exchange,
    deadline: float,
    settings: Settings,
) -> TestEmailResult:
    """``exchange`` as one of the provider's campaign sends: it takes a connection slot
    (``max_connections`` holds across workers and this test), waits for the provider's
    pace, and counts against the daily quotas (given back if the provider refused it).

    Its grant is tracked, as a campaign's are: while it is out, a campaign that finds the
    quota taken waits for it instead of pausing "used up" (the test message may be
    refused, and its send given back). When the quota's last sends are out (campaigns'
    grants that may come back), the test waits for them, within ``deadline``."""
    # The slot is not renewed: it lasts the whole test, its close included (with the
    # batch lease's TTL alone, DISPATCH_LEASE_TTL_MS under the deadline, it expired
    # mid-exchange and a campaign's sender took it: two connections to a provider that
    # allows one). A process gone mid-test frees it that much later.
    slot_ttl = max(settings.lease_ttl_ms / 1000, deadline + SLOT_CLOSE_SECONDS)
    slots = ConnectionSlots(client, config, slot_ttl)
    token = f"test-{secrets.token_hex(8)}"
    # The deadline holds from the start: the wait for a connection is part of it (after
    # it, a whole deadline more outlasted the API client's 60 s read timeout).
    need = exchange_seconds(config, deadline)
    give_up = time.monotonic() + deadline
    last_start = give_up - need  # the exchange starts by then, or not at all
    waited = min(time.monotonic() + TEST_SLOT_WAIT_SECONDS, last_start)
    if not await slots.hold(token, lambda: time.monotonic() > waited):
        return TestEmailResult(
            False,
            _timeout_class(config, ErrorClass.CONNECTION).value,
            f"all {config.max_connections} connections of provider {config.nickname!r} are "
            f"in use by campaigns (max_connections): try again later",
        )
    try:
        # Out for as long as the exchange may take (a lapsed grant counts as settled).
        ttl = max(deadline, settings.lease_ttl_ms / 1000)
        limiter = ProviderLimiter(client, config, grant_ttl=ttl)

        async def take() -> Grant:
            # Not booked past the exchange's last start: a booking is never given back,
            # and one the test cannot use pushed every campaign's send after it.
            grant = await limiter.take_some(1, tracked=True, horizon=horizon())
            if grant.beyond:  # (its turn: the horizon and the wait until within it)
                return Grant(0, grant.wait + horizon(), beyond=True)
            return grant

        def horizon() -> float:
            return max(last_start - time.monotonic(), 0.001)

        grant = await take()
        while not grant.count and not grant.beyond:  # the quota's last sends are out
            if time.monotonic() + grant.wait > last_start:
                return TestEmailResult(
                    False,
                    QuotaExhaustedError.error_class.value,
                    f"the daily quota of provider {config.nickname!r} is taken by sends "
                    f"still out (campaigns' messages on the wire): none came back within "
                    f"{deadline:g} s; try again later",
                )
            await asyncio.sleep(grant.wait)
            grant = await take()
        refused = 0
        try:
            # The provider's pace, or its hold after a throttling reply, lets it send only
            # later: when that leaves the exchange less than it needs within the deadline,
            # the test is not slept through (its caller, an API request, would have given
            # up and might send it again, or the exchange would be cut short and its
            # outcome unknown), it says when.
            if grant.beyond or time.monotonic() + grant.wait > last_start:
                refused = 0 if grant.beyond else 1  # (given back: it never went)
                return TestEmailResult(
                    False,
                    _timeout_class(config, ErrorClass.CONNECTION).value,
                    f"provider {config.nickname!r} sends its next message in "
                    f"{grant.wait:.0f} s (its rate_per_second, or a hold after a "
                    f"throttling reply), which leaves less than the {need:g} s its exchange "
                    f"needs (its timeout, at most half the deadline) within this test's "
                    f"{deadline:g} s: try again then",
                )
            await asyncio.sleep(grant.wait)
            # Within what is left of the deadline: the whole test takes no longer.
            left = max(give_up - time.monotonic(), need)
            result = await exchange.within(left)
            # (an outcome not known, no answer in time, counts: it may have gone)
            refused = 0 if result.ok or exchange.unknown else 1
            return result
        except ProviderError:
            refused = 1  # as a campaign's: raised before the provider took the message
            raise
        finally:
            await limiter.settle(grant, refused)
    except QuotaExhaustedError as exc:
        return TestEmailResult(False, exc.error_class.value, exc.detail)
    finally:
        await slots.release(token)


async def send_shared_test_email(
    config: ProviderBase,
    to: str,
    *,
    vars: Mapping[str, Any] | None = None,
    allow_suppressed: bool = False,
) -> TestEmailResult:
    """:func:`send_test_email` within the provider's limits on the workers' Redis (what
    the API and the CLI send). Raises :class:`SuppressedTestAddressError` when ``to``
    (normalised) is suppressed, unless ``allow_suppressed``."""

    async def send(limits: aioredis.Redis) -> TestEmailResult:
        if not allow_suppressed:
            await refuse_suppressed(to, limits)
        return await send_test_email(config, to, vars=vars, limits=limits)

    return await within_shared_limits(send)


async def within_shared_limits(
    send: Callable[[aioredis.Redis], Awaitable[TestEmailResult]],
) -> TestEmailResult:
    """``send(client)`` with a client of the workers' Redis, whose limits it keeps."""
    from dispatch import store

    client = store.async_client()
    try:
        return await send(client)
    finally:
        await client.aclose()
