"""deploy/prometheus-alerts.yml names only metrics that a real /metrics scrape exposes,
and every alert says what happened: the rules cannot silently drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dispatch import housekeeping, store, worker_health
from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.callback_support import generic_event, nested, post, save_providers
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-alerts.yml"
# PromQL words that look like names; metric names are every other identifier not called.
_KEYWORDS = {"and", "or", "unless", "on", "ignoring", "group_left", "group_right", "by"}
_KEYWORDS |= {"without", "offset", "bool"}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, ranges
    expr = re.sub(r"\b(?:on|ignoring|group_left|group_right|by|without)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if match.group() not in _KEYWORDS and not rest.startswith("("):
            names.add(match.group())
    return names


def test_metric_names_are_read_from_expressions() -> None:
    expr = 'sum(rate(a_total{x="y"}[5m])) > on(job) group_left() 0.8 * b or absent(c) > 1e3'
    assert metric_names(expr + " and time() - d > 300") == {"a_total", "b", "c", "d"}


def test_every_alert_has_a_summary_and_an_expression() -> None:
    rules = _rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"].startswith("Dispatch")
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert metric_names(rule["expr"]), rule["alert"]


def _exposed(api_server: ApiServer, redis_client: redis.Redis) -> set[str]:
    """The sample names of a scrape after what makes every family hold a sample."""
    text = scrape_with_every_family(api_server, redis_client)
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_with_every_family(api_server: ApiServer, redis_client: redis.Redis) -> str:
    """A scrape of /metrics after what makes every family hold a sample: a message sent,
    a callback request (one event refused), a housekeeping sweep, a worker's canary and
    a consumer group on the events stream."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        run_inline(redis_client, {"provider": "local", "subject": "s", "html": "h",
                                  "recipients": recipients(1)})  # fmt: skip
    paths = save_providers(redis_client)
    meta = "a@example.com|1|c-rules|20241104|0|default|0|"
    body = nested(generic_event("delivered", "a@example.com", meta), {"type": "spam"})
    housekeeping.sweep(redis_client, lambda c, b: None)
    worker_health.note(redis_client, "w@h", Settings().worker_canary_seconds)
    redis_client.xadd(store.EVENTS_STREAM, {"json": "{}"})
    redis_client.xgroup_create(store.EVENTS_STREAM, "crm", id="0")
    with api_server.client() as http:
        post(http, paths["gen"], body)
        return http.get("/metrics").text


def test_every_metric_an_alert_reads_is_exposed_by_metrics(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    exposed = _exposed(api_server, redis_client)
    used = {name: rule["alert"] for rule in _rules() for name in metric_names(rule["expr"])}
    missing = {name: alert for name, alert in used.items() if name not in exposed}
    assert not missing, f"alerts read metrics /metrics does not expose: {missing}"
