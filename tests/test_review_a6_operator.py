"""Review A6: the ``dispatch`` command line as a platform team's operator uses it, by the
README: what each command says when the answer is "nothing", "not yet" or "wrong key"."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import yaml

from dispatch import campaign_reads, campaigns
from dispatch.cli import main
from dispatch.models import campaign_request
from dispatch.provider_store import save_provider
from dispatch.settings import get_settings

SMTP = {
    "nickname": "p",
    "kind": "smtp",
    "host": "127.0.0.1",
    "port": 2525,
    "security": "none",
    "from_address": "a@acme.example",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _running(campaign_id: str, count: int) -> None:
    """A started campaign of ``count`` recipients, nothing enqueued (no worker sends it)."""
    request = campaign_request(
        {"id": campaign_id, "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
         "recipients": [{"email": f"r{i}@example.com"} for i in range(count)]}
    )  # fmt: skip
    campaigns.create_campaign(request, enqueue=lambda campaign_id, batch: None)


def test_suppressions_add_with_nothing_to_add_asks_for_it(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dispatch suppressions add`` alone said "give an address or --file, not both"."""
    code, out, err = run(capsys, "suppressions", "add")
    assert (code, out) == (2, "")
    assert err.endswith("error: give the address to suppress, or --file FILE (one a line)\n"), err
    code, _, err = run(capsys, "suppressions", "add", "a@example.com", "--file", "-")
    assert code == 2 and "not both" in err, err


def test_a_command_without_the_key_says_so_not_that_the_key_was_changed(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a shell without ``DISPATCH_SECRET_KEY``, ``providers test`` (and ``send``) of a
    provider with a password said its secrets "do not decrypt (was the key changed?):
    restore the key ... or save the provider again", sending the operator to change the
    service, then "(set it to the key the service runs with)" after that advice."""
    save_provider(SMTP | {"username": "u", "password": "pw"})
    monkeypatch.delenv("DISPATCH_SECRET_KEY")
    get_settings.cache_clear()
    code, out, err = run(capsys, "providers", "test", "p", "--to", "me@example.com")
    assert (code, out) == (2, "")
    assert "DISPATCH_SECRET_KEY is not set in this command's environment" in err, err
    assert "was the key changed" not in err, err

    monkeypatch.setenv("DISPATCH_SECRET_KEY", "another-key-of-at-least-32-characters-x")
    get_settings.cache_clear()
    code, out, err = run(capsys, "providers", "test", "p", "--to", "me@example.com")
    assert (code, out) == (2, "")
    assert "provider 'p': its stored secrets do not decrypt" in err, err
    assert err.rstrip().endswith(
        "(or this command's DISPATCH_SECRET_KEY is not the one the service runs with)"
    ), err


def test_providers_add_says_when_the_callback_url_is_the_default(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``dispatch up --port 8100`` on a Redis of one's own, ``providers add`` in another
    shell: it printed a callback_url on port 8000 (the default), which the API shows on
    8100 (its own), with nothing to say which one the ESP should be given."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(SMTP))
    monkeypatch.delenv("DISPATCH_PUBLIC_URL", raising=False)
    get_settings.cache_clear()
    code, _, err = run(capsys, "providers", "add", str(path))
    assert (code, err) == (0, "")  # not a terminal (a script): nothing it did not expect
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a person
    for argv in (["providers", "add", str(path)], ["providers", "list"]):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert "DISPATCH_PUBLIC_URL is not set here: the callback_url above" in err, err
        assert "http://127.0.0.1:8000/v1/callbacks/p/" in out
    monkeypatch.setenv("DISPATCH_PUBLIC_URL", "https://mail.acme.example")
    get_settings.cache_clear()
    code, out, err = run(capsys, "providers", "list")
    assert code == 0 and "DISPATCH_PUBLIC_URL" not in err, err
    assert json.loads(out)[0]["callback_url"].startswith("https://mail.acme.example/v1/")


def test_follow_names_the_messages_neither_sent_nor_failed(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two recipients on the suppression list: the line read "2/2 100.0% sent 0 failed 0"."""
    summary = {"status": "completed", "total": 2, "queued": 0, "sent": 0, "failed": 0,
               "suppressed": 2, "unknown": 0, "cancelled": 0, "expired": 0}  # fmt: skip
    monkeypatch.setattr(campaign_reads, "campaign_summary", lambda campaign_id: summary)
    code, _, err = run(capsys, "status", "c", "--follow")
    assert code == 0, err
    assert "2/2 100.0%" in err and err.splitlines()[-1].endswith("sent 0 failed 0 suppressed 2")


@pytest.mark.parametrize(
    ("sent", "failed", "unknown", "code"),
    [(0, 3, 0, 1), (0, 2, 1, 1), (0, 0, 1, 1), (1, 2, 0, 0), (3, 0, 0, 0)],
)
def test_follow_fails_when_not_one_message_was_sent(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sent: int,
    failed: int,
    unknown: int,
    code: int,
) -> None:
    """Every message failed (a provider refusing them all) and --follow exited 0, as if
    the campaign had gone out: `send --follow && next-step` went on."""
    summary = {"status": "completed", "total": 3, "queued": 0, "sent": sent, "failed": failed,
               "suppressed": 3 - sent - failed - unknown, "unknown": unknown, "cancelled": 0,
               "expired": 0}  # fmt: skip
    monkeypatch.setattr(campaign_reads, "campaign_summary", lambda campaign_id: summary)
    got, _, err = run(capsys, "status", "c", "--follow")
    assert got == code, err
    said = "campaign 'c': no message was sent" in err
    assert said == bool(code), err
    if code:
        assert f"({failed} failed, {unknown} unknown)" in err and "--status failed" in err


def test_a_scheduled_campaign_says_when_it_starts(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``send`` printed the id alone and ``--follow`` "0/3 0.0% 0/s sent 0 failed 0" until
    beat released it: nothing said it waited for its send_at, nor until when."""
    import dispatch.cli

    save_provider(SMTP)
    send_at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"id": "later", "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
             "send_at": send_at.isoformat(),
             "recipients": [{"email": f"r{i}@example.com"} for i in range(3)]}
        )
    )  # fmt: skip
    when = send_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    code, out, err = run(capsys, "send", str(path))
    assert (code, out) == (0, "later\n"), err
    assert f"(scheduled: starts at {when})" in err, err

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C after the first line

    monkeypatch.setattr(dispatch.cli, "time", SimpleNamespace(sleep=stop, monotonic=time.monotonic))
    code, _, err = run(capsys, "status", "later", "--follow")
    assert code == 130
    assert f"0/3  0.0% 0/s scheduled: starts at {when}" in err, err


def test_sending_a_draft_says_how_it_starts(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    save_provider(SMTP)
    path = tmp_path / "d.yaml"
    path.write_text(
        yaml.safe_dump({"id": "d", "provider": "p", "subject": "Hi", "html": "x", "draft": True})
    )
    code, out, err = run(capsys, "send", str(path))
    assert (code, out) == (0, "d\n"), err
    assert "POST /v1/campaigns/d/recipients, then POST /v1/campaigns/d/start" in err, err


def test_messages_of_an_address_the_campaign_does_not_have_says_so(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """``messages ID --email`` with a typo or an address not in the campaign printed
    nothing and exited 0, as if the address had no story to tell."""
    save_provider(SMTP)
    _running("c", 2)
    code, out, err = run(capsys, "messages", "c", "--email", "R1@Example.com")
    assert code == 0, err
    assert json.loads(out)["email"] == "r1@example.com"
    code, out, err = run(capsys, "messages", "c", "--email", "r9@example.com")
    assert (code, out) == (1, "")
    assert err.endswith("campaign 'c' has no message to r9@example.com\n"), err
    code, out, err = run(capsys, "messages", "c", "--email", "r1@example.com", "--status", "sent")
    assert (code, out) == (1, "")
    assert err.endswith("campaign 'c' has no sent message to r1@example.com\n"), err
    code, out, err = run(capsys, "messages", "c", "--email", "r1@exmaple")
    assert (code, out) == (2, "")
    assert "error: --email: 'r1@exmaple'" in err, err
    code, out, err = run(capsys, "messages", "c", "--status", "failed")  # a listing: none
    assert (code, out, err) == (0, "", "")


def test_a_provider_test_missing_a_payload_var_names_the_option(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The detail says 'give it in "vars"', the API's field: the CLI's is ``--var``."""
    save_provider(
        {"nickname": "h", "kind": "http", "method": "POST", "endpoint": "http://127.0.0.1:9/x",
         "body": {"to": "$$To", "s": "$$Subject", "f": "$$FromName", "a": "$$FromAddress",
                  "c": "$$HTML", "n": "$$name"},
         "from_name": "Acme", "from_address": "a@acme.example"}
    )  # fmt: skip
    code, out, err = run(capsys, "providers", "test", "h", "--to", "me@example.com")
    assert code == 1 and json.loads(out)["error"] == "Invalid message"
    assert "give the recipient's vars with --var NAME=VALUE" in err, err
