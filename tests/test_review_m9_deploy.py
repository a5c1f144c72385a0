"""What an operator deploys with, checked against what it means (review M9): the failed
share of a provider's sends (alert and dashboard) is failed over sent plus failed, not
over the larger of the two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_alert_rules_instances import _firing
from tests.test_oncall_promql import Scrapes, parse_scrape

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

_SENDS = """# TYPE dispatch_messages_total counter
dispatch_messages_total{{provider="esp",outcome="failed"}} {failed}
dispatch_messages_total{{provider="esp",outcome="sent"}} {sent}
"""


@pytest.mark.parametrize("instances", [1, 3])
@pytest.mark.parametrize(
    "failed, sent, fires",
    [
        (21, 70, False),  # 23 % of 91 sends: taken over max(sent, failed), 30 % of 70
        (100, 350, False),  # 22 %
        (25, 70, True),  # 26 %
        (30, 0, True),
    ],
)
def test_messages_failing_fires_past_a_quarter_of_the_sends(
    failed: int, sent: int, fires: bool, instances: int
) -> None:
    firing = _firing(instances, failed=failed, sent=sent, suppressed=0)
    assert ("DispatchMessagesFailing" in firing) is fires


def _panel_expr(title: str) -> str:
    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for panel in items:
            out += [panel, *panels(panel.get("panels", []))]
        return out

    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    (panel,) = [p for p in panels(dashboard["panels"]) if str(p["title"]).startswith(title)]
    (target,) = panel["targets"]
    return str(target["expr"]).replace('"$job"', '"dispatch"')


@pytest.mark.parametrize("failed, sent, share", [(50, 50, 0.5), (30, 90, 0.25), (40, 0, 1.0)])
def test_the_dashboard_s_failed_share_is_failed_over_every_send(
    failed: int, sent: int, share: float
) -> None:
    """Half the sends failed showed 100 %: the query divided by the larger outcome."""
    scrapes = Scrapes()
    scrapes.history.append((1000.0, parse_scrape(_SENDS.format(failed=0, sent=0))))
    scrapes.history.append((1600.0, parse_scrape(_SENDS.format(failed=failed, sent=sent))))
    result = scrapes.eval(_panel_expr("Failed share of sends by provider"))
    assert {dict(k)["provider"]: v for k, v in result.items()} == {"esp": pytest.approx(share)}
