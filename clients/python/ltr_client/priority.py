"""Admission-time priority: turn a ranker score into the integer `priority` engines accept.

For engines and gateways without a custom scheduler. Each request gets a
*virtual deadline*:

    deadline_ms = arrival_ms + weight_ms * rank

where `rank` in [0, 1] is the share of recent requests predicted to be
shorter than this one (0 = shortest seen lately). Requests run in deadline
order, so a short request overtakes a long one that arrived up to
`weight_ms` earlier, but never one that arrived before that: no request
waits behind requests that arrived more than `weight_ms` after it, so long
requests cannot starve. `weight_ms` = 0 is FCFS.

Engines differ in direction and type:

- vLLM (`--scheduling-policy priority`): lower value runs first -> the deadline.
- SGLang (`--enable-priority-scheduling`): higher value runs first by default
  -> the negated deadline (or start SGLang with
  `--schedule-low-priority-values-first` and send the deadline).
- TensorRT-LLM: a float priority in [0, 1], higher first. A deadline does not
  fit that range; map the rank instead (`1 - rank`), which ranks but does not
  bound waiting.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable

# With no score (the sidecar is down), every request gets the middle rank, so
# unscored requests keep their arrival order among themselves: FCFS.
UNSCORED_RANK = 0.5


# The priority conventions VirtualDeadline.priority speaks, by engine.
ENGINES = ("vllm", "sglang", "tensorrt-llm")

class VirtualDeadline:
    """Maps scores to virtual-deadline priorities, ranking each score against a window of recent ones."""

    def __init__(self, weight_ms: float = 10_000.0, window: int = 1024, clock: Callable[[], float] = time.time):
        if weight_ms < 0 or window < 1:
            raise ValueError("weight_ms must be >= 0 and window >= 1")
        self.weight_ms = weight_ms
        self.window = window
        self._clock = clock
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []
        self._lock = threading.Lock()

    def relative_rank(self, score: float | None) -> float:
        """Share of recent scores higher (shorter predicted output) than `score`; records `score`."""
        if score is None:
            return UNSCORED_RANK
        with self._lock:
            if not self._sorted:
                rank = UNSCORED_RANK
            else:
                shorter = len(self._sorted) - bisect.bisect_right(self._sorted, score)
                rank = shorter / len(self._sorted)
            self._recent.append(score)
            bisect.insort(self._sorted, score)
            if len(self._recent) > self.window:
                old = self._recent.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, old)]
        return rank

    def deadline_ms(self, score: float | None, arrival_s: float | None = None) -> int:
        """The virtual deadline in Unix milliseconds: comparable across proxies with synchronised clocks."""
        arrival = self._clock() if arrival_s is None else arrival_s
        return int(arrival * 1000 + self.weight_ms * self.relative_rank(score))

    def priority(self, score: float | None, engine: str = "vllm", arrival_s: float | None = None) -> int | float:
        """The `priority` field for `engine`: "vllm", "sglang" or "tensorrt-llm"."""
        if engine == "tensorrt-llm":
            return 1.0 - self.relative_rank(score)
        deadline = self.deadline_ms(score, arrival_s)
        if engine == "vllm":
            return deadline
        if engine == "sglang":
            return -deadline
        raise ValueError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
