"""Review AA23: ``suppressions add --file`` given NDJSON (d5280f9 refuses it) told the
operator to take its addresses with ``jq -r '.[].email' FILE``, which fails on NDJSON
(``Cannot index string with string "email"``: each line is an object, not an array);
and an NDJSON line written ``{ "email": ...}`` (a blank after the brace) was not taken
for JSON at all: every line was named an invalid address and nothing said why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from dispatch import store
from dispatch.cli import main

NDJSON = (
    '{"email": "ann@example.com", "reason": "hard_bounce"}\n{"email": "bob@example.com"}\n',
    '{ "email": "ann@example.com", "reason": "hard_bounce" }\n{ "email": "bob@example.com" }\n',
)


@pytest.mark.parametrize("text", NDJSON)
def test_ndjson_is_refused_with_a_jq_filter_that_takes_its_addresses(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    file = tmp_path / "export.ndjson"
    file.write_text(text, encoding="utf-8")
    assert main(["suppressions", "add", "--file", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0
    command = err.rsplit("first: ", 1)[1].split()
    assert command == ["jq", "-r", "'.email'", str(file)]
    # What the operator is told to run gives the addresses (jq: scripts/system-deps).
    taken = subprocess.run(
        ["jq", "-r", command[2].strip("'"), str(file)], capture_output=True, text=True
    )
    assert taken.stdout.split() == ["ann@example.com", "bob@example.com"], taken.stderr


def test_an_array_keeps_its_filter_and_braced_addresses_are_still_addresses(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    array = tmp_path / "list.json"
    array.write_text('[\n  {"email": "ann@example.com"}\n]\n', encoding="utf-8")
    assert main(["suppressions", "add", "--file", str(array)]) == 2
    assert f"jq -r '.[].email' {array}" in capsys.readouterr().err

    addresses = tmp_path / "addresses.txt"
    addresses.write_text("{}@example.com\n{ann}@example.com\n", encoding="utf-8")
    assert main(["suppressions", "add", "--file", str(addresses)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 2
