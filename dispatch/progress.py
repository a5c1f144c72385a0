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
        self._last = ""  # the line shown last (on a terminal) or due
        self._written = ""  # the last line written (without a terminal)
        self._bar = ""  # the last update's bar, without its note
        self.shown = 0  # updates so far

    def update(self, done: int, total: int, note: str = "") -> None:
        fraction = done / total if total else 1.0
        filled = int(WIDTH * fraction)
        if self._first is None:
            self._first, self.started = done, time.monotonic()
        # What was done before the bar was shown (a campaign followed half-way) is not
        # this run's rate.
        elapsed = time.monotonic() - self.started
        rate = (done - self._first) / elapsed if elapsed > 0 else 0.0
        self._bar = (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} "
            f"{fraction:5.1%} {rate:,.0f}/s"
        )
        self.shown += 1
        self._show(f"{self._bar} {note}", at_end=done >= total)

    def note(self, text: str) -> None:
        """The last bar with ``text`` instead of its note (a problem while following)."""
        self._show(f"{self._bar or self.label} {text}", at_end=True)

    def _show(self, line: str, at_end: bool) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last)))
            self.stream.flush()
        elif line != self._last and (time.monotonic() - self._last_line >= LINE_INTERVAL or at_end):
            self._write(line)
        self._last = line

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self._last_line = time.monotonic()
        self._written = line

    def close(self) -> None:
        """End the bar; without a terminal, its last state is written if it was not (a
        campaign paused part-way, shown less than ``LINE_INTERVAL`` after the last line)."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self._last != self._written:
            self._write(self._last)
