"""What the user sees while it runs: a progress line and notes on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """One self-overwriting status line on stderr, redrawn at most 5 times a second; silent off a terminal."""

    def __init__(self, label: str, total: int, duration_s: float | None, enabled: bool):
        self.label, self.total, self.duration_s = label, total, duration_s
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.perf_counter()
        self._drawn = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        elapsed = now - self.started
        frac = done / self.total if self.total else 0.0
        if self.duration_s:
            frac = max(frac, elapsed / self.duration_s)
        bar = "#" * int(20 * min(frac, 1.0))
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r  {self.label:<24} [{bar:<20}] {done}/{self.total}  {elapsed:5.1f}s  {rate:8.1f}/s\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
