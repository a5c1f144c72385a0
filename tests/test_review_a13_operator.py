"""The README and the CLI as a new operator meets them (review A13): each verb's own
``--help``, a bad ``DISPATCH_ACCOUNT_ID``, and the README's ``dispatch:events`` consumer
run as printed against a real Redis with the pinned redis-py."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatch import store
from dispatch.cli import build_parser, main
from dispatch.settings import get_settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _verbs(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(argv, the help line its parent's list gives) of every verb, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                name = listed.dest
                yield (*path, name), str(listed.help)
                yield from _verbs(action.choices[name], (*path, name))


VERBS = list(_verbs(build_parser()))


def test_every_verb_is_found() -> None:
    names = {" ".join(argv) for argv, _ in VERBS}
    assert {"send", "pause", "retry-failed", "providers test", "suppressions add"} <= names


@pytest.mark.parametrize(
    ("argv", "said"), VERBS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_a_verb_s_own_help_says_what_it_does(
    argv: tuple[str, ...], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dispatch pause --help` showed only `positional arguments: id`: not what the verb
    does, which only `dispatch --help`'s list said."""
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--help"])
    assert ended.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(said.split()) in out


@pytest.mark.parametrize(
    "verb", ["status", "pause", "resume", "cancel", "retry-failed", "messages"]
)
def test_a_campaign_verb_says_what_its_id_is(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "the campaign's id" in capsys.readouterr().out


def test_the_follow_help_gives_its_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("send", "status"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "exit 0 once it completed, 1 when it stopped with messages unsent" in out


@pytest.mark.parametrize("value", ["a|b", "", "acmé", "x" * 65])
def test_a_bad_account_id_says_what_an_account_id_may_hold(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said `String should match pattern '^[\\x20-\\x7b\\x7d\\x7e]{1,64}$'`. (The
    settings are read again after each test: conftest.)"""
    monkeypatch.setenv("DISPATCH_ACCOUNT_ID", value)
    get_settings.cache_clear()
    assert main(["status", "any"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DISPATCH_ACCOUNT_ID=")
    assert "1 to 64 printable ASCII characters without '|'" in err
    assert "pattern" not in err


def test_an_account_id_the_readme_allows_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_ACCOUNT_ID", "Acme #7 (EU)")
    get_settings.cache_clear()
    assert get_settings().account_id == "Acme #7 (EU)"


def _readme_consumer() -> str:
    """The README's consumer, its endless loop made three rounds: the entries there, the
    empty read of the pending ones, then one blocking read for new entries."""
    block = re.search(r"```python\n(import json, redis\n.*?)```", README, flags=re.S)
    assert block is not None
    code = block.group(1)
    assert code.count("while True:") == 1
    return code.replace("while True:", "for _round in range(3):")


@pytest.mark.integration
def test_the_readme_s_events_consumer_runs_as_printed(redis_client: redis.Redis) -> None:
    """With redis-py 8 (the pinned version), `from_url` sets a 5 s socket timeout: the
    README's `XREADGROUP ... block=5000` raised `TimeoutError: Timeout reading from
    socket` at its first wait for new entries."""
    url = redis_client.connection_pool.connection_kwargs
    stream = store.EVENTS_STREAM
    assert stream == "dispatch:events"
    for n in range(3):
        event = {"event": "Notification Sent", "email": f"p{n}@example.com"}
        redis_client.xadd(stream, {"json": json.dumps(event)})
    handled: list[dict[str, Any]] = []
    scope: dict[str, Any] = {
        "DISPATCH_REDIS_URL": f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}",
        "handle": handled.append,
    }
    exec(compile(_readme_consumer(), "README consumer", "exec"), scope)
    assert [e["email"] for e in handled] == ["p0@example.com", "p1@example.com", "p2@example.com"]
    assert redis_client.xpending(stream, "crm")["pending"] == 0
