"""``dispatch pause|resume|cancel|retry-failed ID``: the API's lifecycle routes from the
command line, on the real Redis, a real worker and a real SMTP server."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, save_smtp_provider, wait_for_campaign
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer
from tests.test_api_cli import run
from tests.test_lifecycle import campaign_body, start_slow_campaign, until_no_batch_runs
from tests.worker import WorkerProcess


def test_pause_resume_and_cancel_from_the_command_line(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with api_client(api_server) as api:
        start_slow_campaign(api, smtp, "cli-pause", 1500, until_sent=200)
        code, out, _ = run(capsys, "pause", "cli-pause")
        assert code == 0 and json.loads(out)["status"] == "paused"
        until_no_batch_runs(redis_client, "cli-pause")
        at_pause = len(smtp.messages)
        assert at_pause < 1500

        code, out, _ = run(capsys, "resume", "cli-pause")
        assert code == 0 and json.loads(out)["status"] == "running"
        done = wait_for_campaign(api, "cli-pause", lambda s: s["status"] == "completed", 180)
        assert done["sent"] == 1500
        assert len({m.rcpt_tos[0] for m in smtp.messages}) == len(smtp.messages) == 1500

        # A completed campaign cannot be cancelled or paused: said, exit 1, nothing changed.
        code, _, err = run(capsys, "cancel", "cli-pause")
        assert code == 1 and "cli-pause" in err and "completed" in err
        code, _, err = run(capsys, "pause", "no-such-campaign")
        assert (code, err.strip()) == (1, "error: no campaign 'no-such-campaign'")

        smtp.handler.data_reply = lambda envelope: None  # type: ignore[assignment]
        body = {**campaign_body("cli-cancel", 10), "draft": True}
        assert api.post("/v1/campaigns", json=body).status_code == 201
        code, out, _ = run(capsys, "cancel", "cli-cancel")
        summary = json.loads(out)
        assert (code, summary["status"], summary["cancelled"]) == (0, "cancelled", 10)


def test_retry_failed_from_the_command_line(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A relay refusing a sender policy for a while fails those messages (the set-up's
    fault, retryable); after the fix ``retry-failed`` sends them, each once."""
    refusing = threading.Event()
    refusing.set()

    def data_reply(envelope: Any) -> str | None:
        if refusing.is_set() and envelope.rcpt_tos[0].endswith("5@example.com"):
            return "554 5.7.1 sender policy: not today"
        return None

    smtp.handler.data_reply = data_reply  # type: ignore[assignment]
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        body = {**campaign_body("cli-retry", 0), "recipients": recipients(30)}
        assert api.post("/v1/campaigns", json=body).status_code == 201
        done = wait_for_campaign(api, "cli-retry", lambda s: s["status"] == "completed", 120)
        assert (done["sent"], done["failed"]) == (27, 3)  # user5, user15, user25

        refusing.clear()
        code, out, _ = run(capsys, "retry-failed", "cli-retry")
        report = json.loads(out)
        assert code == 0 and report["retried"] == 3 and report["campaign"]["queued"] == 3
        done = wait_for_campaign(api, "cli-retry", lambda s: s["status"] == "completed", 120)
        assert (done["sent"], done["failed"]) == (30, 0)
    sent_to = [m.rcpt_tos[0] for m in smtp.messages]
    assert len(sent_to) == len(set(sent_to)) == 30
