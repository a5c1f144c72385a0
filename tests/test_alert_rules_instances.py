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
