"""Callbacks as providers use them (review G2): 503s that say when to come back, recovery
that leaves waiting tasks alone.

Runs its own Redis and, where it needs one, the API as a ``dispatch api`` process, so that
stopping Redis or filling the ``events`` queue touches no other test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch import callbacks, effects, store
from dispatch.api.errors import RETRY_AFTER_SECONDS
from dispatch.redis_server import RedisServer
from providers.callbacks import EventType
from tests.callback_support import (
    api_process,
    draft_campaign,
    generic_event,
    nested,
    post,
    sample,
    save_providers,
)

pytestmark = pytest.mark.integration

REFUSED = {"status": "error", "message": "Server error", "error_code": 503}


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
                )
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
