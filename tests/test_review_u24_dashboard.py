"""Every metric an alert rule reads is plotted on the dashboard: the person paged opens the
dashboard and finds the figure that fired (dispatch_events_consumer_missed_total, with its
alert DispatchEventsConsumerMissedEvents, was on no panel)."""

from __future__ import annotations

from tests.test_alert_rules import _rules, metric_names
from tests.test_review_v7_dashboard import _dashboard, _panels, read_promql


def test_every_metric_an_alert_reads_is_on_a_panel() -> None:
    read_by_alerts = {
        name: rule["alert"]
        for rule in _rules()
        if "alert" in rule
        for name in metric_names(rule["expr"])
    }
    plotted = {
        selector.name
        for panel in _panels(_dashboard())
        for target in panel["targets"]
        for selector in read_promql(target["expr"]).selectors
    }
    assert "dispatch_events_consumer_missed_total" in read_by_alerts
    assert {n: a for n, a in read_by_alerts.items() if n not in plotted} == {}
