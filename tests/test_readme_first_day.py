"""README "Using it", as a newcomer types it: the mistakes of a first day get a message
that says what happened, and never send a whole campaign or lose a saved provider quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from dispatch import store
from dispatch.cli import main
from tests.api_support import smtp_body
from tests.smtp_server import SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CAMPAIGN = ROOT / "templates" / "examples" / "campaign.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse refuses the arguments
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def local_smtp(redis_client: redis.Redis, tmp_path: Path) -> SmtpTestServer:
    """The example campaign's provider, ``local-smtp``, saved on a real SMTP server."""
    with SmtpTestServer() as smtp:
        config = tmp_path / "provider.yaml"
        config.write_text(yaml.safe_dump({"nickname": "local-smtp", **smtp_body(smtp.port)}))
        assert main(["providers", "add", str(config)]) == 0
        yield smtp


def test_a_negative_seq_is_refused(
    local_smtp: SmtpTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--seq -1`` sent the last recipient's message with ``-1`` as the seq in its meta."""
    capsys.readouterr()
    code, _, err = run(
        capsys, "send", str(EXAMPLE_CAMPAIGN), "--test", "me@example.com", "--seq", "-1"
    )
    assert code == 2 and "--seq" in err, err
    assert local_smtp.messages == []


def test_seq_without_test_creates_nothing(
    local_smtp: SmtpTestServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dispatch send FILE --seq 1`` (``--test`` forgotten) created and started the whole
    campaign: every recipient got it."""
    capsys.readouterr()
    code, out, err = run(capsys, "send", str(EXAMPLE_CAMPAIGN), "--seq", "1")
    assert (code, out) == (2, ""), err
    assert err.startswith("error: --seq goes with --test"), err
    assert redis_client.keys("dispatch:campaign*") == []


def test_a_file_that_is_no_campaign_says_so(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It said ``body: Input should be a valid dictionary or instance of CampaignRequest``."""
    for text in ("- sara@example.com\n- omar@example.com\n", "", "just words\n"):
        path = tmp_path / "list.yaml"
        path.write_text(text)
        code, out, err = run(capsys, "send", str(path))
        assert (code, out) == (2, ""), err
        assert err == f"error: {path}: must hold a campaign (a mapping of its fields)\n"


def test_an_edited_campaign_is_told_to_take_a_new_id(
    local_smtp: SmtpTestServer,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    campaign = yaml.safe_load(EXAMPLE_CAMPAIGN.read_text())
    campaign["recipients"] = []
    campaign["draft"] = True
    first = tmp_path / "campaign.yaml"
    first.write_text(yaml.safe_dump(campaign))
    assert run(capsys, "send", str(first))[0] == 0
    campaign["subject"] = "Welcome aboard, {{ name }}!"
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(campaign))
    code, _, err = run(capsys, "send", str(edited))
    assert code == 2
    assert "exists with other content: an edited campaign needs a new id" in err, err


def test_a_command_without_a_redis_to_share_says_it_keeps_nothing(tmp_path: Path) -> None:
    """With no ``dispatch up`` running and no DISPATCH_REDIS_URL, ``providers add`` printed
    the provider and exited 0, and the next command found no such provider."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env |= {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "HOME": str(tmp_path / "home")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    config = ROOT / "templates" / "examples" / "provider-smtp.yaml"
    added = subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "providers", "add", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["nickname"] == "local-smtp"
    assert "no `dispatch up` runs" in added.stderr, added.stderr
    assert "what it saves is lost when it ends" in added.stderr
    assert str(tmp_path / "run" / "dispatch" / "up.json") in added.stderr


def test_a_command_on_a_configured_redis_says_nothing_of_it(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert store.sync_client().ping()
    code, out, err = run(capsys, "providers", "list")
    assert (code, json.loads(out), err) == (0, [], "")


def test_ctrl_c_while_following_says_the_campaign_goes_on(
    local_smtp: SmtpTestServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Ctrl-C in ``send --follow`` printed ``interrupted``, as if the campaign had been."""
    import dispatch.cli

    campaign = yaml.safe_load(EXAMPLE_CAMPAIGN.read_text())
    campaign["send_at"] = "2099-01-01T00:00:00Z"  # scheduled: it waits, followed
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dispatch.cli.time, "sleep", ctrl_c)
    capsys.readouterr()
    code, out, err = run(capsys, "send", str(path), "--follow")
    assert (code, out) == (130, "welcome-2026-11\n"), err
    assert "interrupted" not in err
    assert "campaign 'welcome-2026-11' goes on" in err, err
    monkeypatch.undo()
    code, out, _ = run(capsys, "status", "welcome-2026-11")
    assert json.loads(out)["status"] == "scheduled"
