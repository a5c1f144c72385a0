"""Odd but well-formed input a provider may post: one odd event never costs its neighbours.

The real app over HTTP on a real Redis; the worker applies what was accepted.
"""

from __future__ import annotations

from collections import Counter

import httpx
import redis

from dispatch import campaign_reads
from tests.callback_support import (
    callback_entries,
    draft_campaign,
    inbox_empty,
    post,
)
from tests.worker import WorkerProcess, wait_for

# An integer JSON allows but no float holds (a provider's bug, or a hostile post).
HUGE = "1" + "0" * 400


def test_a_timestamp_too_large_for_a_float_is_noted_not_a_server_error(
    api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    """The event keeps the time it arrived, like any unreadable timestamp; before, the
    whole request was a 500 (so the provider retried it for ever)."""
    metas = draft_campaign(redis_client, "c-huge-ts", ["a@example.com", "b@example.com"])
    generic = (
        f'[{{"version": "v2", "type": "delivered", "email": "a@example.com", '
        f'"meta": "{metas[0]}", "timestamp": {HUGE}}}, '
        f'{{"version": "v2", "type": "delivered", "email": "b@example.com", '
        f'"meta": "{metas[1]}", "timestamp": 1795426000}}]'
    ).encode()
    sendgrid = (
        f'[{{"event": "click", "email": "a@example.com", "url": "https://x.example/",'
        f' "clevertap_meta": "{metas[0]}", "timestamp": {HUGE}}}]'
    ).encode()
    legacy = f'{{"event": "softbounce", "data": [{{"e": "a@example.com", "ts": {HUGE}}}]}}'

    answers = [
        post(api, paths["gen"], generic),
        post(api, paths["web"], generic),
        post(api, paths["sg"], sendgrid),
        post(api, paths["mail"], legacy.encode()),
    ]

    assert [a.status_code for a in answers] == [200, 200, 200, 200], [a.text for a in answers]
    assert answers[0].json()["status"] == "success"
    assert answers[1].json()["PROCESSED_EVENTS"] == 2
    wait_for(lambda: inbox_empty(redis_client), timeout=60)
    counters = campaign_reads.get_counters("c-huge-ts", redis_client)
    assert (counters["delivered"], counters["clicked"]) == (2, 1)
    kinds = Counter(e["event"] for e in callback_entries(redis_client))
    assert kinds == {
        "Notification Delivered": 4,
        "Notification Clicked": 1,
        "Notification Failed": 1,
    }
    assert all(e["ts"] > 0 for e in callback_entries(redis_client))


# SendGrid's account events (its Event Webhook reference: "delivery, engagement and
# account" events) concern the account, not a recipient: they carry no ``email``.
ACCOUNT_EVENT = {
    "event": "account_status_change",
    "type": "compliance_suspend",
    "sg_event_id": "YWNjb3VudC1zdGF0dXMtY2hhbmdl",
    "timestamp": 1795426000,
}


def test_sendgrid_events_without_a_recipient_are_recorded_and_ignored(
    api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    """An event name we do not act on needs no address; before, a post of only account
    events was a 400 that SendGrid retried for a day, and in a batch it was an error."""
    metas = draft_campaign(redis_client, "c-account-event", ["a@example.com"])
    delivered = {"event": "delivered", "email": "a@example.com", "clevertap_meta": metas[0],
                 "sg_event_id": "ZGVsaXZlcmVk", "timestamp": 1795426001}  # fmt: skip

    alone = post(api, paths["sg"], [ACCOUNT_EVENT])
    mixed = post(api, paths["sg"], [ACCOUNT_EVENT, delivered])

    success = {"status": "success", "message": "Callback processed successfully"}
    assert (alone.status_code, alone.json()) == (200, success)
    assert (mixed.status_code, mixed.json()) == (200, success)
    wait_for(lambda: inbox_empty(redis_client), timeout=60)
    assert campaign_reads.get_counters("c-account-event", redis_client)["delivered"] == 1
    assert [e["event"] for e in callback_entries(redis_client)] == ["Notification Delivered"]
    # A delivery event without its address is still that event's error.
    missing = post(api, paths["sg"], [{k: v for k, v in delivered.items() if k != "email"}])
    assert missing.status_code == 400
    assert missing.json()["message"] == "Mandatory parameter missing: email"
