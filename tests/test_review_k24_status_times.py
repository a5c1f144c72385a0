"""Review K24: ``dispatch status ID`` gives a campaign's times in words.

Its JSON (the API's summary) gives ``send_at`` and ``expires_at`` in Unix seconds
(``4130647200.0``): an operator asking when a scheduled campaign starts, or until when a
paused one may still be resumed, had to convert them by hand, while ``dispatch send``
and ``--follow`` say ``scheduled: starts at 2100-11-23 10:00:00 UTC``. The status now
says so too, on stderr (its standard output stays the JSON scripts read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from dispatch import lifecycle
from dispatch.cli import main
from dispatch.provider_store import save_provider
from tests.test_review_c22_cli_files import PROVIDER

CAMPAIGN = """\
id: later-1
provider: local
subject: Hello
html: <p>Hi</p>
send_at: 2100-11-23 15:30:00 +05:30
expires_at: 2101-01-01T00:00:00Z
recipients:
  - email: sara@example.com
"""


def test_status_says_when_a_campaign_starts_and_expires(
    redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_provider(dict(PROVIDER), redis_client)
    file = tmp_path / "later.yaml"
    file.write_text(CAMPAIGN)  # (an unquoted YAML timestamp with its offset)
    assert main(["send", str(file)]) == 0
    capsys.readouterr()

    assert main(["status", "later-1"]) == 0
    shown = capsys.readouterr()
    summary = json.loads(shown.out)
    assert (summary["status"], summary["send_at"]) == ("scheduled", 4130647200.0)
    assert shown.err == (
        "(scheduled: starts at 2100-11-23 10:00:00 UTC; expires at 2101-01-01 00:00:00 UTC)\n"
    )

    lifecycle.pause("later-1", client=redis_client)
    assert main(["status", "later-1"]) == 0
    assert capsys.readouterr().err == "(expires at 2101-01-01 00:00:00 UTC)\n"

    lifecycle.cancel("later-1", client=redis_client)  # finished: nothing left to say
    assert main(["status", "later-1"]) == 0
    assert capsys.readouterr().err == ""
