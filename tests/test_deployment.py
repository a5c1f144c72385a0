"""Deployment files: the Compose file is valid, the Procfile names every process."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    assert set(compose["services"]) == {"redis", "web", "worker", "beat", "flower"}
    assert "--appendonly" in compose["services"]["redis"]["command"]
    # Flower has no login and can stop workers: never published beyond the host.
    assert compose["services"]["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_compose_schema_catches_mistakes() -> None:
    """The check can fail: a misspelt key is refused."""
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["web"]["enviroment"] = {}
    errors = list(jsonschema.Draft201909Validator(schema).iter_errors(compose))
    assert errors


def test_procfile_has_the_four_processes() -> None:
    lines = (ROOT / "Procfile").read_text().splitlines()
    names = [line.split(":", 1)[0] for line in lines if line.strip()]
    assert names == ["web", "worker", "beat", "flower"]


def test_a_worker_runs_two_processes_per_core_unless_told() -> None:
    import os

    from dispatch.celery_app import app

    assert app.conf.worker_concurrency == 2 * len(os.sched_getaffinity(0))


def test_the_installed_package_carries_the_recipient_pages(tmp_path: Path) -> None:
    """The image installs a wheel (``pip install .``), not this tree: the unsubscribe and
    preference pages must be package data the app finds where it is installed."""
    import subprocess
    import sys
    import zipfile

    import dispatch
    from dispatch.api import pages

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("dispatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    where = pages.TEMPLATES.relative_to(Path(dispatch.__file__).resolve().parent.parent)
    expected = {f"{where.as_posix()}/{page.name}" for page in pages.TEMPLATES.glob("*.html")}
    assert expected and expected <= names, sorted(names)
