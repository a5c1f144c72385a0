"""A batch run whose lease lapsed under it (its process stalled past the lease's TTL)
hands the batch on at once instead of failing and leaving it to housekeeping."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, store, tasks
from tests.helpers import create_held, http_provider, recipients
from tests.http_sink import HttpSink, RecordedRequest, Reply


class Lapse:
    """An HttpSink's answer: while a request is on the wire, the lease ``key`` (once set)
    lapses, as when its run's process froze for longer than the lease's TTL."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.key = ""

    def __call__(self, request: RecordedRequest) -> Reply | None:
        if self.key and self.r.delete(self.key):
            self.r.zrem(store.LEASES_ZSET, self.key)
        return None


def test_a_run_that_lost_its_lease_enqueues_its_batch_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(
        tasks.send_batch, "apply_async", lambda *args, **kwargs: handed.append((args, kwargs))
    )
    lapse = Lapse(redis_client)
    with HttpSink(answer=lapse) as sink:
        http_provider(redis_client, sink.url, batch_size=1, max_connections=1)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(5)}
        campaign_id, _ = create_held(redis_client, body)
        lapse.key = store.batch_lease_key(campaign_id, 0)

        # Before, the task failed with LeaseLostError: nothing enqueued the batch again
        # and its messages waited for beat's housekeeping (2 lease TTLs, or 20 minutes
        # while other campaigns' batches ran).
        assert tasks.send_batch(campaign_id, 0) == {"lease_lost": True}
        ((args, options),) = handed
        assert args == ((campaign_id, 0), {"busy_polls": 1})
        assert 0 < options["countdown"] <= 61
        assert len(sink.requests) == 1

        lapse.key = ""  # the next run keeps its lease
        tasks.send_batch(*args[0], **args[1])  # the broker hands it out again

        received = Counter(m["to"] for q in sink.requests for m in q.json()["msgs"])
    assert len(received) == 5 and max(received.values()) == 1  # each address once
    summary = campaign_reads.campaign_summary(campaign_id, redis_client)
    # The first run's request was on the wire when its lease lapsed: its outcome is
    # unknown (never sent again); the next run sent the rest.
    assert (summary["status"], summary["sent"], summary["unknown"]) == ("completed", 4, 1)
