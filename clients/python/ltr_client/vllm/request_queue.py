"""LTRRequestQueue: vLLM's FCFS waiting queue, re-ranked when the ranking can change.

Modelled on vLLM's own `vllm/v1/core/sched/request_queue.py`. Every mutation
(add, pop, prepend, remove) is inherited from `FCFSRequestQueue`, so between
two rankings the queue behaves exactly like FCFS, including the scheduler's
skip-and-prepend dance inside one step. The scheduler ranks its queues (and,
with rank preemption, the running list) as one candidate table at the start
of each step (`ranking.RankedTable`), once the latest scores have been
applied. With no scores the order is FCFS, so a hook without a sidecar is
FCFS by construction rather than by imitation.

A queue only tells its table when its order may have changed: a request was
prepended (a preempted request returns at the front, wherever its rank puts
it), one with an explicit priority or a score arrived, or, while the order is
fragile (`ranking.order_is_fragile`), any request came or went. Otherwise
popping and removing keep a ranked queue ranked, and a new unscored request
appended at the back is already in its first-come-first-served slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request

from . import ranking


class LTRRequestQueue(FCFSRequestQueue):
    """A FCFS deque whose order the scheduler's `ranking.RankedTable` rewrites to shortest-predicted-first."""

    def __init__(self, requests: Iterable[Request] = (), table: ranking.RankedTable | None = None) -> None:
        super().__init__(requests)
        # Shared by the queues ranked together (waiting and kv_holding_waiting).
        self.table = table if table is not None else ranking.RankedTable()

    def invalidate(self) -> None:
        """The order may have changed (e.g. new scores): the next ranking recomputes it."""
        self.table.stale = True

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if self.table.fragile or request.priority != 0 or not math.isnan(ranking.state_of(request).score):
            self.table.stale = True  # an explicit priority or a score may place it ahead of others

    def pop_request(self) -> Request:
        request = super().pop_request()
        if self.table.fragile:
            self.table.stale = True
        return request

    def prepend_request(self, request: Request) -> None:
        super().prepend_request(request)
        self.table.stale = True

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        super().prepend_requests(requests)
        self.table.stale = True

    def remove_request(self, request: Request) -> None:
        super().remove_request(request)
        if self.table.fragile:
            self.table.stale = True

    def remove_requests(self, requests: Iterable[Request]) -> None:
        super().remove_requests(requests)
        if self.table.fragile:
            self.table.stale = True
