"""The clocks a run's times are on: the machine's, or a virtual one that advances a fixed time per engine step."""

from __future__ import annotations

import time


class WallClock:
    """Seconds since the run started, on the machine's clock; an idle engine sleeps until the next arrival."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))

    def stepped(self) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass  # already on the wall clock


class StepClock:
    """Virtual seconds: every engine step advances the clock by `step_s`, and an idle engine jumps to the next arrival.

    Arrivals then fall on the same engine steps in every run, however fast
    the machine happens to be during each: near capacity, where latency is
    most sensitive to the service rate, a few percent of speed drift between
    two wall-clock runs changes their latencies more than a policy does.
    """

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def stepped(self) -> None:
        self.t += self.step_s

    def waited(self, seconds: float) -> None:
        """The engine stood still this long between steps (the hook waited for scores)."""
        self.t += seconds
