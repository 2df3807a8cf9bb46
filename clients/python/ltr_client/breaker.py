"""A circuit breaker, so that a dead sidecar costs the engine nothing.

After `failure_threshold` consecutive failures the breaker opens: calls are
not attempted and the caller falls back at once. After `reset_after_s` one
trial call is let through (half-open); success closes the breaker, failure
opens it for another period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """True if a call may be attempted now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_in_flight or self._clock() - self._opened_at < self.reset_after_s:
                return False
            self._trial_in_flight = True  # half-open: exactly one trial call
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> bool:
        """Count a failure; return True if this one opened the breaker."""
        with self._lock:
            self._failures += 1
            was_open = self._opened_at is not None
            if was_open or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self._trial_in_flight = False
                if not was_open:
                    self.times_opened += 1
                    return True
            return False
