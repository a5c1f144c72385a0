"""Headless Chromium (Debian's) for page tests: the DOM after load, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("chromium is not installed: apt-get install chromium")
    return found


def run(url: str, *args: str, timeout: float = 60) -> str:
    """Run Chromium on ``url`` with ``args`` in a fresh profile; its standard output."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    return result.stdout


def dom(url: str) -> str:
    """The page's DOM as Chromium serialises it after loading (scripts and parsing done)."""
    return run(url, "--dump-dom")


def screenshot(url: str, path: Path, size: str = "800,600") -> Path:
    run(url, f"--screenshot={path}", f"--window-size={size}")
    return path
