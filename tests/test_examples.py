"""templates/examples: every file is accepted by the API, and the README's walk-through
(the SMTP example provider, then campaign.yaml) delivers what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, wait_for_campaign
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "templates" / "examples"
PROVIDERS = sorted(EXAMPLES.glob("provider-*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def test_the_readme_names_every_example_and_every_path_it_gives_exists() -> None:
    readme = (EXAMPLES.parent.parent / "README.md").read_text()
    present = {path.name for path in EXAMPLES.glob("*.yaml")}
    assert set(re.findall(r"templates/examples/([\w.-]+)", readme)) <= present
    assert set(re.findall(r"`((?:provider-[\w-]+|campaign)\.yaml)`", readme)) == present


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
@pytest.mark.parametrize("path", PROVIDERS, ids=[p.stem for p in PROVIDERS])
def test_each_example_provider_is_saved_and_takes_the_example_campaign(
    path: Path, api_server: ApiServer, redis_client: redis.Redis
) -> None:
    provider = _load(path)
    with api_client(api_server) as api:
        saved = api.put(f"/v1/providers/{provider['nickname']}", json=provider)
        assert saved.status_code == 201, saved.text
        assert saved.json()["kind"] == provider["kind"]
        # Placeholders stand where the user's credentials go: nothing else is missing.
        assert saved.json()["warnings"] == [], saved.json()["warnings"]
        body = {**_load(EXAMPLES / "campaign.yaml"), "provider": provider["nickname"]}
        body["draft"] = True  # validated and stored, nothing sent to the example hosts
        created = api.post("/v1/campaigns", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["total"] == 2


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_the_walk_through_sends_the_example_campaign(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """README "Using it": provider-smtp.yaml (its port moved to the test server), then
    campaign.yaml: each recipient gets the rendered welcome."""
    provider = {**_load(EXAMPLES / "provider-smtp.yaml"), "port": smtp.port}
    campaign = _load(EXAMPLES / "campaign.yaml")
    assert campaign["provider"] == provider["nickname"]
    with api_client(api_server) as api:
        saved = api.put(f"/v1/providers/{provider['nickname']}", json=provider)
        assert saved.status_code == 201, saved.text
        created = api.post("/v1/campaigns", json=campaign)
        assert created.status_code == 201, created.text
        done = wait_for_campaign(api, campaign["id"], lambda c: c["status"] == "completed")
    assert done["sent"] == 2
    subjects = {m.message["To"]: m.message["Subject"] for m in smtp.handler.messages}
    assert subjects == {
        "sara@example.com": "Welcome, Sara!",
        "omar@example.com": "Welcome, Omar!",
    }
