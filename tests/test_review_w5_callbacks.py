"""Callbacks after verification (review W5): the real API over HTTP, a real Redis and a
real worker. A meta whose seq no campaign has must not stall its batch; a message that a
callback proves sent gets its ``Notification Sent``; two API processes taking the same
redelivered events at once apply them once.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns, store, suppressions
from dispatch.models import CampaignRequest
from dispatch.settings import get_settings
from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.callback_support import (
    callback_entries,
    callback_path,
    draft_campaign,
    generic_event,
    inbox_empty,
    post,
    stream,
)
from tests.helpers import http_provider
from tests.http_sink import HttpSink, Reply
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

SUCCESS = {"status": "success", "message": "Callback processed successfully"}


@pytest.fixture
def worker(celery_worker: WorkerProcess, redis_client: redis.Redis) -> WorkerProcess:
    return celery_worker


@pytest.fixture
def second_api(api_server: ApiServer) -> Iterator[httpx.Client]:
    """Another uvicorn server of the app on the same Redis (a second API process)."""
    server = ApiServer().start()
    try:
        with server.client() as client:
            yield client
    finally:
        server.stop()


def settle(r: redis.Redis, timeout: float = 60) -> None:
    wait_for(lambda: inbox_empty(r), timeout=timeout)


def lost_send(r: redis.Redis, campaign_id: str) -> str:
    """A one-recipient campaign (lost@example.com) through an http provider "esp" whose
    answer comes too late: the ESP took the message, its outcome is ``unknown``. Its meta.
    """
    with HttpSink(default=Reply(delay=2.0)) as esp:  # the sender gives up after 0.5 s
        http_provider(r, esp.url, timeout=0.5)
        body = {"id": campaign_id, "provider": "esp", "subject": "s", "html": "h",
                "recipients": [{"email": "lost@example.com"}]}  # fmt: skip
        campaigns.create_campaign(CampaignRequest.model_validate(body), client=r)
        wait_for(lambda: campaign_reads.get_status(campaign_id, r).value == "completed", timeout=60)
        meta: str = esp.requests[0].json()["msgs"][0]["mid"]
    assert campaign_reads.get_counters(campaign_id, r)["unknown"] == 1
    return meta


def test_a_meta_whose_seq_no_campaign_has_leaves_its_neighbours_applied(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """A meta may carry any integer as its seq. One past what Redis takes as a list index
    (2**63) made the worker's read of the campaign's addresses an error: the whole batch,
    accepted and answered 200, was never applied (its delivered and its bounce), and was
    handed out again every minute for ever."""
    r = redis_client
    metas = draft_campaign(r, "c-seq", ["a@example.com", "b@example.com"])
    account = get_settings().account_id
    day = metas[0].split("|")[3]
    huge = f"b@example.com|{account}|c-seq|{day}|0|default|{10**22}|"
    events = [
        generic_event("delivered", "a@example.com", metas[0]),
        generic_event("hard_bounce", "b@example.com", huge, description="mailbox unknown"),
        generic_event("clicked", "a@example.com", metas[0]),
    ]
    assert post(api, paths["gen"], events).json() == SUCCESS
    settle(r, timeout=30)

    counters = campaign_reads.get_counters("c-seq", r)
    assert (counters["delivered"], counters["clicked"], counters["hard_bounced"]) == (1, 1, 0)
    assert suppressions.get("b@example.com", client=r) is not None  # its own address
    names = sorted(e["event"] for e in callback_entries(r))
    assert names == [
        "Channel Unsubscribed",
        "Notification Clicked",
        "Notification Delivered",
        "Notification Failed",
    ]


def test_a_message_a_callback_proves_sent_gets_its_notification_sent(
    api: httpx.Client, redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """The ESP took the message but its answer was lost (read timeout: ``unknown``, no
    stream entry). Its delivery made it ``sent`` (counters, ledger) but the stream never
    said so: a consumer saw ``Notification Delivered`` for a message never ``Sent``."""
    r = redis_client
    meta = lost_send(r, "c-lost")
    assert [e["event"] for e in stream(r)] == []

    # A soft bounce (the provider took it, the mailbox was full), then its delivery; a
    # description that reads like the keys of a stream entry stays the description.
    tricky = 'full,"ts":1,"properties":{"x":"y"}}'
    events = [
        generic_event("soft_bounce", "lost@example.com", meta, description=tricky,
                      timestamp=1_790_000_000),
        generic_event("delivered", "lost@example.com", meta, timestamp=1_790_000_600),
    ]  # fmt: skip
    path = callback_path(r, "esp")
    for _ in range(2):  # and its redelivery
        answer = {"TOTAL_EVENTS": 2, "PROCESSED_EVENTS": 2, "UNPROCESSED_EVENTS": []}
        assert post(api, path, events).json() == answer  # an http provider's shape
        settle(r)

    counters = campaign_reads.get_counters("c-lost", r)
    assert (counters["sent"], counters["unknown"]) == (1, 0)
    assert (counters["soft_bounced"], counters["delivered"]) == (1, 1)
    entries = stream(r)
    names = ["Notification Sent", "Notification Failed", "Notification Delivered"]
    assert [e["event"] for e in entries] == names
    sent, failed = entries[0], entries[1]
    assert sent == {
        "event": "Notification Sent",
        "ts": 1_790_000_000,
        "email": "lost@example.com",
        "campaign_id": "c-lost",
        "meta": meta,
        "provider": "esp",
        "properties": {"CT Source": "Generic email"},
    }
    assert failed["properties"] == {"Error": tricky, "Callback Type": "soft_bounce"}


def test_a_one_click_unsubscribe_proving_a_send_names_the_sending_provider_kind(
    api: httpx.Client, redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """The unsubscribe page proves the message reached its recipient as a callback does:
    its Notification Sent carries the sending provider's ``CT Source``, not the page's."""
    r = redis_client
    meta = lost_send(r, "c-lost-page")
    token = make_token("c-lost-page", 0, "lost@example.com", "default")
    assert api.post(f"/u/{token}").status_code == 200

    counters = campaign_reads.get_counters("c-lost-page", r)
    assert (counters["sent"], counters["unknown"], counters["unsubscribed"]) == (1, 0, 1)
    entries = stream(r)
    assert [e["event"] for e in entries] == ["Notification Sent", "Channel Unsubscribed"]
    assert entries[0]["properties"] == {"CT Source": "Generic email"}
    assert (entries[0]["meta"], entries[0]["provider"]) == (meta, "esp")


def test_two_api_processes_taking_the_same_events_at_once_apply_them_once(
    api: httpx.Client,
    second_api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    worker: WorkerProcess,
) -> None:
    r = redis_client
    emails = [f"p{i}@example.com" for i in range(60)]
    metas = draft_campaign(r, "c-two", emails)
    kinds = ["delivered", "hard_bounce", "soft_bounce", "spam", "unsubscribed", "clicked"]
    events = [
        generic_event(kinds[i % 6], email, meta, description=f"d{i}")
        for i, (email, meta) in enumerate(zip(emails, metas, strict=True))
    ]
    body = json.dumps(events).encode()
    barrier = threading.Barrier(8)
    answers: list[int] = []

    def deliver(client: httpx.Client) -> None:
        barrier.wait()
        answers.append(client.post(paths["gen"], content=body).status_code)

    threads = [threading.Thread(target=deliver, args=(c,)) for c in [api, second_api] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    settle(r)

    counters = campaign_reads.get_counters("c-two", r)
    for name in ("delivered", "hard_bounced", "soft_bounced", "spam", "unsubscribed", "clicked"):
        assert counters[name] == 10, name
    names = Counter(e["event"] for e in callback_entries(r))
    assert names == {
        "Notification Delivered": 10,
        "Notification Failed": 20,  # hard and soft bounces
        "Channel Unsubscribed": 30,  # hard bounces, spam, unsubscribes
        "Notification Clicked": 10,
    }
    assert r.hlen(store.SUPPRESSIONS_HASH) == 30
