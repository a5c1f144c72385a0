"""deploy/grafana-dashboard.json and deploy/prometheus.yml cannot drift from the code: every
metric, label and label value a dashboard query or an alert rule reads is in a real
/metrics scrape (a campaign sent and a callback taken first), the scrape targets are the
compose file's services and ports, and every panel imports anywhere (the
``${DS_PROMETHEUS}`` input) with a description that says what to do."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api_server import ApiServer
from tests.test_alert_rules import scrape_with_every_family

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus.yml"
COMPOSE = DEPLOY.parent / "docker-compose.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
ADDED_BY_PROMETHEUS = {"job", "instance"}  # target labels, not in the exposition
# How a query of service-wide figures starts: one value over the API instances.
_ACROSS_INSTANCES = re.compile(r"(time\(\) - |histogram_quantile\(0\.95, )?(max|min|count)\b")

# -- reading PromQL ------------------------------------------------------------------------

_TOKENS = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<var>\$\{?\w+\}?)
    | (?P<num>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)[smhdwy]*)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>])
    )""",
    re.VERBOSE,
)
# Words that read as identifiers but name no series.
_OPERATORS = {"and", "or", "unless", "bool", "offset", "atan2"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@dataclass
class Selector:
    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # label, op, value


@dataclass
class Query:
    selectors: list[Selector]
    grouping: set[str]  # labels of by (...), on (...), group_left (...)


def read_promql(expr: str) -> Query:
    """The series selectors of an expression (name and label matchers) and the labels its
    grouping clauses name. Function and aggregation names, keywords, numbers,
    durations, ranges and Grafana variables are not series."""
    tokens = _tokenize(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "op" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "name" or text in _OPERATORS:
            i += 1
        elif text in _GROUPING:
            labels, i = _label_list(tokens, i + 1) if following == "(" else ([], i + 1)
            grouping.update(labels)
        elif following in ("(", "by", "without"):  # a function or an aggregation
            i += 1
        else:
            selector = Selector(text)
            i += 1
            if i < len(tokens) and tokens[i][1] == "{":
                selector.matchers, i = _matchers(tokens, i + 1, expr)
            selectors.append(selector)
    return Query(selectors, grouping)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(expr.rstrip()):
        match = _TOKENS.match(expr, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {expr[pos:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _label_list(tokens: list[tuple[str, str]], i: int) -> tuple[list[str], int]:
    """The labels of ``(a, b)`` starting at ``tokens[i]`` (the parenthesis)."""
    labels = []
    i += 1
    while tokens[i][1] != ")":
        if tokens[i][0] == "name":
            labels.append(tokens[i][1])
        i += 1
    return labels, i + 1


def _matchers(
    tokens: list[tuple[str, str]], i: int, expr: str
) -> tuple[list[tuple[str, str, str]], int]:
    out = []
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        (kind, label), (_, op), (value_kind, value) = tokens[i : i + 3]
        if kind != "name" or op not in ("=", "!=", "=~", "!~") or value_kind != "str":
            raise ValueError(f"cannot read the label matchers of {expr!r}")
        out.append((label, op, value[1:-1].encode().decode("unicode_escape")))
        i += 3
    return out, i + 1


def test_promql_is_read_with_functions_matchers_groupings_and_suffixes() -> None:
    query = read_promql(
        "histogram_quantile(0.95, max by (provider, le) "
        '(rate(a_seconds_bucket{job=~"$job",x!="{not} a_name"}[$__rate_interval])))'
        " / on (instance) group_left (kind) sum without (w) (b_total offset 1h) > bool 1e3"
        " and time() - c{} > 0x1F unless absent(d) or min(e) by (group)"
    )
    assert [s.name for s in query.selectors] == ["a_seconds_bucket", "b_total", "c", "d", "e"]
    assert query.selectors[0].matchers == [("job", "=~", "$job"), ("x", "!=", "{not} a_name")]
    assert query.grouping == {"provider", "le", "instance", "kind", "w", "group"}
    with pytest.raises(ValueError):
        read_promql('{__name__="hidden"}')


# -- the files -------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's


def _rules() -> list[dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    rules = []
    for path in config["rule_files"]:
        groups = yaml.safe_load((PROMETHEUS.parent / path).read_text())["groups"]
        rules += [rule for group in groups for rule in group["rules"]]
    return rules


def _queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of the dashboard and the rules, by where it is."""
    found = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            # Grafana's label_values(selector, label): the selector is PromQL.
            found[f"variable {variable['name']}"] = re.sub(
                r"^label_values\((.*),\s*\w+\)$", r"\1", text
            )
    for rule in _rules():
        found[f"rule {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return found


# -- against a real scrape -------------------------------------------------------------------


def _series(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label -> the values seen."""
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return out


def problems(queries: dict[str, str], series: dict[str, dict[str, set[str]]]) -> list[str]:
    """What each query reads that the scrape does not have: a metric, a label, a label
    value an equality matcher asks for, a grouping label no metric of it carries."""
    found = []
    for where, expr in queries.items():
        query = read_promql(expr)
        if not query.selectors:
            found.append(f"{where}: reads no metric")
        carried = set(ADDED_BY_PROMETHEUS)
        for selector in query.selectors:
            labels = series.get(selector.name)
            if labels is None:
                found.append(f"{where}: metric {selector.name} is not exposed")
                continue
            carried |= set(labels)
            for label, op, value in selector.matchers:
                if label in ADDED_BY_PROMETHEUS:
                    continue
                if label not in labels:
                    found.append(f"{where}: {selector.name} has no label {label}")
                elif op == "=" and value not in labels[label]:
                    found.append(f"{where}: {selector.name} has no {label}={value!r}")
                elif op == "=~" and not any(re.fullmatch(value, v) for v in labels[label]):
                    found.append(f"{where}: {selector.name} has no {label}=~{value!r}")
        if all(selector.name in series for selector in query.selectors):
            ungrouped = sorted(query.grouping - carried)
            found += [f"{where}: no metric of it has label {label}" for label in ungrouped]
    return found


@pytest.fixture
def scrape(api_server: ApiServer, redis_client: redis.Redis) -> str:
    """The API's /metrics after a campaign sent over SMTP, a callback request (one event
    refused), a housekeeping sweep, a worker's canary and an events consumer group."""
    return scrape_with_every_family(api_server, redis_client)


def test_every_metric_label_and_value_the_dashboard_and_rules_read_is_exposed(
    scrape: str,
) -> None:
    dashboard = _dashboard()
    queries = _queries(dashboard)
    assert sum(q.startswith("panel") for q in queries) >= 15
    assert any(q.startswith("rule") for q in queries)
    assert problems(queries, _series(scrape)) == []


def test_a_renamed_metric_label_or_value_is_found(scrape: str) -> None:
    series = _series(scrape)
    before = (
        'max by (provider) (increase(dispatch_messages_total{outcome="failed"}[15m]))'
        " / max(dispatch_redis_maxmemory_bytes)"
    )
    assert problems({"q": before}, series) == []
    renamed = {
        "dispatch_messages_total": "dispatch_messages_count",
        "dispatch_redis_maxmemory_bytes": "dispatch_redis_max_memory_bytes",
        "by (provider)": "by (esp)",
        '{outcome="failed"}': '{state="failed"}',
        '"failed"': '"failure"',
    }
    for old, new in renamed.items():
        assert problems({"q": before.replace(old, new)}, series), new
    # The real service changed: a family gone from the scrape is missed at once.
    without = {k: v for k, v in series.items() if not k.startswith("dispatch_queue_depth")}
    assert problems(_queries(_dashboard()), without) == [
        "panel 'Queue depth per queue' A: metric dispatch_queue_depth is not exposed"
    ]


# -- the dashboard as Grafana imports it -----------------------------------------------------


def test_every_panel_has_an_id_a_title_a_description_and_the_input_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())  # valid JSON
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    for panel in panels:
        assert isinstance(panel["id"], int)
        assert panel["title"].strip()
        if panel["type"] == "row":
            continue
        assert len(panel["description"].split()) >= 10, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            # A legend names only labels the query keeps.
            kept = read_promql(target["expr"]).grouping
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= kept, (panel["title"], legend - kept)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE
    # No datasource anywhere but the input: the dashboard imports into any Grafana.
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text()))
    assert uids == {"${DS_PROMETHEUS}", dashboard["uid"]}


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[x, y] = panel["title"]


def test_descriptions_name_real_alerts_and_cover_every_alert() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    named: set[str] = set()
    for panel in _panels(_dashboard()):
        named |= set(re.findall(r"\bDispatch[A-Z]\w+", panel.get("description", "")))
    assert named - alerts == set(), "descriptions name alerts the rules do not have"
    assert alerts - named == set(), "alerts no panel description explains"


def test_service_wide_figures_are_taken_with_max_over_instances() -> None:
    """Every API instance reports the same service-wide figures: summing them over
    instances would multiply them. Only the callback counters, each process's own, are
    summed; nothing is shown per instance."""
    per_process = {"dispatch_callback_events_total", "dispatch_callback_requests_total"}
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            names = {s.name for s in read_promql(expr).selectors}
            assert "instance" not in read_promql(expr).grouping, expr
            if names & per_process:
                assert names <= per_process and expr.startswith("sum by"), expr
            else:
                assert _ACROSS_INSTANCES.match(expr), expr


# -- prometheus.yml against docker-compose.yml -----------------------------------------------


def _compose_port(service: dict[str, Any]) -> int:
    """The port a compose service's command listens on (``--port N`` or ``--port=N``)."""
    command = " ".join(service["command"])
    found = re.search(r"--port[= ](\d+)", command)
    assert found, command
    return int(found[1])


def test_scrape_targets_are_the_compose_services_that_serve_metrics() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    scraped = {}
    for name, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"job {name}: {host} is no compose service"
                assert int(port) == _compose_port(services[host]), target
                scraped[host] = name
    api = [s for s, v in services.items() if v.get("command", [])[:2] == ["dispatch", "api"]]
    flower = [s for s, v in services.items() if "flower" in v.get("command", [])]
    assert api and flower
    assert set(scraped) == {*api, *flower}
    # The alert rules and the dashboard's $job variable read the API's job.
    assert {scraped[s] for s in api} == {"dispatch"}
    assert config["rule_files"] == ["prometheus-alerts.yml"]
    assert (PROMETHEUS.parent / config["rule_files"][0]).is_file()
