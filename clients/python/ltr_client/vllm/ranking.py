"""The hook's adapter to the shared policy: a candidate table from the engine's lists, and the decision back.

No vLLM import: this works on any object with a `priority` attribute (and,
like vLLM's requests, optionally an `arrival_time`), so it is tested and
benchmarked without an engine.

The decision is `ltr_client.ordering`'s, the very functions the sidecar's
NextBatch runs: `priority_order` for the order and the guard's promotions,
`take_batch` for the preemptions. This module only builds the table, writes
the promotions back to each request's `RankState` and puts the lists in the
decided order. Its one extra job is to keep the engine's step cheap: the
guard's counters are kept lazily (a waiting request costs nothing per step:
its idle count is the steps since it last ran, its overtake count a query on
the `AdmissionLog`), and a table is ranked again only when its order can
have changed (`RankedTable.needs_rank`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ordering

# The attribute that carries a request's RankState. A plain attribute on the
# engine's Request object rather than a dict in the scheduler: it dies with the
# request, so there is nothing to clean up on any of vLLM's many finish paths.
STATE_ATTR = "ltr_state"
NEVER = math.inf


@dataclass(slots=True)
class RankState:
    """What the policy needs to know about one request, beyond its priority."""

    # Higher = shorter predicted output; NaN until the sidecar's score arrives.
    score: float = math.nan
    # The hook's step counter when the request last ran, or when it arrived:
    # its idle count at step s is s - 1 - last_run_step (NextBatch's
    # idle_steps, kept lazily), so only the requests that ran get an update.
    last_run_step: int = 0
    # Executed steps left in the starvation guard's top band.
    promoted_steps_left: int = 0
    # Set when the guard first promotes it: from then on, while it runs, it is
    # never preempted for rank (KV pressure still can). See ltr_client.ordering.
    protected: bool = False
    # The scheduler's step counter when it arrived: the table's arrival_steps,
    # so that a burst's requests do not overtake one another.
    arrival_step: int = 0
    # Its overtake count when it last entered the queue (nonzero only after a
    # preemption): see AdmissionLog.
    overtake_base: int = 0


_NO_STATE = RankState()


class AdmissionLog:
    """Arrival steps of the admitted requests: how many later arrivals overtook a waiting request.

    NextBatch's overtake count (`ordering.admitted_later`), kept lazily: every
    admission (waiting -> running, a preempted request's return included) of
    a request that arrived in a later step than a waiting one overtakes it,
    so the count is a rank query, with no per-step work for the requests
    that wait. A preempted request's count restarts
    (`RankState.overtake_base`), so the admissions it saw while running are
    not held against it.
    """

    def __init__(self) -> None:
        self._steps: list[int] = []  # sorted; steps before every live request's arrival are pruned
        self.total = 0  # admissions recorded, pruned or not

    def record(self, arrival_step: int) -> None:
        bisect.insort(self._steps, arrival_step)
        self.total += 1

    def admitted_after(self, arrival_steps: np.ndarray) -> np.ndarray:
        """For each arrival step, how many admitted requests arrived in a later step."""
        return ordering.admitted_later(np.asarray(self._steps, dtype=np.int64), arrival_steps)

    def forget_before(self, arrival_step: int) -> None:
        """Drop entries before `arrival_step`: no live request arrived earlier."""
        del self._steps[: bisect.bisect_left(self._steps, arrival_step)]

    def __len__(self) -> int:
        return len(self._steps)


def state_of(item: Any) -> RankState:
    """The request's RankState (a shared unscored default if it has none)."""
    return getattr(item, STATE_ATTR, None) or _NO_STATE


@dataclass(frozen=True)
class Table:
    """The rows one `rank_table` call ranked (in arrival order), and the policy's decision on them."""

    rows: list[Any]
    candidates: ordering.Candidates
    decision: ordering.Decision


def rank_table(
    lists: Sequence[MutableSequence[Any]],
    running: Sequence[bool],
    step: int,
    guard: ordering.StarvationGuard,
    max_num_seqs: int,
    admissions: AdmissionLog | None = None,
) -> tuple[Table, bool, float, float]:
    """Rank the items of `lists` as one candidate table for step `step` and put each list in the decided order.

    `running[k]` says whether list k holds running requests. The items are
    the table's rows in first-come-first-served order: by arrival step, then
    by `arrival_time` when they have one, then as listed. Budget: only
    `max_num_seqs`; vLLM applies its token budget itself, to the lists in
    this order. Newly promoted items get their quantum (and `protected`)
    written back to their RankState. `admissions` gives the waiting items'
    overtake counts; without it they count zero.

    Returns the table, whether any list changed, and the step and the
    `admissions.total` before which ranking again cannot promote anyone.
    """
    rows: list[Any] = []
    is_running: list[bool] = []
    for items, run in zip(lists, running, strict=True):
        rows.extend(items)
        is_running.extend([run] * len(items))
    n = len(rows)
    states = [getattr(r, STATE_ATTR, None) or _NO_STATE for r in rows]
    # Each list keeps its own order; only the merge needs sorting.
    keys = [(s.arrival_step, getattr(r, "arrival_time", 0.0) or 0.0, i) for i, (r, s) in enumerate(zip(rows, states))]
    fcfs = sorted(range(n), key=keys.__getitem__)
    if fcfs != list(range(n)):
        rows, states, is_running = [rows[i] for i in fcfs], [states[i] for i in fcfs], [is_running[i] for i in fcfs]
    running_mask = np.fromiter(is_running, dtype=bool, count=n)
    arrivals = np.fromiter([s.arrival_step for s in states], dtype=np.int64, count=n)
    promoted = np.fromiter([s.promoted_steps_left for s in states], dtype=np.int64, count=n)
    overtakes = None
    if admissions is not None and guard.enabled and guard.max_overtakes > 0:
        bases = np.fromiter([s.overtake_base for s in states], dtype=np.int64, count=n)
        overtakes = np.where(running_mask, 0, admissions.admitted_after(arrivals) - bases)
    table = ordering.Candidates(
        scores=np.fromiter([s.score for s in states], dtype=np.float64, count=n),
        running=running_mask,
        num_tokens=np.ones(n, dtype=np.int64),
        priority=np.fromiter([r.priority for r in rows], dtype=np.int64, count=n),
        idle_steps=np.maximum(step - 1 - np.fromiter([s.last_run_step for s in states], dtype=np.int64, count=n), 0),
        promoted_steps_left=promoted,
        protected=np.fromiter([s.protected for s in states], dtype=bool, count=n),
        overtakes=overtakes,
        arrival_steps=arrivals,
    )
    ranked = ordering.priority_order(table, guard)
    for k in np.flatnonzero(ranked.promoted_steps_left != promoted).tolist():
        if states[k] is not _NO_STATE:
            states[k].promoted_steps_left = int(ranked.promoted_steps_left[k])
            states[k].protected = True
    decision = ordering.take_batch(table, ranked, max(1, max_num_seqs), max(1, n))

    # Put each list in the decided order.
    position = {id(rows[i]): p for p, i in enumerate(ranked.order.tolist())}
    changed = False
    for items in lists:
        ordered = sorted(items, key=lambda r: position[id(r)])
        if any(a is not b for a, b in zip(ordered, items)):
            if isinstance(items, list):
                items[:] = ordered
            else:  # a deque (vLLM's request queue): no slice assignment
                items.clear()
                items.extend(ordered)  # type: ignore[attr-defined]
            changed = True

    idle_room, overtake_room = guard.headroom(table.idle_steps, table.overtake_counts(), ranked.promoted_steps_left)
    next_step = step + idle_room
    next_admissions = (admissions.total + overtake_room) if admissions is not None and overtakes is not None else NEVER
    return Table(rows, table, decision), changed, next_step, next_admissions


def order_is_fragile(table: Table) -> bool:
    """Whether removing or appending a row can reorder the others, so a membership change calls for ranking again.

    An unscored row keeps its first-come-first-served slot among the rows, so
    when one waits ahead of a scored row, removing a row shifts the slots.
    Explicit priorities make an appended row's place depend on the others.
    Otherwise (the common case: the unscored rows are the latest arrivals)
    a list stays ranked when its head is admitted or a row leaves, and a new
    unscored arrival is already in its place at the back.
    """
    rows = table.rows
    if any(r.priority for r in rows):
        return True
    scored_after_unscored, seen_unscored = False, False
    for r in rows:  # in arrival order
        if math.isnan(state_of(r).score):
            seen_unscored = True
        elif seen_unscored:
            scored_after_unscored = True
            break
    return scored_after_unscored


class RankedTable:
    """When one table (a group of the engine's lists) must be ranked again.

    The order can change when scores arrive, a request is prepended (a
    preempted request returns at the front, wherever its rank puts it), a
    request with an explicit priority or a score arrives, membership changes
    while the order is fragile (`order_is_fragile`), or the starvation guard
    can promote someone (`StarvationGuard.headroom`). Otherwise ranking again
    would change nothing, and the engine's step skips it.
    """

    def __init__(self) -> None:
        self.stale = True
        self.fragile = True
        self.next_step = NEVER
        self.next_admissions = NEVER
        self.last: Table | None = None

    def needs_rank(self, step: int, admitted: int) -> bool:
        return self.stale or step >= self.next_step or admitted >= self.next_admissions

    def reorder(
        self,
        lists: Sequence[MutableSequence[Any]],
        running: Sequence[bool],
        step: int,
        guard: ordering.StarvationGuard,
        max_num_seqs: int,
        admissions: AdmissionLog | None = None,
    ) -> bool:
        """Rank the lists (see `rank_table`); True if any changed."""
        table, changed, self.next_step, self.next_admissions = rank_table(lists, running, step, guard, max_num_seqs, admissions)
        self.last = table
        self.stale = False
        self.fragile = order_is_fragile(table)
        return changed


def record_run(state: RankState, step: int) -> bool:
    """The request ran in `step`: its idle count restarts and it spends one step of any promotion.

    NextBatch's counter update for a scheduled candidate, kept lazily.
    Returns True if that ended its promotion (its band, and so the order, changes).
    """
    state.last_run_step = step
    if state.promoted_steps_left > 0:
        state.promoted_steps_left -= 1
        return state.promoted_steps_left == 0
    return False
