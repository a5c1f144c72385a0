"""Every name the README gives a reader to type or look up is one the code has: settings
named in its prose (test_review_f4_readme.py checks only the Settings table), metrics,
routes and alerts. After a day of edits by many hands a renamed or mistyped name is the
README error nobody runs into until an operator does (review AN24)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dispatch.api.app import create_app
from dispatch.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _metrics_defined() -> set[str]:
    """The metric families the code defines: each ``"dispatch_..."`` string it names."""
    names: set[str] = set()
    for path in (ROOT / "dispatch").rglob("*.py"):
        names |= set(re.findall(r"""["'](dispatch_[a-z0-9_]+)["']""", path.read_text()))
    return names


def test_every_setting_the_readme_names_exists() -> None:
    named = set(re.findall(r"\bDISPATCH_([A-Z0-9_]*[A-Z0-9])\b", README))
    assert named, "the README names no setting?"
    unknown = {f"DISPATCH_{n}" for n in named if n.lower() not in Settings.model_fields}
    assert not unknown, unknown


def test_every_metric_the_readme_names_is_defined() -> None:
    defined = _metrics_defined()
    named = set(re.findall(r"\bdispatch_[a-z0-9_]*[a-z0-9]\b", README))
    assert "dispatch_messages_total" in named
    unknown = {
        n
        for n in named
        if n not in defined and re.sub(r"_(total|bucket|count|sum)$", "", n) not in defined
    }
    assert not unknown, unknown


def test_every_route_the_readme_names_exists() -> None:
    """``GET /v1/campaigns/{id}``, ``POST /u/<token>``, ``POST /v1/campaigns/{id}/start\\|
    pause``: each method and path is one of the API's (placeholders of any spelling)."""
    paths = create_app().openapi()["paths"]
    routes = {(m.upper(), re.sub(r"\{[^}]*\}", "{}", p)) for p, ops in paths.items() for m in ops}
    named = re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s]*)`", README)
    assert len(named) > 10
    missing = []
    for method, path in named:
        path = re.sub(r"\{[^}]*\}|<[^>]*>", "{}", re.split(r"[?\[]", path)[0])
        head, _, last = path.rpartition("/")
        for one in last.split("\\|"):  # a table cell's start\|pause\|resume
            if (method, f"{head}/{one}") not in routes:
                missing.append(f"{method} {head}/{one}")
    assert not missing, missing


def test_every_alert_the_readme_names_is_a_rule() -> None:
    """The table of what to do is checked in test_review_e8_readme.py; the prose names
    alerts too (``the DispatchCampaignStalled alert``)."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    named = set(re.findall(r"`(Dispatch[A-Z]\w+)`", README)) - {
        "DispatchClient",
        "DispatchAPIError",
    }
    assert named - alerts == set()
