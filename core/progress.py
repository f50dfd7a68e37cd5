"""Progress reporting for long work: a bar on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "null_progress"]


def null_progress(done: int, total: int | None = None, label: str = "") -> None:
    return None


class ProgressBar:
    """A callable ``(done, total, label)`` drawing one line on a terminal.

    Silent unless ``stream`` is a TTY; redraws at most ten times a second.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int | None = None, label: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last < 0.1:
            return
        self._last = now
        if total:
            share = min(max(done / total, 0.0), 1.0)
            filled = int(share * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"\r{label[:40]:<40} [{bar}] {share * 100:5.1f}%"
        else:
            text = f"\r{label[:40]:<40} {done}"
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
