"""Callbacks survive Redis going away: 5xx while it is down, nothing answered 200 is lost.

Runs its own Redis (append-only file), the API as a ``dispatch api`` process and, later,
a worker, so that stopping Redis touches no other test.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch import campaign_reads, store
from dispatch.redis_server import RedisServer
from tests.callback_support import (
    api_process,
    callback_entries,
    draft_campaign,
    generic_event,
    inbox_empty,
    nested,
    post,
    save_providers,
)
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(own_redis: RedisServer) -> Iterator[httpx.Client]:
    with api_process(own_redis.url) as client:
        yield client


def test_redis_down_answers_5xx_and_loses_nothing_it_accepted(
    own_redis: RedisServer, api: httpx.Client
) -> None:
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    paths = save_providers(r)
    emails = [f"d{i}@example.com" for i in range(6)]
    metas = draft_campaign(r, "c-durable", emails)
    first = nested(*(generic_event("delivered", e, m) for e, m in zip(emails[:3], metas[:3],
                                                                      strict=True)))  # fmt: skip
    second = nested(*(generic_event("hard_bounce", e, m) for e, m in zip(emails[3:], metas[3:],
                                                                         strict=True)))  # fmt: skip

    # No worker runs yet: what was answered 200 lives only in Redis.
    accepted = post(api, paths["gen"], first)
    assert accepted.status_code == 200
    own_redis.halt(kill=True)  # a crash, right after the answer

    refused = post(api, paths["gen"], second)
    assert refused.status_code == 503
    assert refused.json() == {"status": "error", "message": "Server error", "error_code": 503}

    own_redis.restart()  # same port, same folder: the append-only file is replayed
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    assert r.hlen(store.CALLBACK_INBOX_HASH) == 1
    worker = WorkerProcess(own_redis.url, concurrency=1).start()
    try:
        wait_for(lambda: inbox_empty(r), timeout=60)
        counters = campaign_reads.get_counters("c-durable", r)
        assert (counters["delivered"], counters["hard_bounced"]) == (3, 0)

        # The provider retries what was refused; the API reconnects to Redis on its own.
        def retried() -> bool:
            return post(api, paths["gen"], second).status_code == 200

        wait_for(retried, timeout=30, interval=0.5)
        wait_for(lambda: inbox_empty(r), timeout=60)
    finally:
        worker.stop()
    counters = campaign_reads.get_counters("c-durable", r)
    assert (counters["delivered"], counters["hard_bounced"]) == (3, 3)
    unsubscribed = [e["email"] for e in callback_entries(r) if e["event"] == "Channel Unsubscribed"]
    assert sorted(unsubscribed) == emails[3:]
