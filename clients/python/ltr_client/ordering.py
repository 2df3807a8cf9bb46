"""The ordering policy: which candidates run next. Pure functions, no I/O.

This module is the whole decision, and the only place each of its rules is
written: the sidecar's NextBatch RPC calls `next_batch`, the vLLM hook
(`ltr_client.vllm.ranking`) builds a candidate table from the engine's queues
and calls it, and the clients' first-come-first-served fallback is
`fcfs_decision`, the same function with no scores and no guard. The Node
client's fallback is checked against vectors this module generates
(tests/vectors/fcfs_decisions.json).

The policy is the paper's (Fu et al. 2024, Algorithm 1): every step, rank all
candidates, running and waiting, by predicted output length and run the
highest-ranked prefix that fits the budget. Running requests outside it are
preempted. The order, most significant key first:

1. the explicit user priority, lower first (vLLM's convention); unset = 0;
2. the starvation band: promoted candidates first (see below), oldest first
   among themselves, which gives the tightest bound on how long any request
   waits;
3. in the other band, the score: higher (shorter predicted output) first.
   An unscored candidate keeps its first-come-first-served slot: the scored
   candidates are sorted among the slots that scored candidates occupy, and
   the unscored ones stay where arrival order puts them. Scores arrive
   asynchronously, so in an engine every request starts unscored; sorting it
   last would put it behind every scored request, and a request whose score
   never comes (sidecar slow or down) would wait longer than FCFS would make
   it. In its slot it has exactly as many candidates ahead of it as under
   FCFS. With no scores at all the order is FCFS;
4. arrival order: the rows' order (rows are in arrival order).

Starvation guard (vllm-ltr's): a candidate left out for `threshold_steps`
consecutive steps is promoted to the top band for its next `quantum_steps`
executed steps. A second, load-relative trigger promotes a waiting candidate
once `max_overtakes` later arrivals have been admitted (waiting -> scheduled,
a preempted request's return included) ahead of it. The step threshold bounds
the wait in absolute terms, which is loose when FCFS itself waits little; the
overtake count bounds it relative to FCFS: a request starts about
`max_overtakes` admissions later than FCFS would have started it, at most.
"Later" compares `Candidates.arrival_steps` (default: the row position), so
that requests which arrive together, such as a burst within one engine step,
do not overtake one another: their order is an accident of submission.

Promotion also makes a candidate `protected`: while it runs it stays in the
top band, so it is never preempted for rank again (only the budget can push
it out). Without that, a long request would run one quantum, be preempted by
the next better-ranked arrival, wait out the threshold again, and the guard
would bound nothing. The counters and the flag travel with the candidates, so
the policy keeps no state between calls.
"""

from __future__ import annotations

import math
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

    def headroom(self, idle_steps: np.ndarray, overtakes: np.ndarray, promoted_steps_left: np.ndarray) -> tuple[float, float]:
        """(idle steps, admissions of later arrivals) that can pass before `due` first holds for an unpromoted candidate.

        Each left-out step adds one to every idle count and each admission at
        most one to any overtake count, so until one of these runs out no
        promotion can happen: a caller that keeps the counters lazily (the
        vLLM hook) need not decide again before then. math.inf: never.
        """
        idle_room = overtake_room = math.inf
        unpromoted = promoted_steps_left <= 0
        if not self.enabled or not unpromoted.any():
            return idle_room, overtake_room
        if self.threshold_steps > 0:
            idle_room = float(self.threshold_steps - idle_steps[unpromoted].max())
        if self.max_overtakes > 0:
            overtake_room = float(self.max_overtakes - overtakes[unpromoted].max())
        return idle_room, overtake_room


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
    # When each arrived, non-decreasing (int): only a candidate with a greater
    # value overtakes it. None = the row position (every row a later arrival).
    arrival_steps: np.ndarray | None = None

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
        arrival_steps: list[int] | np.ndarray | None = None,
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
            arrival_steps=None if arrival_steps is None else np.asarray(arrival_steps, dtype=np.int64),
        )

    def protected_mask(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool) if self.protected is None else np.asarray(self.protected, dtype=bool)

    def overtake_counts(self) -> np.ndarray:
        return np.zeros(len(self), dtype=np.int64) if self.overtakes is None else np.asarray(self.overtakes, dtype=np.int64)

    def arrival_groups(self) -> np.ndarray:
        """The arrival key that overtakes compare: `arrival_steps`, or the row position."""
        return np.arange(len(self), dtype=np.int64) if self.arrival_steps is None else np.asarray(self.arrival_steps, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Decision:
    """One step's decision. Indices refer to the candidates' rows; counters are in row order."""

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


class GuardedOrder(NamedTuple):
    """The order alone, with the guard's state after this step's promotions (`priority_order`)."""

    order: np.ndarray  # candidate indices, highest priority first
    promoted_steps_left: np.ndarray  # after this step's promotions, in candidate order
    protected: np.ndarray  # bool, after this step's promotions, in candidate order


def priority_order(c: Candidates, guard: StarvationGuard = StarvationGuard()) -> GuardedOrder:
    """Candidate indices, highest priority first, with each candidate's guard state after this step's promotions."""
    promoted_left = c.promoted_steps_left.copy()
    protected = c.protected_mask().copy()
    if guard.enabled:
        newly = (promoted_left <= 0) & guard.due(c.idle_steps, c.overtake_counts())
        promoted_left[newly] = guard.quantum_steps
        protected |= newly
    band = np.where((promoted_left > 0) | (protected & c.running), 0, 1)
    arrival = np.arange(len(c))
    # First come first served within (priority, band): every candidate's slot.
    # lexsort: the last key is the most significant.
    order = np.lexsort((arrival, band, c.priority))
    # Scored candidates of the lower band are sorted by score among their own
    # slots; unscored ones keep theirs. Sorting the scored rows by (priority,
    # band, score, arrival) keeps each (priority, band) group's rows in that
    # group's slots, since the slots are grouped alike.
    movable = ~np.isnan(c.scores[order]) & (band[order] == 1)
    if movable.any():
        rows = order[movable]
        order[movable] = rows[np.lexsort((rows, -c.scores[rows], band[rows], c.priority[rows]))]
    return GuardedOrder(order, promoted_left, protected)


def admitted_later(admitted_arrivals: np.ndarray, arrival_steps: np.ndarray) -> np.ndarray:
    """For each of `arrival_steps`, how many of the admissions (sorted arrival steps) arrived in a later step."""
    return len(admitted_arrivals) - np.searchsorted(admitted_arrivals, arrival_steps, side="right")


def next_batch(
    c: Candidates,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    guard: StarvationGuard = StarvationGuard(),
) -> Decision:
    """Order the candidates and take the longest prefix that fits the budget."""
    return take_batch(c, priority_order(c, guard), max_num_seqs, max_num_batched_tokens)


def take_batch(c: Candidates, ranked: GuardedOrder, max_num_seqs: int, max_num_batched_tokens: int) -> Decision:
    """The decision for candidates in `ranked` order: the prefix that fits the budget, preemptions and counters.

    The prefix is strict: a candidate that does not fit ends the batch, so no
    lower-ranked request overtakes it.
    """
    if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
        raise ValueError("the budget must be positive")
    order, promoted_left, protected = ranked
    tokens = np.maximum(c.num_tokens[order], 1)
    fits = (np.arange(1, len(c) + 1) <= max_num_seqs) & (np.cumsum(tokens) <= max_num_batched_tokens)
    num_scheduled = int(np.argmin(fits)) if not fits.all() else len(c)

    scheduled = np.zeros(len(c), dtype=bool)
    scheduled[order[:num_scheduled]] = True
    preempted = order[num_scheduled:][c.running[order[num_scheduled:]]]
    idle = np.where(scheduled, 0, c.idle_steps + 1)
    promoted_left = np.where(scheduled & (promoted_left > 0), promoted_left - 1, promoted_left)
    # A candidate left out is overtaken by every admission (waiting -> scheduled) of a later arrival.
    arrivals = c.arrival_groups()
    admitted = np.sort(arrivals[scheduled & ~c.running])
    overtakes = np.where(scheduled, 0, c.overtake_counts() + admitted_later(admitted, arrivals))
    return Decision(order, num_scheduled, preempted, idle, promoted_left, protected, overtakes)


def fcfs_decision(c: Candidates, max_num_seqs: int, max_num_batched_tokens: int) -> Decision:
    """The fallback when no ranker answers: `next_batch` with no scores and no guard.

    That is explicit priority, then arrival order, within the budget;
    candidates already promoted, and protected ones that run, keep the top
    band, and the counters advance as usual, so the guard resumes where it
    stopped once the ranker answers again. A budget below 1 counts as 1.
    """
    unscored = Candidates(
        np.full(len(c), np.nan), c.running, c.num_tokens, c.priority, c.idle_steps, c.promoted_steps_left,
        c.protected, c.overtakes, c.arrival_steps,
    )  # fmt: skip
    return next_batch(unscored, max(1, max_num_seqs), max(1, max_num_batched_tokens), StarvationGuard(0, 0, 0))
