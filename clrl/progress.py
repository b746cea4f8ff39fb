"""Progress output: a tqdm bar on a terminal, plain periodic lines anywhere else (a file, a pipe, CI logs).

A bar redraws itself with carriage returns, which a log file keeps as hundreds of lines of one long line;
:class:`PlainProgress` writes a complete line at most every ``interval`` seconds instead (and at each new
description: a task or sweep start). Both estimate the time left from the rate since the current
description began, so a new task with another speed (a slower environment, a longer evaluation) does not
inherit the previous task's rate.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class PlainProgress:
    """The part of tqdm's interface clrl uses, as plain lines on ``file`` (standard error by default)."""

    def __init__(
        self, total: int, unit: str, desc: str = "", interval: float = 30.0, file: TextIO | None = None
    ):
        self.total, self.unit, self.desc, self.interval = total, unit, desc, interval
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.postfix = ""
        self._since = (time.monotonic(), 0)
        self._last_line = float("-inf")

    def set_description(self, desc: str) -> None:
        """Start a new part (a task): its rate is measured afresh, and a line says it began."""
        self.desc = desc
        self._since = (time.monotonic(), self.n)
        self._line()

    def set_postfix_str(self, text: str) -> None:
        """Text shown after the count (a sweep's running and failed runs)."""
        self.postfix = text

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line if ``interval`` seconds passed since the last one."""
        self.n += n
        if time.monotonic() - self._last_line >= self.interval or self.n >= self.total:
            self._line()

    def write(self, line: str) -> None:
        """A line of its own (tqdm's ``write``)."""
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is complete."""

    def _line(self) -> None:
        self._last_line = now = time.monotonic()
        start, done = self._since
        rate = (self.n - done) / (now - start) if now > start and self.n > done else 0.0
        eta = (
            f", about {_duration((self.total - self.n) / rate)} left" if rate and self.n < self.total else ""
        )
        percent = 100 * self.n / self.total if self.total else 100.0
        head = f"{self.desc}: " if self.desc else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"clrl: {head}{self.n}/{self.total} {self.unit}s ({percent:.0f}%){extra}{eta}",
            file=self.file,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress(enabled: bool, total: int, unit: str, desc: str = "") -> Any:
    """A progress display for ``total`` ``unit``\\ s: ``None`` if not ``enabled``, a tqdm bar when standard
    error is a terminal, :class:`PlainProgress` lines otherwise."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, unit=unit, desc=desc or None, dynamic_ncols=True)
    return PlainProgress(total, unit, desc)
