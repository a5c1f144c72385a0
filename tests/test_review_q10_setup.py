"""scripts/setup's stamp: it skips the install only for the venv it was written in.

The venv's ``python`` here is a stand-in that records how it was called (pip is never
run, no network): what is checked is whether setup installs or does nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_PYTHON = '#!/bin/sh\necho "$0 $*" >> "$SETUP_LOG"\n'


def checkout(where: Path) -> Path:
    """A checkout with scripts/setup, the lock and pyproject, and a venv whose python
    records its calls."""
    (where / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "setup", where / "scripts" / "setup")
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy2(ROOT / name, where / name)
    python = where / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return where


def setup_calls(repo: Path, log: Path) -> list[str]:
    """Run the checkout's scripts/setup; the venv python's calls it made."""
    before = log.read_text().splitlines() if log.exists() else []
    subprocess.run(
        ["bash", str(repo / "scripts" / "setup")],
        check=True,
        env={**os.environ, "SETUP_LOG": str(log)},
        timeout=60,
    )
    after = log.read_text().splitlines() if log.exists() else []
    return after[len(before) :]


def test_a_copied_checkout_installs_again_into_its_own_venv(tmp_path: Path) -> None:
    """A checkout copied (or moved) with its .venv: the venv's editable install and the
    ``dispatch`` script still point at the first place (a copy ran the original's code),
    and only pip, run again, points them here: the stamp must not say it is set up."""
    log = tmp_path / "calls.log"
    first = checkout(tmp_path / "first")
    assert any("pip install" in call for call in setup_calls(first, log))
    assert setup_calls(first, log) == []  # installed for this lock and pyproject

    copy = tmp_path / "copy"
    shutil.copytree(first, copy, symlinks=True)
    calls = setup_calls(copy, log)
    assert any("-m pip install" in call for call in calls)
    assert setup_calls(copy, log) == []


def test_a_venv_shared_through_a_symlink_stays_as_installed(tmp_path: Path) -> None:
    """A clone whose .venv links to another checkout's venv: that venv is set up, and
    setup leaves it alone (it is not re-pointed at the clone)."""
    log = tmp_path / "calls.log"
    main = checkout(tmp_path / "main")
    assert setup_calls(main, log)
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy2(main / "scripts" / "setup", clone / "scripts" / "setup")
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy2(main / name, clone / name)
    (clone / ".venv").symlink_to(main / ".venv")
    assert setup_calls(clone, log) == []
