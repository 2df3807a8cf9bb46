"""The ordering policy: which candidates run next. Pure functions, no I/O.

The policy is the paper's (Fu et al. 2024, Algorithm 1): every step, rank all
candidates, running and waiting, by predicted output length and run the
highest-ranked prefix that fits the budget. Running requests outside it are
preempted. Sort key, most significant first:

1. the explicit user priority, lower first (vLLM's convention); unset = 0;
2. the starvation band: promoted candidates first (see below);
3. the score, higher (shorter predicted output) first; unscored last.
   Promoted candidates skip this key: among themselves they run oldest
   first, which gives the tightest bound on how long any request waits;
4. arrival order.

Starvation guard (vllm-ltr's): a candidate left out for `threshold_steps`
consecutive steps is promoted to the top band for its next `quantum_steps`
executed steps. A second, load-relative trigger promotes a waiting candidate
once `max_overtakes` later arrivals have been admitted (waiting -> scheduled)
ahead of it. The step threshold bounds the wait in absolute terms, which is
loose when FCFS itself waits little; the overtake count bounds it relative to
FCFS: a request starts about `max_overtakes` admissions later than FCFS would
have started it, at most. Here "later" means later in the candidate list; the
vLLM hook counts by arrival step, so that a burst's requests, which arrive
together, do not overtake one another.

Promotion also makes a candidate `protected`: while it runs it stays in the
top band, so it is never preempted for rank again (only the budget can push
it out). Without that, a long request would run one quantum, be preempted by
the next better-ranked arrival, wait out the threshold again, and the guard
would bound nothing. The counters and the flag travel with the candidates, so
the policy keeps no state between calls. Both the engine hooks and the sidecar's
NextBatch RPC call `next_batch`, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Defaults, in engine steps. An idle request is promoted after 768 steps
# (about 8-25 s on a GPU at 10-30 ms a step). Measured on vLLM under sustained
# overload (benchmarks/README.md): 256 promoted so many requests that the
# order was nearly FCFS again (mean latency 0.97x FCFS), while 768 kept most of
# the gain (0.79x) and held the longest wait to 1.46x FCFS's. The bound is
# absolute, so below overload, where FCFS's own longest wait is shorter, it
# is looser than 1.5x FCFS's: tune it to the engine's FCFS p99 queueing delay.
# 32 executed steps let a promoted request make progress before it competes again.
DEFAULT_THRESHOLD_STEPS = 768
DEFAULT_QUANTUM_STEPS = 32
DEFAULT_MAX_OVERTAKES = 0


@dataclass(frozen=True)
class StarvationGuard:
    threshold_steps: int = DEFAULT_THRESHOLD_STEPS  # 0 disables the step trigger
    quantum_steps: int = DEFAULT_QUANTUM_STEPS  # 0 disables the guard
    max_overtakes: int = DEFAULT_MAX_OVERTAKES  # 0 disables the overtake trigger

    @property
    def enabled(self) -> bool:
        return self.quantum_steps > 0 and (self.threshold_steps > 0 or self.max_overtakes > 0)

    def due(self, idle_steps: np.ndarray, overtakes: np.ndarray) -> np.ndarray:
        """Which candidates' counters call for a promotion (ignoring whether they are promoted already)."""
        due = np.zeros(len(idle_steps), dtype=bool)
        if not self.enabled:
            return due
        if self.threshold_steps > 0:
            due |= idle_steps >= self.threshold_steps
        if self.max_overtakes > 0:
            due |= overtakes >= self.max_overtakes
        return due


@dataclass(frozen=True)
class Candidates:
    """Columns of equal length, one row per candidate, rows in arrival order."""

    scores: np.ndarray  # float, higher = shorter; NaN = unscored
    running: np.ndarray  # bool
    num_tokens: np.ndarray  # int, tokens needed this step
    priority: np.ndarray  # int, lower first
    idle_steps: np.ndarray  # int
    promoted_steps_left: np.ndarray  # int
    protected: np.ndarray | None = None  # bool; None = no candidate is protected
    # Later arrivals admitted while this one waited (int); None = all zero.
    overtakes: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        scores: list[float] | np.ndarray,
        running: list[bool] | np.ndarray | None = None,
        num_tokens: list[int] | np.ndarray | None = None,
        priority: list[int] | np.ndarray | None = None,
        idle_steps: list[int] | np.ndarray | None = None,
        promoted_steps_left: list[int] | np.ndarray | None = None,
        protected: list[bool] | np.ndarray | None = None,
        overtakes: list[int] | np.ndarray | None = None,
    ) -> Candidates:
        """Columns from lists; omitted columns take their defaults (waiting, 1 token, priority 0, fresh counters)."""
        n = len(scores)

        def col(values: object, dtype: type, default: int) -> np.ndarray:
            return np.full(n, default, dtype=dtype) if values is None else np.asarray(values, dtype=dtype)

        return cls(
            scores=np.asarray(scores, dtype=np.float64),
            running=col(running, bool, False),
            num_tokens=col(num_tokens, np.int64, 1),
            priority=col(priority, np.int64, 0),
            idle_steps=col(idle_steps, np.int64, 0),
            promoted_steps_left=col(promoted_steps_left, np.int64, 0),
            protected=col(protected, bool, False),
            overtakes=col(overtakes, np.int64, 0),
        )

    def protected_mask(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool) if self.protected is None else np.asarray(self.protected, dtype=bool)

    def overtake_counts(self) -> np.ndarray:
        return np.zeros(len(self), dtype=np.int64) if self.overtakes is None else np.asarray(self.overtakes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Decision:
    order: np.ndarray  # candidate indices, highest priority first
    num_scheduled: int  # order[:num_scheduled] fits the budget
    preempted: np.ndarray  # indices of running candidates outside the scheduled prefix
    idle_steps: np.ndarray  # updated counters, in candidate order
    promoted_steps_left: np.ndarray
    protected: np.ndarray  # bool, in candidate order: promoted at some point
    overtakes: np.ndarray  # int, in candidate order; 0 for the scheduled ones

    @property
    def scheduled(self) -> np.ndarray:
        return self.order[: self.num_scheduled]


class Priority(NamedTuple):
    order: np.ndarray  # candidate indices, highest priority first
    promoted_steps_left: np.ndarray  # after this step's promotions, in candidate order
    protected: np.ndarray  # bool, after this step's promotions, in candidate order


def priority_order(c: Candidates, guard: StarvationGuard = StarvationGuard()) -> Priority:
    """Candidate indices, highest priority first, with each candidate's guard state after this step's promotions."""
    promoted_left = c.promoted_steps_left.copy()
    protected = c.protected_mask().copy()
    if guard.enabled:
        newly = (promoted_left <= 0) & guard.due(c.idle_steps, c.overtake_counts())
        promoted_left[newly] = guard.quantum_steps
        protected |= newly
    band = np.where((promoted_left > 0) | (protected & c.running), 0, 1)
    # Negated so that ascending sort puts high scores first; unscored sort last.
    score_key = np.where(np.isnan(c.scores), np.inf, -c.scores)
    score_key[band == 0] = 0.0
    arrival = np.arange(len(c))
    # lexsort: the last key is the most significant.
    order = np.lexsort((arrival, score_key, band, c.priority))
    return Priority(order, promoted_left, protected)


def next_batch(
    c: Candidates,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    guard: StarvationGuard = StarvationGuard(),
) -> Decision:
    """Order the candidates and take the longest prefix that fits the budget.

    The prefix is strict: a candidate that does not fit ends the batch, so no
    lower-ranked request overtakes it.
    """
    if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
        raise ValueError("the budget must be positive")
    order, promoted_left, protected = priority_order(c, guard)
    tokens = np.maximum(c.num_tokens[order], 1)
    fits = (np.arange(1, len(c) + 1) <= max_num_seqs) & (np.cumsum(tokens) <= max_num_batched_tokens)
    num_scheduled = int(np.argmin(fits)) if not fits.all() else len(c)

    scheduled = np.zeros(len(c), dtype=bool)
    scheduled[order[:num_scheduled]] = True
    preempted = order[num_scheduled:][c.running[order[num_scheduled:]]]
    idle = np.where(scheduled, 0, c.idle_steps + 1)
    promoted_left = np.where(scheduled & (promoted_left > 0), promoted_left - 1, promoted_left)
    # Candidate i is overtaken by every admission (waiting -> scheduled) of a later arrival j > i.
    admitted = (scheduled & ~c.running).astype(np.int64)
    admitted_later = admitted[::-1].cumsum()[::-1] - admitted
    overtakes = np.where(scheduled, 0, c.overtake_counts() + admitted_later)
    return Decision(order, num_scheduled, preempted, idle, promoted_left, protected, overtakes)
