"""Review E8: README statements checked against the product as it runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis
import yaml

from dispatch import campaigns, lifecycle
from dispatch.models import campaign_request
from dispatch.provider_store import save_provider
from tests.test_review_a6_operator import SMTP, run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"


def test_follow_of_a_cancelled_campaign_exits_1(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: a ``--follow`` exits 1 when the campaign stopped with messages unsent
    (paused, cancelled, expired). A cancel settles the unsent messages ``cancelled``, so
    ``queued`` is 0 and it exited 0, as for a campaign that went out: ``send --follow &&
    next-step`` went on."""
    save_provider(SMTP)
    request = campaign_request(
        {"id": "c-cancel", "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
         "recipients": [{"email": f"r{i}@example.com"} for i in range(3)]}
    )  # fmt: skip
    campaigns.create_campaign(request, enqueue=lambda campaign_id, batch: None)
    summary = lifecycle.cancel("c-cancel", enqueue=lambda campaign_id, batch: None)
    assert (summary["status"], summary["queued"], summary["cancelled"]) == ("cancelled", 0, 3)
    code, out, err = run(capsys, "status", "c-cancel", "--follow")
    assert code == 1, err
    assert json.loads(out)["status"] == "cancelled"
    assert err.endswith("campaign 'c-cancel' is cancelled: 3 messages not sent\n"), err


def _readme_section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.find("\n## ", start + 1)]


def test_the_alert_table_says_what_to_do_for_every_rule() -> None:
    """Operations' table "What to do when one fires" had no row for six of the rules
    (beat not sweeping among them): the on-call engineer paged by one found nothing."""
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    section = _readme_section("Operations")
    table = section[section.index("What to do when one fires:") :]
    rows = [line for line in table.splitlines() if line.startswith("| `Dispatch")]
    named = {a for row in rows for a in re.findall(r"`(Dispatch\w+)`", row.split("|")[1])}
    assert named == alerts, (alerts - named, named - alerts)


@pytest.mark.parametrize(
    ("error_class", "detail", "retried"),
    [
        ("SMTP invalid email ID", "550 5.1.1 <a@example.com>: user unknown", False),
        ("Invalid message", "header value holds a line break", False),
        ("SMTP dispatching failed", "554 5.7.1 ... blocked using zen.spamhaus.org", True),
        ("SMTP dispatching failed", "554 5.7.1 <a@example.com>: Relay access denied", True),
        ("SMTP invalid email ID", "452 4.2.2 mailbox full", True),
    ],
)
def test_retry_failed_takes_what_the_readme_says(
    error_class: str, detail: str, retried: bool
) -> None:
    """The lifecycle row said "not addresses refused with 5xx" while the SMTP section says
    a policy block of an address (554 5.7.1) is sent again by retry-failed: the class
    decides, not the code."""
    assert lifecycle.is_retryable(error_class, detail) is retried
    row = next(line for line in README.splitlines() if "retry-failed re-queues" in line)
    assert "a relay's or policy refusal of an address is" in row
