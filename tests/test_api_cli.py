"""The ``dispatch`` CLI verbs of DESIGN §8 that manage providers, campaigns and suppressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml

from dispatch.cli import main
from tests.api_support import smtp_body
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_providers_add_list_and_test(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with SmtpTestServer() as smtp:
        config = tmp_path / "local.yaml"
        config.write_text(yaml.safe_dump({"nickname": "local", **smtp_body(smtp.port)}))
        code, out, _ = run(capsys, "providers", "add", str(config))
        assert code == 0 and json.loads(out)["callback_url"]
        code, out, _ = run(capsys, "providers", "list")
        assert [p["nickname"] for p in json.loads(out)] == ["local"]

        code, out, _ = run(capsys, "providers", "test", "local", "--to", "ops@example.com")
        assert code == 0 and json.loads(out) == {"ok": True, "error": None, "detail": "accepted"}
        assert smtp.messages[0].rcpt_tos == ["ops@example.com"]

        smtp.handler.rcpt_reply = lambda address: "550 5.1.1 unknown user"
        code, out, _ = run(capsys, "providers", "test", "local", "--to", "ops@example.com")
        assert code == 1 and json.loads(out)["error"] == "SMTP invalid email ID"
        code, _, err = run(capsys, "providers", "test", "local", "--to", "nope")
        assert code == 2 and "--to" in err
        code, _, err = run(capsys, "providers", "test", "ghost", "--to", "a@example.com")
        assert code == 2 and "ghost" in err


def test_send_follow_status_and_suppressions(
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    with SmtpTestServer() as smtp:
        config = tmp_path / "local.json"
        config.write_text(json.dumps({"nickname": "local", **smtp_body(smtp.port)}))
        assert run(capsys, "providers", "add", str(config))[0] == 0
        code, out, _ = run(capsys, "suppressions", "add", "user1@example.com", "--reason", "asked")
        assert code == 0 and json.loads(out)["reason"] == "asked"

        campaign = tmp_path / "campaign.yaml"
        campaign.write_text(
            yaml.safe_dump({"id": "cli-1", "provider": "local", "subject": "Hi {{ name }}",
                            "html": "<p>{{ name }}</p>", "recipients": recipients(50)})
        )  # fmt: skip
        code, out, err = run(capsys, "send", str(campaign), "--follow")
        assert code == 0, err
        assert out.splitlines()[0] == "cli-1"
        assert "cli-1 [" in err  # the progress bar
        summary = json.loads(out.split("\n", 1)[1])
        assert (summary["status"], summary["sent"], summary["suppressed"]) == ("completed", 49, 1)
        assert len(smtp.messages) == 49

        code, out, _ = run(capsys, "status", "cli-1")
        assert code == 0 and json.loads(out)["sent"] == 49
        code, _, err = run(capsys, "status", "nope")
        assert code == 1 and "nope" in err
        code, _, err = run(capsys, "send", str(campaign))
        assert code == 0 and "already existed" in err

        code, out, _ = run(capsys, "suppressions", "list")
        assert [e["email"] for e in json.loads(out)] == ["user1@example.com"]
        assert run(capsys, "suppressions", "remove", "user1@example.com")[0] == 0
        assert run(capsys, "suppressions", "remove", "user1@example.com")[0] == 1

        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"id": "cli-2", "provider": "local", "subject": "s"}))
        code, _, err = run(capsys, "send", str(bad))
        assert code == 2 and "html" in err
