"""README as a new user reads it: its Settings table is the settings model, and every
``dispatch`` command it shows parses with the real CLI (test_examples.py runs its example
files and its curl walk; test_readme_first_day.py its first-day mistakes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from pydantic import SecretStr

from dispatch.cli import build_parser
from dispatch.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _settings_rows() -> list[tuple[list[str], str]]:
    """(variable names, default cell) of each row of the Settings table."""
    rows = []
    for line in _section("Settings").splitlines():
        if not line.startswith("| `DISPATCH_"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((re.findall(r"`DISPATCH_(\w+)`", cells[0]), cells[1]))
    return rows


def _unset(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value in ("", (), None)


def test_the_settings_table_names_every_setting_once() -> None:
    named = [name.lower() for names, _ in _settings_rows() for name in names]
    assert len(named) == len(set(named)), named
    assert set(named) == set(Settings.model_fields)


@pytest.mark.parametrize(
    "names, cell", _settings_rows(), ids=lambda v: "/".join(v) if isinstance(v, list) else ""
)
def test_each_default_the_settings_table_gives_is_the_code_s(names: list[str], cell: str) -> None:
    """The default column: ``unset`` for an empty default, else the value(s) in backticks
    before any explanation (``2`` / ``600`` for a row of two variables)."""
    defaults = [Settings.model_fields[name.lower()].default for name in names]
    if cell.startswith("unset"):
        assert all(_unset(d) for d in defaults), (names, defaults)
        return
    given = re.findall(r"`([^`]*)`", cell.split(";")[0])[: len(names)]
    assert len(given) == len(names), (names, cell)
    for name, text, default in zip(names, given, defaults, strict=True):
        if isinstance(default, bool):
            assert text == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(text) == default, (name, text, default)
        else:
            assert text == default, (name, text, default)


def _readme_commands() -> list[str]:
    """Each ``dispatch ...`` command of the README: the lines of its shell blocks, and the
    inline ones, placeholders (``ID``, ``<nickname>``, ``N``) given a value."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split("|")[-1].strip()
            if line.startswith((".venv/bin/dispatch ", "dispatch ")):
                commands.append(line.removeprefix(".venv/bin/"))
    inline = re.findall(r"`([^`]*)`", README.replace("\n", " "))
    for text in inline:
        text = re.sub(r"^(?:\.venv/bin/|docker compose exec (?:-T )?web )", "", text)
        if re.match(r"(up|api|worker|send|status|messages) --", text):  # `up --host H`
            text = f"dispatch {text}"
        text = text.split(" < ")[0]
        text = re.sub(r"\s+", " ", text).split(" | ")[-1]
        text = re.sub(r"<[^>]*>", "X", text).replace(" [--seq N]", " --seq 1")
        text = re.sub(r"\b(N|P)\b", "2", text).replace(" H ", " 127.0.0.1 ")
        if text.startswith("dispatch ") and "..." not in text:
            commands.append(text)
    return sorted(set(commands))


def test_the_readme_shows_its_commands() -> None:
    verbs = {shlex.split(c)[1] for c in _readme_commands()}
    assert {"up", "send", "status", "messages", "providers", "worker", "health"} <= verbs


@pytest.mark.parametrize("command", _readme_commands())
def test_each_command_the_readme_shows_parses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command with arguments parses as it is; a verb named alone in the text (``dispatch
    suppressions remove``) exists (its ``--help`` exits 0)."""
    argv = shlex.split(command)[1:]
    if all(re.fullmatch(r"[a-z]+", a) for a in argv):
        argv.append("--help")
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse refused it (and printed why)
        assert exc.code == 0 and "--help" in argv, (command, capsys.readouterr().err)
