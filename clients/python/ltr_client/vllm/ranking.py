"""Per-request rank state, and ranking a list of requests with the shared policy.

No vLLM import: this works on any object with a `priority` attribute, so it is
tested and benchmarked without an engine.

The order itself is `ltr_client.ordering.priority_order`, the function the
sidecar's NextBatch runs, so the hook and the RPC cannot drift apart. One
difference is deliberate: NextBatch sorts unscored candidates after scored
ones, while here a request with no score yet keeps its first-come-first-served
slot and only the scored requests are permuted among the other slots. Scores
arrive asynchronously, so every request starts unscored; sorting it last would
delay it behind every scored request, and a request whose score never comes
(sidecar down) would wait longer than FCFS would make it. With no scores at
all the list is left untouched, which is exactly FCFS.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from .. import ordering

# The attribute that carries a request's RankState. A plain attribute on the
# engine's Request object rather than a dict in the scheduler: it dies with the
# request, so there is nothing to clean up on any of vLLM's many finish paths.
STATE_ATTR = "ltr_state"
NEVER = math.inf

T = TypeVar("T")


@dataclass(slots=True)
class RankState:
    """What the policy needs to know about one request, beyond its priority."""

    # Higher = shorter predicted output; NaN until the sidecar's score arrives.
    score: float = math.nan
    # The hook's step counter when the request last ran, or when it arrived.
    # idle_steps is derived from it (step - 1 - mark), so a waiting request
    # costs nothing per step: only the requests that ran get an update.
    mark: int = 0
    # Executed steps left in the starvation guard's top band.
    promoted_steps_left: int = 0
    # Set when the guard first promotes it: from then on it is never preempted
    # for rank (KV pressure still can). Otherwise, with preemption on, a long
    # request would run one quantum per promotion and wait out the threshold
    # again in between, and the guard would bound nothing.
    protected: bool = False
    # The scheduler's step counter when it arrived, and its overtake count
    # when it last entered the queue (nonzero only after a preemption): see
    # AdmissionLog.
    arrival_step: int = 0
    overtake_base: int = 0
    # Set at its first admission, which is what AdmissionLog records.
    admitted: bool = False


_NO_STATE = RankState()


class AdmissionLog:
    """Arrival steps of the admitted requests: how many later arrivals overtook a waiting request.

    Every admitted request that arrived in a later step than a waiting one
    started first although it came later, so the overtake count is a rank
    query, with no per-step work for the requests that wait. Requests that
    arrive between the same two steps (a burst) do not overtake one another:
    their first-come-first-served order is an accident of submission. Only
    first admissions count. A preempted request's count restarts
    (`RankState.overtake_base`), so the admissions it saw while running are
    not held against the others.
    """

    def __init__(self) -> None:
        self._steps: list[int] = []  # sorted; steps before every live request's arrival are pruned
        self.total = 0  # admissions recorded, pruned or not

    def record(self, arrival_step: int) -> None:
        bisect.insort(self._steps, arrival_step)
        self.total += 1

    def admitted_after(self, arrival_steps: np.ndarray) -> np.ndarray:
        """For each arrival step, how many admitted requests arrived in a later step."""
        return len(self._steps) - np.searchsorted(np.asarray(self._steps, dtype=np.int64), arrival_steps, side="right")

    def forget_before(self, arrival_step: int) -> None:
        """Drop entries before `arrival_step`: no live request arrived earlier."""
        del self._steps[: bisect.bisect_left(self._steps, arrival_step)]

    def __len__(self) -> int:
        return len(self._steps)


def state_of(item: Any) -> RankState:
    """The request's RankState (a shared unscored default if it has none)."""
    return getattr(item, STATE_ATTR, None) or _NO_STATE


@dataclass(frozen=True)
class Ranking(Generic[T]):
    """The result of `rank`."""

    # The new order, or None if the order does not change.
    items: list[T] | None
    # The first step at which the starvation guard could promote one of the
    # items (their idle count reaches the threshold): until then, and unless
    # scores, priorities or membership change, ranking again changes nothing.
    next_promotion_step: float
    # Likewise for the overtake trigger: the AdmissionLog.total at which one
    # of them could first be due.
    next_promotion_admissions: float = NEVER


def rank(
    items: Sequence[T], step: int, guard: ordering.StarvationGuard, admissions: AdmissionLog | None = None
) -> Ranking[T]:
    """Rank `items` for scheduling step `step`.

    Items are first put back in first-come-first-served order: by their
    `arrival_time` when they all have one (vLLM's requests do), else as given.
    The queue holds the previous ranking, and the policy's arrival key must
    mean arrival, or promoted requests would run in rank order instead of
    oldest first. Then explicit priority (lower first, stable); then scored
    items are ordered by `ordering.priority_order` (starvation band, score,
    arrival) within the slots that scored items occupy; unscored items keep
    their FCFS slots. Items newly promoted by the starvation guard get their
    quantum written back to their RankState. `admissions` gives the overtake
    counts of waiting items; without it (the running list) they count zero.
    """
    # This runs on the engine's step path. The lists are short (the running
    # batch, the waiting queue), so it is written to make few numpy calls:
    # their fixed cost, not the per-item work, dominates at these sizes.
    n = len(items)
    if n == 0:
        return Ranking(None, NEVER)
    if not isinstance(items, list):
        items = list(items)  # a deque indexes in O(n)
    states = [getattr(it, STATE_ATTR, None) or _NO_STATE for it in items]
    out: list[T] | None = None
    has_priority = any(it.priority for it in items)  # type: ignore[attr-defined]
    arrivals = [getattr(it, "arrival_time", None) for it in items]
    fcfs_key = None if None in arrivals else arrivals
    if has_priority or fcfs_key is not None:
        # Explicit priority is the primary key for every request, scored or not.
        priorities = [it.priority for it in items]  # type: ignore[attr-defined]
        keys = list(zip(priorities, fcfs_key)) if fcfs_key is not None else priorities
        permutation = sorted(range(n), key=keys.__getitem__)  # stable
        if permutation != list(range(n)):
            items = out = [items[i] for i in permutation]
            states = [states[i] for i in permutation]
    scores = np.fromiter([s.score for s in states], dtype=np.float64, count=n)
    scored = ~np.isnan(scores)
    num_scored = int(np.count_nonzero(scored))
    if num_scored == 0:
        return Ranking(out, NEVER)  # unscored items keep their slots: FCFS (within priority)

    slots: list[int] | None = None
    sub_items, sub_states = items, states
    if num_scored < n:
        slot_arr = np.flatnonzero(scored)
        slots = slot_arr.tolist()
        sub_items, sub_states = [items[i] for i in slots], [states[i] for i in slots]
        scores = scores[slot_arr]
    marks = np.fromiter([s.mark for s in sub_states], dtype=np.int64, count=num_scored)
    promoted = np.fromiter([s.promoted_steps_left for s in sub_states], dtype=np.int64, count=num_scored)
    priority = (
        np.fromiter([it.priority for it in sub_items], dtype=np.int64, count=num_scored)  # type: ignore[attr-defined]
        if has_priority
        else np.zeros(num_scored, dtype=np.int64)
    )
    overtakes = None
    if admissions is not None and guard.max_overtakes > 0:
        arrived = np.fromiter([s.arrival_step for s in sub_states], dtype=np.int64, count=num_scored)
        bases = np.fromiter([s.overtake_base for s in sub_states], dtype=np.int64, count=num_scored)
        overtakes = admissions.admitted_after(arrived) - bases
    candidates = ordering.Candidates(
        scores=scores,
        running=np.zeros(num_scored, dtype=bool),
        num_tokens=np.ones(num_scored, dtype=np.int64),
        priority=priority,
        idle_steps=np.maximum(step - 1 - marks, 0),
        promoted_steps_left=promoted,
        overtakes=overtakes,
    )
    ranked = ordering.priority_order(candidates, guard)
    order_arr, promoted_after = ranked.order, ranked.promoted_steps_left
    next_promotion = next_promotion_admissions = NEVER
    if guard.enabled:
        for k in np.flatnonzero(promoted_after != promoted).tolist():
            sub_states[k].promoted_steps_left = int(promoted_after[k])
            if promoted_after[k] > 0:
                sub_states[k].protected = True
        unpromoted = promoted_after <= 0
        if unpromoted.any() and guard.threshold_steps > 0:
            # idle = step - 1 - mark reaches the threshold at step mark + threshold + 1.
            next_promotion = float(marks[unpromoted].min()) + guard.threshold_steps + 1
        if unpromoted.any() and overtakes is not None:
            # Each admission adds at most one to any count.
            assert admissions is not None
            next_promotion_admissions = float(admissions.total + (guard.max_overtakes - overtakes[unpromoted]).min())

    order = order_arr.tolist()
    if order == list(range(num_scored)):
        return Ranking(out, next_promotion, next_promotion_admissions)
    if slots is None:
        return Ranking([items[i] for i in order], next_promotion, next_promotion_admissions)
    result = list(items)
    for slot, src in zip(slots, order, strict=True):
        result[slot] = items[slots[src]]
    return Ranking(result, next_promotion, next_promotion_admissions)


def _rank_key(item: Any) -> tuple[int, int, float] | None:
    """The policy's sort key (priority, starvation band, -score); None for an unscored item."""
    state = state_of(item)
    if math.isnan(state.score):
        return None
    return (item.priority, 0 if state.promoted_steps_left > 0 else 1, -state.score)


def _protected(item: Any) -> bool:
    return state_of(item).protected


def preemption_victims(running: Sequence[T], waiting: Sequence[T], free_slots: int) -> list[T]:
    """Running items to preempt so that better-ranked waiting items run instead.

    The paper's Algorithm 1 re-ranks running and waiting requests together
    every step; vLLM alone never preempts for order. The best `free_slots`
    scored waiting items take the free slots; each further one, best first,
    displaces the worst-ranked scored running item while it ranks strictly
    better (priority, starvation band, score: the same key as the ordering).
    Unscored items neither preempt nor get preempted, so with no scores this
    returns nothing and scheduling is FCFS. A preempted long request idles
    until the starvation guard promotes it; once promoted it is `protected`
    and keeps its slot to the end, so the guard's bound holds.
    """
    challengers = sorted(k for k in (_rank_key(w) for w in waiting) if k is not None)[max(free_slots, 0) :]
    defenders = sorted(
        ((k, i) for i, r in enumerate(running) if (k := _rank_key(r)) is not None and not _protected(r)), reverse=True
    )
    victims: list[T] = []
    for challenger, (defender, index) in zip(challengers, defenders):
        if not challenger < defender:
            break
        victims.append(running[index])
    return victims


def record_run(state: RankState, step: int) -> bool:
    """The request ran in `step`: its idle count restarts and it spends one step of any promotion.

    Returns True if that ended its promotion (its band, and so the order, changes).
    """
    state.mark = step
    if state.promoted_steps_left > 0:
        state.promoted_steps_left -= 1
        return state.promoted_steps_left == 0
    return False
