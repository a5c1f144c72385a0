"""On call: each incident staged for real (Redis, the real sender, a real HTTP provider,
the API over HTTP) and judged by what an operator reads: /metrics as Prometheus would
evaluate deploy/prometheus-alerts.yml over it (tests.test_oncall_promql), and the log."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from dispatch import store
from dispatch.metrics import RedisStateCollector
from dispatch.redis_server import RedisServer
from dispatch.settings import Settings, get_settings
from tests.api_server import ApiServer
from tests.callback_support import post, save_providers
from tests.helpers import http_provider, recipients, run_inline
from tests.http_sink import HttpSink, Reply
from tests.test_alert_rules import RULES
from tests.test_oncall_promql import Scrapes, Vector

FAST = Settings(retry_base_seconds=0.01, retry_max_seconds=0.02, max_attempts=2)


def _rules() -> list[dict[str, str]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def _scrape(api_server: ApiServer) -> str:
    with api_server.client() as http:
        return str(http.get("/metrics").text)


class Watch:
    """Scrapes a minute apart, as Prometheus would take them, and the alerts they fire."""

    def __init__(self, api_server: ApiServer) -> None:
        self.api_server = api_server
        self.scrapes = Scrapes()
        self.at = 1_000_000.0

    def scrape(self) -> None:
        self.at += 60
        self.scrapes.add(_scrape(self.api_server), at=self.at)

    def firing(self) -> dict[str, Vector]:
        found = self.scrapes.firing(_rules())
        for rule in _rules():  # what the summary names is on every result
            for label in re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]):
                for labels in found.get(rule["alert"], {}):
                    assert label in dict(labels), (rule["alert"], label)
        return found


def _labels(result: Vector, name: str) -> set[str]:
    return {dict(labels)[name] for labels in result}


def test_a_provider_that_starts_failing_everything_mid_campaign_fires_an_alert_naming_it(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A campaign that sent does not pause (the failure breaker is for campaigns that
    sent nothing): every message left fails, and the operator must hear of it."""
    watch = Watch(api_server)
    with HttpSink(default=Reply(500, body=b'{"error": "internal"}')) as sink:
        sink.script(*[Reply(200)] * 3)
        http_provider(redis_client, sink.url, batch_size=10)
        watch.scrape()  # before: the provider saved, nothing sent
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(100)}
        campaign_id, _ = run_inline(redis_client, body, FAST)
    counters = redis_client.hgetall(store.counters_key(campaign_id))
    assert (counters["sent"], counters["failed"]) == ("30", "70")
    watch.scrape()
    firing = watch.firing()
    assert _labels(firing["DispatchMessagesFailing"], "provider") == {"esp"}
    assert list(firing["DispatchMessagesFailing"].values()) == [70.0]
    assert "DispatchProviderNotSending" not in firing  # it took 30 within the range


def test_a_provider_that_times_out_shows_unknown_messages_from_the_first_batch(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """No answer within the provider's timeout: the batch's messages end unknown in one
    write. Their series must exist before, or Prometheus sees no increase at all."""
    watch = Watch(api_server)
    with HttpSink(default=Reply(200, delay=1.5)) as sink:
        http_provider(redis_client, sink.url, timeout=0.3)
        watch.scrape()
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(20)}
        run_inline(redis_client, body, FAST)
    watch.scrape()
    firing = watch.firing()
    assert list(firing["DispatchMessagesUnknown"].values()) == [20.0]
    assert _labels(firing["DispatchMessagesUnknown"], "provider") == {"esp"}


def test_a_throttling_provider_fires_not_sending(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """503 to everything: messages wait (for hours, by default) and nothing fails yet;
    the operator sees the provider named."""
    watch = Watch(api_server)
    with HttpSink(default=Reply(503, headers=(("Retry-After", "3600"),))) as sink:
        http_provider(redis_client, sink.url)
        watch.scrape()
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(10)}
        campaign_id, _ = run_inline(redis_client, body, FAST, rounds=1)
    assert redis_client.hget(store.counters_key(campaign_id), "queued") == "10"
    watch.scrape()
    firing = watch.firing()
    assert _labels(firing["DispatchProviderNotSending"], "provider") == {"esp"}
    assert "DispatchMessagesFailing" not in firing


def test_a_used_up_quota_fires_the_pause_alert_with_its_kind(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    watch = Watch(api_server)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, daily_quota=5, batch_size=1)
        watch.scrape()
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(10)}
        campaign_id, _ = run_inline(redis_client, body, FAST)
    reason = redis_client.hget(store.campaign_key(campaign_id), "reason") or ""
    assert "daily quota of 5 messages for provider 'esp' is used up" in reason
    watch.scrape()
    firing = watch.firing()
    assert _labels(firing["DispatchCampaignPausedAutomatically"], "kind") == {"quota"}


def test_refused_callback_signatures_fire_an_alert_and_the_log_names_the_provider(
    api_server: ApiServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """SendGrid's signing key rotated, the old verification key still saved: every
    webhook post is refused (400), and SendGrid gives up on them after its retries."""
    import json
    import time

    from tests.test_callbacks_sendgrid import Key

    caplog.set_level(logging.INFO, logger="dispatch.callbacks")
    saved, rotated = Key(), Key()
    paths = save_providers(
        redis_client, sg={"kind": "sendgrid", "webhook_public_key": saved.public}
    )
    watch = Watch(api_server)
    watch.scrape()
    events = [{"email": "a@example.com", "event": "delivered", "sg_event_id": "e1"}]
    body = json.dumps(events).encode()
    signed = rotated.headers(body, int(time.time()))
    with api_server.client() as http:
        for _ in range(6):
            assert post(http, paths["sg"], body, signed).status_code == 400
    watch.scrape()
    assert "DispatchCallbacksRefused" in watch.firing()
    refused = [r for r in caplog.records if "not accepted" in r.getMessage()]
    assert refused and all(getattr(r, "provider", None) == "sg" for r in refused)


def test_redis_near_maxmemory_says_how_near(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The summary prints the expression's value as a percentage: it must be the ratio,
    not the maxmemory in bytes."""
    watch = Watch(api_server)
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", int(used / 0.9))
    try:
        watch.scrape()
    finally:
        redis_client.config_set("maxmemory", 0)
    (value,) = watch.firing()["DispatchRedisMemoryNearLimit"].values()
    assert 0.85 < value < 1.0


@pytest.fixture
def lost_redis(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """dispatch's clients pointed at a Redis of the test's own (to stop it)."""
    monkeypatch.setenv("DISPATCH_REDIS_URL", own_redis.url)
    get_settings.cache_clear()
    store.reset_clients()
    yield own_redis
    monkeypatch.undo()
    get_settings.cache_clear()
    store.reset_clients()


def test_redis_down_fires_its_own_alert_not_beats(lost_redis: RedisServer) -> None:
    registry = CollectorRegistry()
    registry.register(RedisStateCollector())
    scrapes = Scrapes()
    scrapes.add(generate_latest(registry).decode(), at=1000.0)
    assert not scrapes.firing(_rules()).keys() & {"DispatchRedisDown"}
    lost_redis.stop()
    scrapes.add(generate_latest(registry).decode(), at=1060.0)
    firing = scrapes.firing(_rules())
    assert "DispatchRedisDown" in firing
    assert "DispatchHousekeepingNotRunning" not in firing  # beat is not the one to blame


def test_a_long_batchs_latency_and_throttles_show_while_it_runs(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 1000 at a provider's pace takes minutes: a slow or throttling provider
    must show on /metrics then, not when the batch ends."""
    import threading

    from dispatch import send_stats

    monkeypatch.setattr(send_stats, "FLUSH_SECONDS", 0.2)
    single = {"to": "$$To", "subject": "$$Subject", "html": "$$HTML"}
    single |= {"from": "$$FromName", "addr": "$$FromAddress"}
    seen: list[tuple[int, int]] = []  # (hand-overs counted, messages still queued)
    with HttpSink() as sink:
        http_provider(redis_client, sink.url, batch=False, body=single, rate_per_second=5)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(15)}
        runner = threading.Thread(target=run_inline, args=(redis_client, body, FAST))
        runner.start()
        while runner.is_alive() and not (seen and seen[-1][0]):
            pipe = redis_client.pipeline(transaction=False)
            pipe.hgetall(store.SEND_STATS_HASH)  # "esp|le=<bound>": hand-overs per bucket
            for key in redis_client.scan_iter(match="dispatch:campaign:*:counters"):
                pipe.hget(key, "queued")
            buckets, *queued = pipe.execute()
            counted = sum(int(v) for k, v in buckets.items() if k.startswith("esp|le="))
            seen.append((counted, sum(int(q or 0) for q in queued)))
            runner.join(0.05)
        runner.join()
    assert seen and seen[-1][0] > 0, "no hand-over counted while the batch ran"
    assert seen[-1][1] > 0  # the batch was still sending when they showed


def test_the_batch_done_line_names_the_provider(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """`counts: {"sent": 81, "failed": 219}`: an operator filtering the workers' log by
    provider finds it."""
    from dispatch import tasks
    from tests.helpers import create_held

    caplog.set_level(logging.INFO, logger="dispatch.tasks")
    with HttpSink(default=Reply(400, body=b'{"error": "refused"}')) as sink:
        http_provider(redis_client, sink.url)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(3)}
        campaign_id, batches = create_held(redis_client, body)
        tasks.send_batch(*batches[0])
    (done,) = [r for r in caplog.records if r.getMessage() == "batch done"]
    assert (done.campaign_id, done.provider, done.counts) == (campaign_id, "esp", {"failed": 3})  # type: ignore[attr-defined]


def test_dispatch_messages_into_head_ends_quietly(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """`dispatch messages ID --status failed | head` is how one looks at an incident: the
    reader leaving early is no error (no traceback on the terminal)."""
    import os
    import subprocess
    import sys

    from tests.helpers import create_held, smtp_provider

    smtp_provider(redis_client, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3000)}
    campaign_id, _ = create_held(redis_client, body)
    env = {**os.environ, "DISPATCH_REDIS_URL": redis_server.url}
    cmd = [sys.executable, "-m", "dispatch.cli", "messages", campaign_id]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert campaign_id in proc.stdout.readline().decode()
        proc.stdout.close()  # as head does after its lines
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert "Traceback" not in err
    assert code == 141
