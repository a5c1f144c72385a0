"""Review V23: ``dispatch suppressions add --file`` given the JSON that ``dispatch
suppressions list`` writes (the API's import takes it as it is) named every line of it
invalid, seven an entry (``'[' is not an email address``), and added nothing, without
saying why or what to do. It is now refused at once, nothing added, with what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from dispatch import store, suppressions
from dispatch.cli import main


def test_the_list_the_cli_writes_is_refused_saying_what_to_do(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    suppressions.add("ann@example.com", reason="hard_bounce", source="cli", client=redis_client)
    suppressions.add("bob@example.com", reason="complained", source="cli", client=redis_client)
    assert main(["suppressions", "list"]) == 0
    listing = tmp_path / "suppressions.json"
    listing.write_text(capsys.readouterr().out, encoding="utf-8")
    redis_client.delete(store.SUPPRESSIONS_HASH)  # (another deployment's)

    code = main(["suppressions", "add", "--file", str(listing)])
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err  # one message, not one a line of the file
    assert f"{listing} is JSON" in err and "POST /v1/suppressions" in err
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0


@pytest.mark.parametrize("first", ['{"email": "ann@example.com", "reason": "x"}', "[]"])
def test_ndjson_or_an_empty_array_is_refused_too(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path, first: str
) -> None:
    file = tmp_path / "export.json"
    file.write_text(f"\n{first}\n", encoding="utf-8")
    assert main(["suppressions", "add", "--file", str(file)]) == 2
    assert "is JSON" in capsys.readouterr().err
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0


def test_an_address_a_line_with_braces_is_still_an_address(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    file = tmp_path / "addresses.txt"
    file.write_text("\n{ann}@example.com\nbob@example.com\n", encoding="utf-8")
    assert main(["suppressions", "add", "--file", str(file)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "added": 2,
        "already_suppressed": 0,
        "invalid": 0,
    }
