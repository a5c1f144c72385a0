"""Review N22: the suppression list's bulk import as an operator meets it.

A file of addresses from a former tool (a Windows export in Latin-1 or Windows-1252)
with one line that is not UTF-8 ("müller@example.com") stopped ``dispatch suppressions
add --file`` there with Python's "'utf-8' codec can't decode byte 0xfc in position 6321":
no line named (the position was in a read buffer, not the file), no count printed, and
the addresses of the chunks before it added silently, those after it not. Such a line is
now named as any line that is no address is (``FILE:LINE``), and its neighbours added.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from dispatch import store, suppressions
from dispatch.cli import main


def test_a_line_that_is_not_utf8_is_named_and_its_neighbours_are_added(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = [f"user{i}@example.com".encode() for i in range(2_500)]  # several round trips
    lines[1_200] = "müller@example.com".encode("latin-1")
    lines[2_000] = "ann@bücher.example".encode("cp1252")  # in the domain
    lines.append("jöhn@example.com".encode())  # UTF-8: an address as any
    data = b"\r\n".join(lines) + b"\r\n"
    file = tmp_path / "former-tool.csv"
    file.write_bytes(data)

    code = main(["suppressions", "add", "--file", str(file), "--reason", "imported"])
    out, err = capsys.readouterr()

    assert code == 2
    assert json.loads(out) == {"added": 2_499, "already_suppressed": 0, "invalid": 2}
    assert err.splitlines() == [
        f"error: {file}:1201: not UTF-8 text (byte 0xfc); save it as UTF-8",
        f"error: {file}:2001: not UTF-8 text (byte 0xfc); save it as UTF-8",
    ]
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 2_499
    for address in ("user0@example.com", "user2499@example.com", "jöhn@example.com"):
        entry = suppressions.get(address, client=redis_client)
        assert entry is not None and (entry["reason"], entry["source"]) == ("imported", "cli")


@pytest.mark.parametrize("reason", ["", "  ", "x" * 201])
def test_a_reason_the_api_would_refuse_is_refused_before_anything_is_added(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path, reason: str
) -> None:
    """``--reason "$WHY"`` with WHY unset stored every entry with an empty reason (the
    API's PUT answers 422 for it): 200,000 entries that say nothing of why."""
    file = tmp_path / "bounces.txt"
    file.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
    for args in (["a@example.com"], ["--file", str(file)]):
        with pytest.raises(SystemExit) as refused:
            main(["suppressions", "add", *args, "--reason", reason])
        assert refused.value.code == 2
        assert "--reason: a reason " in capsys.readouterr().err
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0
    assert main(["suppressions", "add", "a@example.com", "--reason", "x" * 200]) == 0
    entry = suppressions.get("a@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "x" * 200
