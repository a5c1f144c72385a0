"""Review O10 (a first day with the README): the CLI names what is wrong as the API does.

A provider or campaign file refused by `dispatch providers add` or `dispatch send` named
its fields as pydantic's raw locations (`smtp.max_connections`, `body` for a missing or
unknown `kind`, `body: Value error, html: ...`), and `dispatch messages --status` or
`--callback` with a value it does not know said `status: one of ...` without the option
or the value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import yaml

from dispatch import store
from dispatch.cli import main


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
