"""Review AF25: one value /metrics cannot read (a count that is not a number, a key of
another type: written by hand or by a bug) must cost only its own series, logged once
per scrape by key and field, not the whole scrape (a 500, or Redis reported down: every
other metric and alert dark at once)."""

from __future__ import annotations

import logging

import pytest
import redis

from dispatch import incidents, store
from tests.api_server import ApiServer
from tests.helpers import campaign_body, create_held, smtp_provider
from tests.test_review_q14_fault_metrics import _values


def _scrape(api_server: ApiServer) -> str:
    with api_server.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text[:300]
    text = str(response.text)
    assert "dispatch_redis_up 1.0" in text.splitlines()
    return text


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dispatch.metrics"]


@pytest.mark.parametrize(
    ("key", "field", "family", "label", "gone", "kept"),
    [
        (
            store.MESSAGE_STATS_HASH,
            "local|sent",
            "dispatch_messages_total",
            "outcome",
            "sent",
            "failed",
        ),
        (store.SEND_STATS_HASH, "local|throttles", "dispatch_throttles_total", None, None, None),
        (
            store.INCIDENTS_HASH,
            "pause|quota",
            "dispatch_campaign_pauses_total",
            "kind",
            "quota",
            "authentication",
        ),
        (
            store.INCIDENTS_HASH,
            "refused|serializer",
            "dispatch_task_messages_refused_total",
            "reason",
            "serializer",
            "too_large",
        ),
    ],
)
def test_a_count_that_is_not_a_number_leaves_out_only_its_series(
    api_server: ApiServer,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    key: str,
    field: str,
    family: str,
    label: str | None,
    gone: str | None,
    kept: str | None,
) -> None:
    """The old code's ``float()`` raised in the middle of the scrape: a 500, no metric."""
    smtp_provider(redis_client, 2525, nickname="local")
    create_held(redis_client, campaign_body("af25-running", 1))
    redis_client.hset(key, field, "lots")
    caplog.set_level(logging.ERROR, logger="dispatch.metrics")
    text = _scrape(api_server)
    assert _values(text, "dispatch_campaigns", "status")["running"] == 1.0
    assert "dispatch_queue_depth" in text
    if label is None:  # a provider's series: that provider's is left out
        assert "local" not in _values(text, family, "provider")
        assert _values(text, "dispatch_batches_deferred_total", "provider")["local"] == 0.0
    else:
        series = _values(text, family, label)
        assert gone not in series
        assert series[kept] == 0.0
    if key == store.MESSAGE_STATS_HASH:  # the provider's other series are there
        assert _values(text, "dispatch_throttles_total", "provider")["local"] == 0.0
    logged = _logged(caplog)
    assert len(logged) == 1, logged
    assert key in logged[0] and field in logged[0]


def test_a_histogram_bucket_not_a_number_leaves_out_that_providers_histogram(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    smtp_provider(redis_client, 2525, nickname="local")
    smtp_provider(redis_client, 2526, nickname="other")
    redis_client.hset(store.SEND_STATS_HASH, "local|le=0.5", "x")
    redis_client.hset(store.SEND_STATS_HASH, "other|le=0.5", 3)
    redis_client.hset(store.SEND_STATS_HASH, "other|sum", 1.5)
    text = _scrape(api_server)
    counts = _values(text, "dispatch_send_seconds_count", "provider")
    assert counts == {"other": 3.0}
    assert _values(text, "dispatch_throttles_total", "provider") == {"local": 0.0, "other": 0.0}


@pytest.mark.parametrize("field", [incidents.RESTARTED, incidents.SWEPT_AT])
def test_an_incident_figure_not_a_number_leaves_out_its_family(
    api_server: ApiServer, redis_client: redis.Redis, field: str
) -> None:
    redis_client.hset(store.INCIDENTS_HASH, field, "soon")
    redis_client.hset(store.INCIDENTS_HASH, "pause|quota", 2)
    text = _scrape(api_server)
    assert _values(text, "dispatch_campaign_pauses_total", "kind")["quota"] == 2.0
    names = {line.split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert "dispatch_campaigns_restarted_total" in names or field == incidents.RESTARTED
    assert "dispatch_campaigns_restarted_total" not in names or field != incidents.RESTARTED
    assert "dispatch_housekeeping_last_sweep_timestamp_seconds" not in names


@pytest.mark.parametrize(
    ("key", "family"),
    [
        (store.PROVIDERS_SET, None),
        (store.MESSAGE_STATS_HASH, "dispatch_messages_total"),
        (store.SEND_STATS_HASH, "dispatch_throttles_total"),
        (store.INCIDENTS_HASH, "dispatch_campaign_pauses_total"),
        (store.WORKERS_ZSET, "dispatch_workers_consuming"),
        (store.SUPPRESSIONS_HASH, "dispatch_suppressions"),
        (store.CALLBACK_PENDING_ZSET, "dispatch_callback_batches_pending"),
        (store.CALLBACK_DEAD_HASH, "dispatch_callback_batches_dead"),
        (store.EVENTS_STREAM, "dispatch_events_stream_length"),
        (store.EVENTS_MISSED_HASH, "dispatch_events_consumer_missed_total"),
        (store.queue_keys(store.CELERY_QUEUES[0])[0], None),
        (store.SCHEDULED_ZSET, None),
        (store.ACTIVE_ZSET, None),
    ],
)
def test_a_key_of_another_type_leaves_out_only_what_is_read_from_it(
    api_server: ApiServer,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    key: str,
    family: str | None,
) -> None:
    """The old code reported Redis down (``dispatch_redis_up 0``, no other family): a
    false DispatchRedisDown, every other alert silent."""
    if key == store.EVENTS_MISSED_HASH:  # read only for a stream with groups
        redis_client.xgroup_create(store.EVENTS_STREAM, "af25", mkstream=True)
    redis_client.delete(key)
    redis_client.set(key, "by hand")
    caplog.set_level(logging.ERROR, logger="dispatch.metrics")
    try:
        text = _scrape(api_server)
    finally:
        # (a Celery queue's key is no key of ours that the next test's fixture empties:
        # left a string, it stopped the session's worker for the rest of the run, its
        # consumer restarting on WRONGTYPE every second)
        redis_client.delete(key)
    assert "dispatch_redis_used_memory_bytes" in text
    names = {line.split(" ")[0].split("{")[0] for line in text.splitlines() if line[:1] != "#"}
    if family is not None:
        assert family not in names
    if key == store.queue_keys(store.CELERY_QUEUES[0])[0]:
        queues = _values(text, "dispatch_queue_depth", "queue")
        assert store.CELERY_QUEUES[0] not in queues
        assert set(queues) == set(store.CELERY_QUEUES[1:])
    elif key == store.SCHEDULED_ZSET:
        assert set(_values(text, "dispatch_campaigns", "status")) == {"running", "paused"}
    elif key == store.ACTIVE_ZSET:
        assert set(_values(text, "dispatch_campaigns", "status")) == {"scheduled"}
    else:
        assert "dispatch_queue_depth" in names
    logged = _logged(caplog)
    assert len(logged) == 1, logged
    assert key in logged[0]
