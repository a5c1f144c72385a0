"""When Prometheus cannot scrape any API (the API is down, or its scrape times out)
every series of dispatch is gone: an alert says so, and beat is not blamed for it."""

from __future__ import annotations

import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from dispatch import housekeeping
from dispatch.metrics import RedisStateCollector
from tests.test_alert_rules import RULES
from tests.test_oncall_promql import Scrapes


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_no_scrape_fires_its_own_alert_not_beats(redis_client: redis.Redis) -> None:
    housekeeping.sweep(redis_client, lambda c, b: None)  # beat is fine
    registry = CollectorRegistry()
    registry.register(RedisStateCollector())
    scrapes = Scrapes()
    scrapes.add(generate_latest(registry).decode(), at=1000.0)
    assert "DispatchMetricsMissing" not in scrapes.firing(_rules())
    scrapes.add("", at=1060.0)  # the scrape failed: no sample at all
    firing = scrapes.firing(_rules())
    assert "DispatchMetricsMissing" in firing
    assert "DispatchHousekeepingNotRunning" not in firing  # beat is not the one to blame


def test_beat_not_sweeping_still_fires_while_the_api_is_scraped(
    redis_client: redis.Redis,
) -> None:
    registry = CollectorRegistry()
    registry.register(RedisStateCollector())
    scrapes = Scrapes()
    scrapes.add(generate_latest(registry).decode(), at=1000.0)  # no sweep ever
    firing = scrapes.firing(_rules())
    assert "DispatchHousekeepingNotRunning" in firing
    assert "DispatchMetricsMissing" not in firing
    housekeeping.sweep(redis_client, lambda c, b: None, now=500.0)  # a sweep long ago
    scrapes.add(generate_latest(registry).decode(), at=1060.0)
    assert "DispatchHousekeepingNotRunning" in scrapes.firing(_rules())
