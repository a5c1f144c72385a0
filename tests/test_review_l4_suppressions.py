"""The suppression list at scale (listed without holding it, imported in bulk) and at once."""

from __future__ import annotations

import io
import json
import sys
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis

from dispatch import store, suppressions
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client


def _fill(r: redis.Redis, n: int) -> None:
    """``n`` entries as callbacks write them (with a detail and a meta)."""
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        email = f"bounced{i}@example.com"
        entry = {
            "email": email,
            "reason": "hard_bounce",
            "source": "callback:ses:Bounce",
            "ts": 1.0,
            "detail": "550 5.1.1 The email account that you tried to reach does not exist",
            "campaign_id": "c" * 16,
            "meta": f"{email}|1|{'c' * 16}|20261124|0|default|{i}|",
        }
        pipe.hset(store.SUPPRESSIONS_HASH, email, orjson.dumps(entry))
    pipe.execute()


def test_the_cli_lists_a_long_list_without_holding_it_whole(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300,000 entries took 820 MB to list: every entry, then one string of them all."""
    n = 20_000
    _fill(redis_client, n)
    out = tmp_path / "list.json"
    with out.open("w", encoding="utf-8") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        tracemalloc.start()
        try:
            code = main(["suppressions", "list"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    monkeypatch.undo()

    assert code == 0
    listed = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(e["email"] for e in listed) == sorted(f"bounced{i}@example.com" for i in range(n))
    assert listed[0]["detail"].startswith("550 5.1.1")
    # A page of 1,000 entries at a time: a few MB, whatever the list's length (the whole
    # list took about 30 MB here, and grows with it).
    assert peak < 8 * 2**20, peak


def test_an_empty_list_is_an_empty_array(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suppressions", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    suppressions.add("Ann@Example.com", reason="r", source="s", client=redis_client)
    assert main(["suppressions", "list"]) == 0
    assert [e["email"] for e in json.loads(capsys.readouterr().out)] == ["ann@example.com"]


def test_a_file_of_addresses_is_suppressed_in_bulk_each_spelling_once(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_client.hset(
        store.SUPPRESSIONS_HASH,
        "old@example.com",
        orjson.dumps({"email": "old@example.com", "reason": "spam", "source": "x", "ts": 1.0}),
    )
    lines = [f"User{i}@Example.COM" for i in range(2_500)]  # more than one round trip
    lines += [
        "",
        " Kai@Bücher.Example. ",
        "kai@xn--bcher-kva.example",  # the same address: one entry
        "not an address",
        "OLD@example.com",  # already suppressed: its first reason stands
        "no-domain@",
        "last@example.com",
    ]
    listing = tmp_path / "bounces.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")

    code = main(["suppressions", "add", "--file", str(listing), "--reason", "imported"])
    out, err = capsys.readouterr()

    assert code == 2  # some lines were no address; their neighbours are in
    assert json.loads(out) == {"added": 2_502, "already_suppressed": 2, "invalid": 2}
    assert f"{listing}:2504: 'not an address' is not an email address" in err
    assert f"{listing}:2506: " in err and err.count("error: ") == 2
    for address in ("user0@example.com", "USER2499@example.com", "kai@bücher.example"):
        entry = suppressions.get(address, client=redis_client)
        assert entry is not None and (entry["reason"], entry["source"]) == ("imported", "cli")
    assert suppressions.get("last@example.com", client=redis_client) is not None
    old = suppressions.get("old@example.com", client=redis_client)
    assert old is not None and old["reason"] == "spam"
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 2_503

    monkeypatch.setattr(sys, "stdin", io.StringIO("again@example.com\nuser1@example.com\n"))
    code = main(["suppressions", "add", "--file", "-"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"added": 1, "already_suppressed": 1, "invalid": 0}

    assert main(["suppressions", "add"]) == 2
    assert main(["suppressions", "add", "a@example.com", "--file", str(listing)]) == 2
    assert main(["suppressions", "add", "--file", str(tmp_path / "missing.txt")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_of_puts_at_once_only_the_one_that_wrote_the_entry_says_created(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The PUT read whether the entry existed, then wrote it: of PUTs at once, several
    were answered 201 (and one that found another's entry written in between, a bounce's
    callback, said it created it)."""
    addresses = [f"raced{i}@example.com" for i in range(60)]
    puts = [a for a in addresses for _ in range(8)]
    with api_client(api_server) as api, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda a: api.put(f"/v1/suppressions/{a}", json={}), puts))

    assert {a.status_code for a in answers} <= {200, 201}
    created = Counter(
        a for a, answer in zip(puts, answers, strict=True) if answer.status_code == 201
    )
    assert created == Counter(addresses)  # each address created once
