"""templates/examples: every file is accepted by the API, and the README's walk-through
(the SMTP example provider, then campaign.yaml) delivers what it says."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, wait_for_campaign
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "templates" / "examples"
PROVIDERS = sorted(EXAMPLES.glob("provider-*.yaml"))
README = EXAMPLES.parent.parent / "README.md"
README_API = "http://127.0.0.1:8000"


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


def _readme_curls() -> list[list[str]]:
    """Each ``curl`` command of the README's shell blocks that calls the API's address
    (the walk; the callback block posts to a URL it reads), continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.startswith("curl ") and README_API in line]


def test_the_readme_curl_walk_sends_its_campaign(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """README "Using it", over HTTP: each curl as written (the API's address and the SMTP
    port moved to the test servers, the bearer token added) answers 2xx JSON, and the
    campaign it posts reaches the SMTP server."""
    curls = _readme_curls()
    assert curls and all(any(a.startswith(README_API) for a in argv) for argv in curls)
    answers = []
    for argv in curls:
        argv = [
            a.replace(README_API, api_server.url).replace('"port": 2525', f'"port": {smtp.port}')
            for a in argv
        ]
        argv[1:1] = ["-H", f"Authorization: Bearer {API_TOKEN}", "-w", "\n%{http_code}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        body, code = done.stdout.rsplit("\n", 1)
        assert code.startswith("2"), (argv, body)
        answers.append(json.loads(body))
    campaign_id = answers[-1]["id"]
    with api_client(api_server) as api:
        sent = wait_for_campaign(api, campaign_id, lambda c: c["status"] == "completed")
    assert sent["sent"] == sent["total"] == 1
    assert [(m.message["To"], m.message["Subject"]) for m in smtp.handler.messages] == [
        ("sara@example.com", "Hello Sara")
    ]
