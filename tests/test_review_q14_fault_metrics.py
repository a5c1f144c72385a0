"""Review Q14: the faults dispatch lives through and logs are seen in /metrics too.

A campaign beat's passes skip at every tick, a scheduled campaign paused because it could
not start, a worker's background loop (a lease's or a slot's renewal, a batch's status
watch, the closer of idle sessions) meeting a bug, a task message refused unread, a
session's connection slot lost: each was a log line only, and a bug or a misconfigured
client repeating it for days showed nowhere an operator alerts on."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery.exceptions import InvalidTaskError
from celery.signals import task_rejected, task_unknown
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from prometheus_client.parser import text_string_to_metric_families

from dispatch import (
    faults,
    housekeeping,
    incidents,
    ledger,
    lifecycle,
    limits,
    retention,
    runtime,
    store,
    tasks,
)
from dispatch.celery_app import TaskBodyTooLargeError
from dispatch.limits import ConnectionSlots
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.helpers import campaign_body, create_held, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_alert_rules import _rules
from tests.test_oncall import Watch, _labels, _scrape
from tests.test_review_h14_closer import _FailsOnce
from tests.test_review_h14_renewers import _one_connection_provider, _renewal_fails
from tests.test_session_pool import _one_task, _slots

DAY = 86400.0


def _values(text: str, name: str, label: str) -> dict[str, float]:
    """Each ``label`` value's sample ``name`` (a counter's ``..._total``) in a scrape."""
    return {
        sample.labels[label]: sample.value
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
        if sample.name == name
    }


def _seen(
    watch: Watch, name: str, alert: str, every: tuple[str, ...], counted: dict[str, float]
) -> None:
    """After one more scrape: the counter ``name`` has a series for each of ``every``
    (its one label's values), those of ``counted`` at their count and the others at 0,
    and ``alert`` fires for those of ``counted``, over the watch's scrapes."""
    watch.scrape()
    rule = next(r for r in _rules() if r["alert"] == alert)
    label = re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"])[0]
    assert _values(_scrape(watch.api_server), name, label) == dict.fromkeys(every, 0.0) | counted
    assert _labels(watch.firing().get(alert, {}), label) == set(counted)


def test_a_campaign_beat_skips_is_counted_at_each_pass_and_fires_an_alert(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A watched campaign's key holds a string: housekeeping skips it every 30 s, for as
    long as it stays, and the operator saw it only in the workers' logs."""
    watch = Watch(api_server)
    watch.scrape()  # every pass's series at 0 before
    smtp_provider(redis_client, 2525)
    redis_client.zadd(store.ACTIVE_ZSET, {"q14-string": time.time()})
    redis_client.set(store.campaign_key("q14-string"), "not a hash")
    for _ in range(2):
        housekeeping.sweep(redis_client, lambda c, b: None)
    redis_client.zadd(store.KEPT_ZSET, {"q14-kept-string": 1.0})
    redis_client.set(store.campaign_key("q14-kept-string"), "not a hash")
    retention.purge_due(redis_client, now=time.time() + 31 * DAY)
    _seen(
        watch, "dispatch_beat_campaigns_skipped_total", "DispatchCampaignSkippedByBeat",
        faults.BEAT_PASSES, {"housekeeping": 2.0, "retention_purge": 1.0},
    )  # fmt: skip


def test_a_scheduled_campaign_that_could_not_start_counts_as_an_automatic_pause(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Its recipient count written by hand: the release pauses it, and it waits for a
    person, who was told by no alert."""
    watch = Watch(api_server)
    smtp_provider(redis_client, 2525)
    send_at = datetime.now(UTC) + timedelta(seconds=0.5)
    create_held(redis_client, campaign_body("q14-rel", 1, send_at=send_at.isoformat()))
    redis_client.hset(store.counters_key("q14-rel"), "total", "many")
    watch.scrape()
    time.sleep(max(0.0, (send_at - datetime.now(UTC)).total_seconds()) + 0.05)
    started = lifecycle.release_due(client=redis_client, enqueue=lambda c, b: None)
    assert started == []
    assert redis_client.hget(store.campaign_key("q14-rel"), "status") == "paused"
    _seen(
        watch, "dispatch_campaign_pauses_total", "DispatchCampaignPausedAutomatically",
        tuple(incidents.PauseKind), {"start_failed": 1.0},
    )  # fmt: skip


def test_renewals_that_meet_a_bug_are_counted_and_fire_an_alert(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease's and a slot's renewal each fail once with an error that is not Redis's."""
    watch = Watch(api_server)
    watch.scrape()
    _renewal_fails(monkeypatch, limits._RENEW, 1)
    _renewal_fails(monkeypatch, ledger._RENEW, 1)

    async def go() -> None:
        r = store.async_client()
        slots = ConnectionSlots(r, _one_connection_provider(), ttl=0.3)  # renewed every 0.1 s
        lease = ledger.BatchLease(r, "q14-lease", 0, ttl_ms=400)  # renewed every 0.1 s
        try:
            assert await slots.acquire("a") and await lease.acquire()
            renewer = asyncio.create_task(slots.renew("a", lambda: None))
            await asyncio.sleep(0.5)
            renewer.cancel()
            await lease.release()
        finally:
            await r.aclose()

    asyncio.run(go())
    _seen(
        watch, "dispatch_unexpected_errors_total", "DispatchUnexpectedErrors",
        faults.ERROR_PLACES, {"lease_renewal": 1.0, "slot_renewal": 1.0},
    )  # fmt: skip


def test_a_status_watch_that_failed_is_counted(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """The status written by hand: the watch fails and hands its batch on, and a run
    that hands on this way at every try was seen in logs only."""
    smtp_provider(redis_client, smtp.port, rate_per_second=4.0, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(20)}
    cid, _ = create_held(redis_client, body)

    async def go() -> BatchResult:
        async with store.async_client() as client:
            run = asyncio.create_task(run_batch(cid, 0, r=client))
            while not smtp.messages:
                await asyncio.sleep(0.05)
            await client.hset(store.campaign_key(cid), "status", "on-hold")
            return await run

    assert asyncio.run(go()).counts.get("handed_on")
    errors = _values(_scrape(api_server), "dispatch_unexpected_errors_total", "where")
    assert errors["status_watch"] == 1.0


def test_an_idle_closer_that_failed_is_counted(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "CLOSE_RETRY_SECONDS", 0.3)
    pool = _FailsOnce(0.5)
    _one_task(redis_client, smtp, monkeypatch, pool)
    deadline = time.monotonic() + 4
    while (smtp.handler.active or _slots(redis_client, "local")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.failed == 1
    errors = _values(_scrape(api_server), "dispatch_unexpected_errors_total", "where")
    assert errors["idle_closer"] == 1.0


def _message(task: str) -> Message:
    return Message(
        body=b"{}",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": task, "id": "t-q14"},
    )


def test_task_messages_refused_unread_are_counted_by_reason_and_fire_an_alert(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """What the worker's consumer tells when it drops a message: a client sending them
    all day (and reading no result) was seen in the workers' logs only."""
    watch = Watch(api_server)
    watch.scrape()
    task = tasks.enqueue_campaign.name
    for exc in (
        ContentDisallowed("pickle"),
        TaskBodyTooLargeError(2**27),
        DecodeError("not JSON"),
        InvalidTaskError("the message's body is null"),
        None,  # not a task message at all
    ):
        task_rejected.send(sender=None, message=_message(task), exc=exc)
    task_unknown.send(sender=None, message=_message("dispatch.enqueue_campaing"), exc=KeyError())
    _seen(
        watch, "dispatch_task_messages_refused_total", "DispatchTaskMessagesRefused",
        faults.REFUSALS,
        {"serializer": 1.0, "too_large": 1.0, "undecodable": 1.0, "malformed": 2.0,
         "unregistered": 1.0},
    )  # fmt: skip


def test_connection_slots_lost_are_counted_by_provider(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first slot renewals fail (Redis slow for the slot script, say): the session
    is told its slot is lost, closes, takes a slot again and sends on; each loss was a
    warning only. (Renewals that always fail leave a session no slot it may send on:
    the batch then crawls, as it must, and this test took 104 s.)"""
    smtp_provider(redis_client, smtp.port, rate_per_second=8.0, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(12)}
    cid, _ = create_held(redis_client, body)
    before = _values(_scrape(api_server), "dispatch_connection_slots_lost_total", "provider")
    assert before == {"local": 0.0}
    _renewal_fails(monkeypatch, limits._RENEW, 2)

    async def go() -> BatchResult:
        async with store.async_client() as client:
            # (the slot's TTL too: told lost about 0.25 s in, at its second failed renewal;
            # three chunks of four, half a second apart, the last taken after that)
            return await run_batch(cid, 0, r=client, settings=Settings(lease_ttl_ms=300))

    assert asyncio.run(go()).counts.get("sent") == 12
    lost = _values(_scrape(api_server), "dispatch_connection_slots_lost_total", "provider")
    assert lost["local"] >= 1.0
