"""Every API instance reports the whole service's figures from Redis: the alert rules
take them with max over instances, not sum, so that scraping three API instances does not
make 15 failures read as 45 (a threshold of 20 then fired on a third of its failures).

Evaluated with tests.test_oncall_promql over scrapes of two instances."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_oncall_promql import Scrapes, Vector, parse_scrape

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-alerts.yml"
RULES = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]

_SCRAPE = """# TYPE dispatch_messages_total counter
dispatch_messages_total{{provider="esp",outcome="failed"}} {failed}
dispatch_messages_total{{provider="esp",outcome="sent"}} {sent}
# TYPE dispatch_suppressions gauge
dispatch_suppressions {suppressed}
"""


def _instances(text: str, count: int) -> Vector:
    """The scrape of ``text`` as ``count`` API instances report it (the same figures)."""
    one = parse_scrape(text)
    return {
        frozenset((k, f"api-{i}:8000" if k == "instance" else v) for k, v in labels): value
        for i in range(count)
        for labels, value in one.items()
    }


def _firing(count: int, failed: int, sent: int, suppressed: int) -> set[str]:
    scrapes = Scrapes()
    start = _SCRAPE.format(failed=0, sent=0, suppressed=0)
    later = _SCRAPE.format(failed=failed, sent=sent, suppressed=suppressed)
    scrapes.history.append((1000.0, _instances(start, count)))
    scrapes.history.append((1600.0, _instances(later, count)))
    return set(scrapes.firing(RULES)) & {
        "DispatchMessagesFailing",
        "DispatchSuppressionsGrowingFast",
    }


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_figures_below_the_thresholds_fire_nothing_however_many_instances_report_them(
    instances: int,
) -> None:
    assert _firing(instances, failed=15, sent=30, suppressed=60) == set()


@pytest.mark.parametrize("instances", [1, 3])
def test_figures_past_the_thresholds_fire_with_one_instance_or_three(instances: int) -> None:
    assert _firing(instances, failed=30, sent=60, suppressed=150) == {
        "DispatchMessagesFailing",
        "DispatchSuppressionsGrowingFast",
    }


# Figures every API instance reports alike (from Redis), past each rule's threshold, at
# two moments 200 s apart; and the per-process callback counters, which each instance
# counts of its own requests.
_SERVICE = """# TYPE dispatch_campaign_pauses_total counter
dispatch_campaign_pauses_total{{kind="quota"}} {n}
# TYPE dispatch_campaigns_restarted_total counter
dispatch_campaigns_restarted_total {n}
# TYPE dispatch_messages_total counter
dispatch_messages_total{{provider="esp",outcome="unknown"}} {n}
# TYPE dispatch_workers_not_consuming gauge
dispatch_workers_not_consuming 1
# TYPE dispatch_workers_consuming gauge
dispatch_workers_consuming 0
# TYPE dispatch_callback_batches_pending gauge
dispatch_callback_batches_pending 2000
# TYPE dispatch_callback_batches_dead gauge
dispatch_callback_batches_dead 1
# TYPE dispatch_redis_used_memory_bytes gauge
dispatch_redis_used_memory_bytes 90
# TYPE dispatch_redis_maxmemory_bytes gauge
dispatch_redis_maxmemory_bytes 100
# TYPE dispatch_redis_evicting_policy gauge
dispatch_redis_evicting_policy 1
# TYPE dispatch_events_consumer_lag gauge
dispatch_events_consumer_lag{{group="analytics"}} 90
# TYPE dispatch_events_stream_max_length gauge
dispatch_events_stream_max_length 100
# TYPE dispatch_housekeeping_last_sweep_timestamp_seconds gauge
dispatch_housekeeping_last_sweep_timestamp_seconds 0
# TYPE dispatch_redis_up gauge
dispatch_redis_up 1
"""
_OWN = """# TYPE dispatch_callback_requests_total counter
dispatch_callback_requests_total{{status="400"}} {refused}
dispatch_callback_requests_total{{status="503"}} {unavailable}
# TYPE dispatch_callback_events_total counter
dispatch_callback_events_total{{provider="esp",type="invalid"}} {invalid}
"""
_ONCE = {
    "DispatchCampaignPausedAutomatically": {("kind", "quota")},
    "DispatchCampaignStalled": set(),
    "DispatchHousekeepingNotRunning": set(),
    "DispatchWorkerNotConsuming": set(),
    "DispatchNoWorkerConsuming": set(),
    "DispatchMessagesUnknown": {("provider", "esp")},
    "DispatchCallbacksRefused": set(),
    "DispatchCallbackEventsRefused": {("provider", "esp")},
    "DispatchCallbacksNotAccepted": set(),
    "DispatchCallbackBacklog": set(),
    "DispatchRedisMemoryNearLimit": set(),
    "DispatchRedisMayEvict": set(),
    "DispatchEventsConsumerFallingBehind": {("group", "analytics")},
}


def _with_instance(scrape: Vector, instance: int) -> Vector:
    return {
        frozenset((k, f"api-{instance}:8000" if k == "instance" else v) for k, v in labels): value
        for labels, value in scrape.items()
    }


@pytest.mark.parametrize("instances", [1, 3])
def test_each_alert_fires_once_with_the_labels_its_text_names(instances: int) -> None:
    """Each instance's copy of a service-wide figure made its own alert (three pages for
    one stalled campaign); the callback counters, each instance's own, were judged one
    instance at a time: six refusals spread over three instances (two each) never
    passed a threshold of five. Review V7."""
    scrapes = Scrapes()
    for at, n in ((1000.0, 0), (1200.0, 1)):
        vector: Vector = {}
        for i in range(instances):
            own = _OWN.format(
                refused=6 // instances * n,
                unavailable=n if i == 0 else 0,  # one instance could not accept one
                invalid=n if i == instances - 1 else 0,
            )
            vector |= _with_instance(parse_scrape(_SERVICE.format(n=n) + own), i)
        scrapes.history.append((at, vector))
    firing = scrapes.firing(RULES)
    for name, labels in _ONCE.items():
        assert name in firing, name
        [series] = firing[name]  # one alert, not one per instance
        assert {kv for kv in series if kv[0] not in ("__name__",)} == labels, name
