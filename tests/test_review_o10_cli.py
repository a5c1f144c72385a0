"""Review O10 (a first day with the README): the CLI names what is wrong as the API does.

A provider or campaign file refused by `dispatch providers add` or `dispatch send` named
its fields as pydantic's raw locations (`smtp.max_connections`, `body` for a missing or
unknown `kind`, `body: Value error, html: ...`), and `dispatch messages --status` or
`--callback` with a value it does not know said `status: one of ...` without the option
or the value. The README showed no callback to post by hand: "Using it" now plays the
provider with curl, and that block runs here as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from dispatch import store, suppressions
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client, wait_for_campaign
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent
README_API = "http://127.0.0.1:8000"


def _err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_providers_add_names_the_fields_as_the_api_does(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    file = tmp_path / "providers.yaml"
    file.write_text(
        yaml.safe_dump(
            [
                {"nickname": "a", "kind": "smtp", "host": "smtp://x:25", "max_connections": -1},
                {"nickname": "b", "host": "mail.example.com"},
                {"nickname": "c", "kind": "smpt", "host": "mail.example.com"},
            ]
        )
    )
    code, err = _err(capsys, "providers", "add", str(file))
    assert code == 2
    lines = err.strip().splitlines()
    first = next(line for line in lines if "'a'" in line)
    assert "max_connections: Input should be greater than or equal to 1" in first
    assert "; host: 'smtp://x:25' holds a scheme" in first
    assert "smtp." not in first and "Value error" not in first
    second = next(line for line in lines if "'b'" in line)
    assert second.endswith(
        "'b': kind: missing: the provider's kind, one of smtp, ses, sendgrid, gmail, http"
    )
    third = next(line for line in lines if "'c'" in line)
    assert "'c': kind: 'smpt' is no kind of provider: one of smtp, ses" in third
    assert "body" not in second + third
    assert not redis_client.exists(store.PROVIDERS_SET)  # nothing saved


def test_send_names_the_field_of_a_campaign_file_refused(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    file = tmp_path / "campaign.yaml"
    file.write_text(yaml.safe_dump({"id": "c1", "provider": "p", "subject": "s"}))
    code, err = _err(capsys, "send", str(file))
    assert code == 2
    assert err.strip() == "error: html: a campaign needs a body (html or text)"


@pytest.mark.parametrize(
    ("option", "value", "listed"),
    [("--status", "bogus", "queued, claimed, retry, sent"), ("--callback", "clicks", "clicked")],
)
def test_messages_names_the_option_and_the_value_it_does_not_know(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    listed: str,
) -> None:
    # Refused before the campaign is looked for: a typo is not answered "no campaign".
    code, err = _err(capsys, "messages", "no-such-campaign", option, value)
    assert code == 2
    assert err.startswith(f"error: {option} {value!r}: give one of ")
    assert listed in err


def _readme_callback_block() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "callback_url" in b)
    return block.replace("\\\n", " ").splitlines()


def test_the_readme_callback_block_works_as_written(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """README "Using it": after the curl walk (hello-1 sent through local-smtp), its
    callback block as written (the API's address moved, the bearer token added) bounces
    Sara, and the CLI lines under it show and lift the suppression."""
    with api_client(api_server) as api:
        saved = api.put(
            "/v1/providers/local-smtp",
            json={
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "none",
                "from_address": "deals@acme.example",
            },
        )
        assert saved.status_code == 201, saved.text
        body = {
            "id": "hello-1",
            "provider": "local-smtp",
            "subject": "Hello {{ name }}",
            "html": "<p>Hi {{ name }}</p>",
            "recipients": [{"email": "sara@example.com", "vars": {"name": "Sara"}}],
        }
        assert api.post("/v1/campaigns", json=body).status_code == 201
        wait_for_campaign(api, "hello-1", lambda c: c["status"] == "completed")

    lines = _readme_callback_block()
    cli = [line for line in lines if line.startswith(".venv/bin/dispatch ")]
    shell = "\n".join(line for line in lines if line not in cli)
    shell = shell.replace(README_API, api_server.url).replace(
        "curl -sS ", f"curl -sS -H 'Authorization: Bearer {API_TOKEN}' "
    )
    # The callback_url starts with DISPATCH_PUBLIC_URL, the README's address: moved too.
    moved = f'URL="{api_server.url}${{URL#{README_API}}}"\n'
    shell = re.sub(r"^(URL=.*\n)", lambda m: m[1] + moved, shell, flags=re.M)
    posted = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(posted.stdout)["status"] == "success", posted.stdout
    wait_for(lambda: suppressions.get("sara@example.com", client=redis_client) is not None)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outputs = []
    for line in cli:
        argv = shlex.split(line, comments=True)
        argv[0] = str(Path(sys.executable).parent / "dispatch")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, (line, done.stderr)
        outputs.append(done.stdout)
    assert json.loads(outputs[0])["callbacks"] == ["hard_bounced"]
    [entry] = json.loads(outputs[1])
    assert (entry["email"], entry["reason"]) == ("sara@example.com", "hard_bounce")
    assert outputs[2].strip() == "removed"
    assert suppressions.get("sara@example.com", client=redis_client) is None
