"""LTRRequestQueue: vLLM's FCFS waiting queue, re-ranked when the ranking can change.

Modelled on vLLM's own `vllm/v1/core/sched/request_queue.py`. Every mutation
(add, pop, prepend, remove) is inherited from `FCFSRequestQueue`, so between
two `rank()` calls the queue behaves exactly like FCFS, including the
scheduler's skip-and-prepend dance inside one step. `rank()` only permutes:
the scheduler calls it at the start of each step, once the latest scores have
been applied. With no scores it is a no-op, so a hook without a sidecar is
FCFS by construction rather than by imitation.

Ranking costs O(n) per call, so the queue only re-ranks when the order can
have changed: scores arrived (`invalidate`), a request was prepended (a
preempted request returns at the front, wherever its rank puts it), one with
an explicit priority arrived, or the starvation guard is due to promote
someone. Popping and removing keep a ranked queue ranked; a new unscored
request appended at the back is already in its FCFS slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request

from .. import ordering
from . import ranking


class LTRRequestQueue(FCFSRequestQueue):
    """A FCFS deque whose order `rank()` rewrites to shortest-predicted-first."""

    def __init__(self, requests: Iterable[Request] = ()) -> None:
        super().__init__(requests)
        self._stale = True
        self._next_promotion_step = ranking.NEVER
        self._next_promotion_admissions = ranking.NEVER

    def invalidate(self) -> None:
        """The order may have changed (e.g. new scores): the next `rank()` recomputes it."""
        self._stale = True

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if request.priority != 0 or not math.isnan(ranking.state_of(request).score):
            self._stale = True  # an explicit priority or a score may place it ahead of others

    def prepend_request(self, request: Request) -> None:
        super().prepend_request(request)
        self._stale = True

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        super().prepend_requests(requests)
        self._stale = True

    def rank(self, step: int, guard: ordering.StarvationGuard, admissions: ranking.AdmissionLog | None = None) -> bool:
        """Reorder for scheduling step `step` with the shared policy if it can have changed; True if it did."""
        admitted = admissions.total if admissions is not None else 0
        if not self._stale and step < self._next_promotion_step and admitted < self._next_promotion_admissions:
            return False
        result = ranking.rank(self, step, guard, admissions)
        self._stale = False
        self._next_promotion_step = result.next_promotion_step
        self._next_promotion_admissions = result.next_promotion_admissions
        if result.items is None:
            return False
        self.clear()
        self.extend(result.items)
        return True
