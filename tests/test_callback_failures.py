"""Callbacks when Redis cannot take them: out of memory, read-only; what /metrics says.

Runs its own Redis and the API as a ``dispatch api`` process, so that starving Redis
touches no other test. Every provider kind is answered 503 in the seeds' error shape,
nothing is stored or counted, and the provider's retry once Redis accepts writes again is
applied once.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, store
from dispatch.redis_server import RedisServer
from tests.callback_support import (
    DATA,
    REFUSED,
    SAMPLE_CERT_NAME,
    api_process,
    callback_entries,
    draft_campaign,
    generic_event,
    inbox_empty,
    metric,
    nested,
    post,
    sample,
    save_providers,
)
from tests.smtp_server import free_port
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

EVENTS = "dispatch_callback_events_total"
REQUESTS = "dispatch_callback_requests_total"


@pytest.fixture
def api(own_redis: RedisServer, tmp_path: Path) -> Iterator[httpx.Client]:
    """The API, with the SNS samples' signing certificate in its certificate folder."""
    shutil.copy(DATA / "sns-test-signing-cert.pem", tmp_path / SAMPLE_CERT_NAME)
    with api_process(own_redis.url, DISPATCH_SNS_CERT_DIR=str(tmp_path)) as client:
        yield client


def out_of_memory(r: redis.Redis) -> Callable[[], None]:
    """Redis refuses every write (``noeviction`` past ``maxmemory``); returns the undo."""
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    return lambda: r.config_set("maxmemory", 0)


def read_only(r: redis.Redis) -> Callable[[], None]:
    """Redis becomes a replica (as after a failover) of a master that never answers."""
    r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    return lambda: r.execute_command("REPLICAOF", "NO", "ONE")


def writes_refused(r: redis.Redis) -> bool:
    try:
        r.set("probe", "1")
    except redis.ResponseError:
        return True
    return False


def provider_posts(r: redis.Redis) -> dict[str, tuple[str, Any, dict[str, str]]]:
    """What each kind's provider posts: nickname -> (path, body, headers)."""
    paths = save_providers(r)
    emails = [f"hb{i}@example.com" for i in range(3)]
    metas = draft_campaign(r, "c-starved", emails)
    bounces = nested(
        *(generic_event("hard_bounce", e, m) for e, m in zip(emails, metas, strict=True))
    )
    envelope = sample("ses-sns-bounce-permanent.json")
    return {
        "gen": (paths["gen"], bounces, {}),
        "web": (paths["web"], bounces, {}),
        "ses": (paths["ses"], envelope, {"Content-Type": "text/plain; charset=UTF-8"}),
        "sg": (paths["sg"], sample("sendgrid-events.json"), {}),
    }


@pytest.mark.parametrize("starve", [out_of_memory, read_only], ids=["out-of-memory", "read-only"])
def test_redis_refusing_writes_answers_503_and_the_retry_is_applied_once(
    own_redis: RedisServer, api: httpx.Client, starve: Callable[[redis.Redis], Callable[[], None]]
) -> None:
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    posts = provider_posts(r)
    refused_before = metric(api, REQUESTS, status="503")

    undo = starve(r)
    try:
        wait_for(lambda: writes_refused(r), timeout=10)
        for path, body, headers in posts.values():
            answer = post(api, path, body, headers)
            # The error shape for every kind: the http kind's counts would claim a result.
            assert (answer.status_code, answer.json()) == (503, REFUSED)
    finally:
        undo()
    wait_for(lambda: not writes_refused(r), timeout=10)

    assert inbox_empty(r)  # nothing half-stored
    assert metric(api, REQUESTS, status="503") == (refused_before or 0) + len(posts)
    # Events of a refused request are not counted: the provider sends them again.
    assert metric(api, EVENTS, provider="gen", type="hard_bounce") is None

    worker = WorkerProcess(own_redis.url, concurrency=1).start()
    try:
        for _ in range(2):  # the provider's retry, and a second one (its answer was lost)
            for path, body, headers in posts.values():
                assert post(api, path, body, headers).status_code == 200
        wait_for(lambda: inbox_empty(r), timeout=60)
    finally:
        worker.stop()

    assert metric(api, EVENTS, provider="gen", type="hard_bounce") == 6  # both posts taken in
    assert campaign_reads.get_counters("c-starved", r)["hard_bounced"] == 3
    # Each event applied once: the generic bounces (3 by each of two providers), the SES
    # sample's hard bounce, the SendGrid sample's bounce, dropped, spam and 2 unsubscribes.
    unsubscribed = Counter(
        e["provider"] for e in callback_entries(r) if e["event"] == "Channel Unsubscribed"
    )
    assert unsubscribed == Counter({"gen": 3, "web": 3, "ses": 1, "sg": 5})
    assert r.hlen(store.SUPPRESSIONS_HASH) == 7  # hb0-2, user1, user2, user3, user5


def test_metrics_show_each_refusal_from_its_first(
    own_redis: RedisServer, api: httpx.Client
) -> None:
    """Every status a callback can get, and a provider's refused events, are exposed at 0
    before the first one, so that an alert's ``increase()`` sees the first."""
    for status in ("200", "400", "500", "502", "503"):
        assert metric(api, REQUESTS, status=status) == 0
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    paths = save_providers(r)
    metas = draft_campaign(r, "c-metrics", ["m@example.com"])
    answer = post(api, paths["gen"], nested(generic_event("delivered", "m@example.com", metas[0])))

    assert answer.status_code == 200
    assert metric(api, EVENTS, provider="gen", type="invalid") == 0
    assert metric(api, EVENTS, provider="gen", type="delivered") == 1
