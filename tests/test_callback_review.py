"""Callbacks as providers use them (review G2): 503s that say when to come back, recovery
that leaves waiting tasks alone, an ESP that reports a delivery before it answers the send.

Tests that stop Redis or fill the ``events`` queue run their own Redis (and the API as a
``dispatch api`` process), so that they touch no other test.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis

from dispatch import callbacks, campaign_reads, campaigns, effects, store
from dispatch.api.errors import RETRY_AFTER_SECONDS
from dispatch.models import CampaignRequest
from dispatch.provider_store import save_provider
from dispatch.redis_server import RedisServer
from providers.callbacks import EventType
from tests.callback_support import (
    HTTP_BODY,
    REFUSED,
    api_process,
    draft_campaign,
    generic_event,
    inbox_empty,
    nested,
    post,
    sample,
    save_providers,
)
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def api(own_redis: RedisServer) -> Iterator[httpx.Client]:
    with api_process(own_redis.url) as client:
        yield client


def test_a_503_for_redis_down_carries_retry_after_for_every_kind(
    own_redis: RedisServer, own_client: redis.Redis, api: httpx.Client
) -> None:
    paths = save_providers(own_client)
    metas = draft_campaign(own_client, "c-retry", ["a@example.com"])
    bounce = nested(generic_event("hard_bounce", "a@example.com", metas[0]))
    posts = {
        "gen": (bounce, {}),
        "web": (bounce, {}),
        "ses": (sample("ses-sns-bounce-permanent.json"), {"Content-Type": "text/plain"}),
        "sg": (sample("sendgrid-events.json"), {}),
    }
    own_redis.halt()
    try:
        for nickname, (body, headers) in posts.items():
            answer = post(api, paths[nickname], body, headers)
            assert (answer.status_code, answer.json()) == (503, REFUSED), nickname
            assert answer.headers.get("Retry-After") == str(RETRY_AFTER_SECONDS), nickname
        probe = api.get(paths["gen"])
        assert probe.status_code == 503
        assert probe.headers.get("Retry-After") == str(RETRY_AFTER_SECONDS)
    finally:
        own_redis.restart()

    # Answers that are not 503 say nothing of coming back.
    answer = post(api, paths["gen"], bounce)
    assert answer.status_code == 200 and "Retry-After" not in answer.headers
    refused = post(api, paths["gen"], {"version": "v2"})
    assert refused.status_code == 400 and "Retry-After" not in refused.headers


def _store(r: redis.Redis, n: int) -> list[str]:
    """``n`` callback batches stored as the gateway stores them (before it enqueues)."""
    return [
        callbacks.store_batch(
            "gen",
            "smtp",
            [
                effects.InboxEvent(
                    type=EventType.DELIVERED,
                    provider_type="delivered",
                    email=f"b{i}@example.com",
                    dedupe=f"generic:sha256:{i}",
                ).model_dump(mode="json")
            ],
            r,
        )
        for i in range(n)
    ]


def _publish(r: redis.Redis, batch_id: str) -> None:
    """A ``dispatch.process_callback`` task waiting in the ``events`` queue (its message
    as the broker holds it; only the count of waiting tasks matters here)."""
    r.lpush(
        store.EVENTS_QUEUE, json.dumps({"task": "dispatch.process_callback", "args": [batch_id]})
    )


def test_recovery_leaves_alone_batches_whose_task_waits_in_the_queue(
    own_client: redis.Redis,
) -> None:
    """A backlog longer than the grace (no worker for a while, or more callbacks than the
    workers keep up with): every waiting batch was enqueued again each grace period."""
    stored = _store(own_client, 5)
    for batch_id in stored:
        _publish(own_client, batch_id)

    assert effects.lost_batches(0, own_client) == []

    # Two tasks are taken by a worker that dies: their batches are the two oldest.
    own_client.rpop(store.EVENTS_QUEUE, 2)
    again = effects.lost_batches(0, own_client)
    assert again == stored[:2]
    for batch_id in again:  # as dispatch.recover_callbacks does
        _publish(own_client, batch_id)
    assert effects.lost_batches(0, own_client) == []  # waiting in the queue again

    # A batch stored while no task could be enqueued (the broker refused the publish) is
    # found once the queue holds nothing older.
    lost = _store(own_client, 1)[0]
    own_client.delete(store.EVENTS_QUEUE)
    assert sorted(effects.lost_batches(0, own_client)) == sorted([*stored, lost])


class _EarlyReportingEsp(ThreadingHTTPServer):
    """An HTTP ESP that reports each message delivered (its callback applied at once, as
    a free worker would) and answers the send only after the sender stopped waiting."""

    def __init__(self, r: redis.Redis, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _EarlyHandler)
        self.r, self.token = r, token


class _EarlyHandler(BaseHTTPRequestHandler):
    server: _EarlyReportingEsp

    def do_POST(self) -> None:
        sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        event = {"version": "v2", "type": "delivered", "email": sent["to"], "meta": sent["mid"]}
        r = self.server.r
        answer = callbacks.ingest(
            "gen", self.server.token, json.dumps(event).encode(), {}, client=r,
            enqueue=lambda batch_id: effects.apply_batch(batch_id, r),
        )  # fmt: skip
        assert answer.status == 200
        time.sleep(2)  # the sender's timeout is 0.5 s: its answer is lost
        with contextlib.suppress(OSError):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_delivery_reported_before_the_send_lost_its_answer_makes_it_sent(
    redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """The ESP's callback came while our request still waited for its answer; the answer
    was then lost (read timeout: ``unknown``). The delivery was counted and the message
    stayed ``unknown``: ``delivered`` passed ``sent``."""
    r = redis_client
    token = save_providers(r)["gen"].rsplit("/", 1)[1]
    esp = _EarlyReportingEsp(r, token)
    threading.Thread(target=esp.serve_forever, daemon=True).start()
    try:
        save_provider(
            {"nickname": "early", "kind": "http", "method": "POST", "timeout": 0.5,
             "endpoint": f"http://127.0.0.1:{esp.server_address[1]}/send", "body": HTTP_BODY,
             "from_name": "Acme", "from_address": "deals@acme.example"},
            r,
        )  # fmt: skip
        request = CampaignRequest.model_validate(
            {"id": "c-early", "provider": "early", "subject": "s", "html": "h",
             "recipients": [{"email": "early@example.com"}]}
        )  # fmt: skip
        campaigns.create_campaign(request, client=r)
        wait_for(lambda: campaign_reads.get_status("c-early", r).value == "completed", timeout=60)
    finally:
        esp.shutdown()
        esp.server_close()
    counters = campaign_reads.get_counters("c-early", r)
    assert (counters["unknown"], counters["delivered"]) == (1, 0)  # the event waits

    for batch_id in effects.lost_batches(0, r):  # dispatch.recover_callbacks, later
        effects.apply_batch(batch_id, r)

    counters = campaign_reads.get_counters("c-early", r)
    assert (counters["sent"], counters["unknown"], counters["delivered"]) == (1, 0, 1)
    assert inbox_empty(r)
