"""A small progress bar for long-running commands (stderr; plain lines when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
LINE_INTERVAL = 2.0  # seconds between lines when stderr is not a terminal


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._first: int | None = None  # done at the first update: the rate counts from it
        self._last_line = 0.0
        self._last = ""

    def update(self, done: int, total: int, note: str = "") -> None:
        fraction = done / total if total else 1.0
        filled = int(WIDTH * fraction)
        if self._first is None:
            self._first, self.started = done, time.monotonic()
        # What was done before the bar was shown (a campaign followed half-way) is not
        # this run's rate.
        elapsed = time.monotonic() - self.started
        rate = (done - self._first) / elapsed if elapsed > 0 else 0.0
        line = (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} "
            f"{fraction:5.1%} {rate:,.0f}/s {note}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last)))
            self.stream.flush()
        elif line != self._last and (
            time.monotonic() - self._last_line >= LINE_INTERVAL or done >= total
        ):
            self.stream.write(line + "\n")
            self._last_line = time.monotonic()
        self._last = line

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
