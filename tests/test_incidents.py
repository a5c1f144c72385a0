"""What a person must act on reaches /metrics (over HTTP) and the log: campaigns paused
automatically, by kind; stalled campaigns restarted; workers that stopped consuming;
Redis's memory and eviction policy; the suppression list; callback batches waiting."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from dispatch import housekeeping, reputation, store, worker_health
from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.helpers import (
    create_held,
    http_provider,
    recipients,
    run_batches,
    run_inline,
    smtp_provider,
)
from tests.smtp_server import SmtpTestServer
from tests.test_metrics import _metric


def _scrape(api_server: ApiServer) -> str:
    with api_server.client() as http:
        return str(http.get("/metrics").text)


def _pauses(api_server: ApiServer) -> dict[str, float]:
    text = _scrape(api_server)
    kinds = ("authentication", "configuration", "quota", "private_endpoint", "reputation")
    kinds += ("provider_deleted", "failures")
    return {kind: _metric(text, "dispatch_campaign_pauses_total", kind=kind) for kind in kinds}


def _body(provider: str, n: int = 3) -> dict[str, object]:
    return {"provider": provider, "subject": "s", "html": "h", "recipients": recipients(n)}


def test_each_automatic_pause_is_counted_by_kind_and_logged(
    api_server: ApiServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dispatch.incidents")
    with SmtpTestServer(credentials=("u", "right")) as auth, SmtpTestServer() as plain:
        smtp_provider(redis_client, auth.port, "badauth", username="u", password="wrong")
        smtp_provider(redis_client, plain.port, "nostarttls", security="starttls")
        smtp_provider(redis_client, plain.port, "quota", daily_quota=1)
        paused = {}
        for nickname in ("badauth", "nostarttls", "quota"):
            campaign_id, _ = run_inline(redis_client, _body(nickname))
            paused[nickname] = campaign_id
    # An http endpoint that resolves to a loopback address, refused at send time.
    http_provider(redis_client, "http://127.0.0.1:9")
    campaign_id, _ = run_inline(redis_client, _body("esp"), Settings(allow_private_endpoints=False))
    paused["esp"] = campaign_id
    for campaign_id in paused.values():
        status = redis_client.hget(store.campaign_key(campaign_id), "status")
        assert status == "paused", campaign_id
    assert _pauses(api_server) == {
        "authentication": 1,
        "configuration": 1,
        "quota": 1,
        "private_endpoint": 1,
        "reputation": 0,
        "provider_deleted": 0,
        "failures": 0,
    }
    logged = {r.campaign_id: r for r in caplog.records if hasattr(r, "campaign_id")}  # type: ignore[attr-defined]
    assert {logged[paused[n]].pause for n in paused} == {  # type: ignore[attr-defined]
        "authentication",
        "configuration",
        "quota",
        "private_endpoint",
    }
    assert "535" in logged[paused["badauth"]].getMessage()


def test_a_deleted_provider_pauses_its_campaign_once(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Every batch run of the campaign finds its provider gone: one pause, counted once."""
    from dispatch.provider_store import delete_provider

    smtp_provider(redis_client, 9, "gone")
    campaign_id, batches = create_held(redis_client, _body("gone"))
    delete_provider("gone", redis_client)
    run_batches(batches * 2, rounds=1)  # the batch run twice (a redelivery)
    fields = redis_client.hmget(store.campaign_key(campaign_id), ["status", "reason"])
    assert fields == ["paused", "provider 'gone' is gone"]
    assert _pauses(api_server)["provider_deleted"] == 1


def test_reputation_pauses_and_stalled_restarts_and_sweeps(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    key = store.campaign_key("guarded")
    redis_client.hset(key, mapping={"status": "running", "provider": "p"})
    redis_client.hset(store.counters_key("guarded"), mapping={"sent": 1000, "hard_bounced": 200})
    assert reputation.check(redis_client, ["guarded"]) == ["guarded"]
    assert _pauses(api_server)["reputation"] == 1
    # A running campaign quiet for long, with no worker on it: restarted by the sweep.
    smtp_provider(redis_client, 9, "nowhere")
    campaign_id, _ = create_held(redis_client, _body("nowhere", 2))
    redis_client.hset(store.campaign_key(campaign_id), "status", "running")
    enqueued: list[tuple[str, int]] = []
    later = time.time() + 3 * 3600
    done = housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)), now=later)
    assert done["restarted"] == [campaign_id]
    text = _scrape(api_server)
    assert _metric_plain(text, "dispatch_campaigns_restarted_total") == 1
    assert _metric_plain(text, "dispatch_housekeeping_last_sweep_timestamp_seconds") == later
    assert _metric(text, "dispatch_campaigns", status="running") == 1
    assert _metric(text, "dispatch_campaigns", status="paused") == 0  # not in the kept index


def _metric_plain(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_campaigns_by_status_read_from_the_active_index(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        run_inline(redis_client, _body("local"))
        run_inline(redis_client, _body("local"))
        smtp_provider(redis_client, smtp.port, "quota", daily_quota=1)
        run_inline(redis_client, _body("quota"))  # one sent, then paused
    create_held(redis_client, {**_body("local"), "draft": True})
    text = _scrape(api_server)
    assert _metric(text, "dispatch_campaigns", status="paused") == 1
    assert _metric(text, "dispatch_campaigns", status="running") == 0
    assert _metric(text, "dispatch_campaigns", status="scheduled") == 0
    assert 'dispatch_campaigns{status="draft"}' not in text
    # Housekeeping takes the two completed ones off the index; the paused one stays.
    assert len(redis_client.zrange(store.ACTIVE_ZSET, 0, -1)) == 3
    housekeeping.sweep(redis_client, lambda c, b: None)
    assert len(redis_client.zrange(store.ACTIVE_ZSET, 0, -1)) == 1


def test_workers_that_stop_taking_their_canary(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = Settings().worker_canary_seconds
    worker_health.note(redis_client, "w1@h", interval)
    worker_health.note(redis_client, "w2@h", interval)
    stale = time.time() - interval * (worker_health.STALE_INTERVALS + 1)
    redis_client.zadd(store.WORKERS_ZSET, {"w2@h": stale})
    text = _scrape(api_server)
    assert _metric_plain(text, "dispatch_workers_consuming") == 1
    assert _metric_plain(text, "dispatch_workers_not_consuming") == 1
    assert _metric(text, "dispatch_worker_last_canary_timestamp_seconds", worker="w2@h") == stale
    worker_health.forget(redis_client, "w2@h")  # stopped cleanly: not a stale worker
    assert _metric_plain(_scrape(api_server), "dispatch_workers_not_consuming") == 0


def test_redis_memory_policy_suppressions_and_the_events_stream(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    redis_client.hset(store.SUPPRESSIONS_HASH, mapping={"a@x.example": "{}", "b@x.example": "{}"})
    redis_client.xadd(store.EVENTS_STREAM, {"json": "{}"})
    redis_client.xgroup_create(store.EVENTS_STREAM, "crm", id="0")
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        text = _scrape(api_server)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    assert _metric_plain(text, "dispatch_redis_evicting_policy") == 1
    assert _metric_plain(text, "dispatch_redis_used_memory_bytes") > 0
    assert _metric_plain(text, "dispatch_suppressions") == 2
    assert _metric_plain(text, "dispatch_events_stream_length") == 1
    assert _metric(text, "dispatch_events_consumer_lag", group="crm") == 1
    assert _metric_plain(_scrape(api_server), "dispatch_redis_evicting_policy") == 0


def test_refused_and_partly_refused_callbacks_are_logged_with_the_reason(
    api_server: ApiServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider only sees the answer, the access log only the status: the API's log
    says which provider's callbacks are refused, and why."""
    from tests.callback_support import generic_event, nested, post, save_providers

    caplog.set_level(logging.INFO, logger="dispatch.callbacks")
    paths = save_providers(redis_client)
    meta = "a@example.com|1|c-logs|20241104|0|default|0|"
    with api_server.client() as http:
        wrong = paths["gen"].rsplit("/", 1)[0] + "/not-the-token"
        assert (
            post(http, wrong, nested(generic_event("delivered", "a@example.com", meta))).status_code
            == 400
        )
        partly = nested(generic_event("delivered", "a@example.com", meta), {"type": "spam"})
        assert post(http, paths["gen"], partly).json()["status"] == "partial_success"
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatch.callbacks"]
    assert any("callback for gen not accepted: invalid callback URL" in line for line in lines)
    assert any("callback for gen: 1 of 2 events refused (event 1:" in line for line in lines)
