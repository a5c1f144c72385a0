"""The dependency lock (constraints.txt) is what the tests run with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_lock_pins_exactly_the_installed_dependencies() -> None:
    # A dependency added to pyproject.toml without `scripts/lock.py > constraints.txt`
    # (or a lock edited by hand) would leave the image and CI unpinned or pinned wrong.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pins = (ROOT / "constraints.txt").read_text().splitlines()[1:]
    names = {line.split("==")[0].lower() for line in pins}
    assert {"celery", "redis", "jinja2", "pytest", "kombu"} <= names
    assert all(line.count("==") == 1 for line in pins)
