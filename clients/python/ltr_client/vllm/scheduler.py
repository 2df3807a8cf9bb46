"""LTRScheduler: vLLM's V1 scheduler, serving the shortest predicted jobs first.

Load it with `--scheduler-cls ltr_client.vllm.LTRScheduler`. It reuses all of
vLLM's scheduling mechanics (budgets, KV allocation, chunked prefill,
preemption) and changes only *order*, at three points:

1. `add_request` hands the prompt to a background scorer (no network, no
   decoding on the engine thread);
2. `schedule` applies the scores that have arrived (waiting for those in
   flight first, at most `score_wait_ms`, when it must choose which waiting
   requests get free slots), puts every queue vLLM admits from (`waiting`
   and `kv_holding_waiting`, which vLLM drains first) and the running list
   in the shared policy's order (`ranking.RankedTable`: one candidate table,
   `ltr_client.ordering`'s decision, the same as NextBatch's), then runs
   vLLM's own `schedule`. Sorting `running` best-first makes vLLM's FCFS
   victim choice, `running.pop()`, preempt the lowest-ranked running request
   under KV-cache pressure, and gives the best-ranked requests the token
   budget first;
3. after vLLM's `schedule`, the requests that ran get their starvation
   counters updated, and first admissions go into the `AdmissionLog` that
   the guard's overtake trigger counts from.

With `preempt` on (off by default), a full batch also gives way as in the
paper's Algorithm 1: running and waiting requests are ranked as one table,
and before vLLM schedules, the running requests outside the decision's
`max_num_seqs` prefix are preempted (vLLM's own preemption: blocks freed,
recomputed on resume) for the better-ranked waiting ones; a protected
request (promoted by the guard) is never preempted for rank. This matters most
right after a burst, when the first batch is admitted before any score has
arrived: without it, long requests admitted unranked hold their slots to the
end. `score_wait_ms` is the other remedy: the step waits (bounded) for the
burst's scores instead of admitting it unranked. With `preempt` off, running
requests keep their slots until they finish unless KV memory runs out, as in
stock vLLM; on the CPU benchmark that was the better default (preemption's
recomputation cost more than it gained).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from . import ranking
from .config import LTRConfig
from .request_queue import LTRRequestQueue
from .scorer import BackgroundScorer, make_client
from .tokenizer import detokenizer_factory

log = logging.getLogger(__name__)

UNSCORED_WARNING_INTERVAL_S = 60.0
VLLM_LOG_HANDLER = "vllm"  # the handler's key in vLLM's DEFAULT_LOGGING_CONFIG


def _log_through_vllm() -> None:
    """Send the `ltr_client` loggers' records to vLLM's log handler.

    vLLM gives only its own `vllm` logger a handler (and stops its records at
    it). Records of other libraries' loggers reach the root logger, which in
    an engine has no handler, so Python prints them bare, without a time or a
    level, or a host's logging setup drops them. The hook's warnings (a
    sidecar down, requests left unscored) belong in the engine's log, in its
    format, beside the engine's own. Records still propagate: the root logger
    prints nothing more unless the host gave it a handler of its own.
    """
    ours, theirs = logging.getLogger("ltr_client"), logging.getLogger("vllm")
    # Only the handler vLLM's logging config made (dictConfig names it after
    # its key), not ones a host or a test runner attached to vLLM's logger.
    handlers = [h for h in theirs.handlers if h.get_name() == VLLM_LOG_HANDLER]
    for handler in handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    if handlers and ours.level == logging.NOTSET:
        ours.setLevel(theirs.getEffectiveLevel())


def _async_scheduling(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    vllm_config = kwargs.get("vllm_config", args[0] if args else None)
    return bool(getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", False))


class LTRScheduler(Scheduler):
    """vLLM's Scheduler with learning-to-rank ordering. Becomes `LTRAsyncScheduler` when async scheduling is on."""

    def __new__(cls, *args: Any, **kwargs: Any) -> LTRScheduler:
        # One name for the command line: vLLM picks AsyncScheduler itself only
        # when no scheduler_cls is given, so the hook makes the same choice.
        if cls is LTRScheduler and _async_scheduling(args, kwargs):
            cls = LTRAsyncScheduler
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ltr_config = LTRConfig.load(self.vllm_config.additional_config)
        self._guard = self.ltr_config.guard
        self._ltr_step = 0
        # Only the overtake trigger of the guard reads it; empty otherwise.
        self._admissions = ranking.AdmissionLog()
        # The queues vLLM admits from, ranked as one table (with rank
        # preemption, the running list too), and otherwise the running list alone.
        self._queue_table = ranking.RankedTable()
        self._running_table = ranking.RankedTable()
        self._running_seen: tuple[int, Request | None] = (0, None)
        self._warned_no_state = False
        # Requests preempted for rank (not for KV memory), for tests and benchmarks.
        self.ltr_preemptions = 0
        # Steps that waited for scores (score_wait_ms), and the seconds they waited.
        self.ltr_score_waits = 0
        self.ltr_score_wait_s = 0.0
        # Waits that ran out before every score came: the sidecar is slower than score_wait_ms allows.
        self.ltr_score_wait_timeouts = 0
        self._waited_through = 0  # the scorer's submission count when the last wait began
        # The hook's queue is FCFS underneath and does priority and rank
        # itself. vLLM's PRIORITY branch would pick preemption victims by
        # (priority, arrival) alone, ignoring the rank, so the hook always
        # takes the FCFS branch (victim = running[-1]) and keeps `running`
        # sorted so that the last one is the lowest-ranked.
        self.policy = SchedulingPolicy.FCFS
        self.waiting = LTRRequestQueue(table=self._queue_table)
        self.kv_holding_waiting = LTRRequestQueue(table=self._queue_table)
        # Requests the scorer gave up on (they run first come first served),
        # and when the last warning about them was logged.
        self.ltr_unscored = 0
        self._unscored_unreported = 0
        self._unscored_warned_at = -math.inf
        self.scorer: BackgroundScorer | None = None
        _log_through_vllm()
        if self.ltr_config.enabled:
            cfg = self.ltr_config
            self.scorer = BackgroundScorer(
                make_client(cfg),
                detokenizer_factory(self.vllm_config.model_config),
                max_batch=cfg.max_batch,
                max_prompt_tokens=cfg.max_prompt_tokens,
                deadline_s=cfg.deadline_ms / 1000,
                retries=cfg.score_retries,
                still_waiting=self._still_waiting,
                on_unscored=self._report_unscored,
            )
        log.info("ltr: scheduler hook %s (%s)", "on" if self.scorer else "off", self.ltr_config)

    def add_request(self, request: Request) -> None:
        is_new = request.request_id not in self.requests  # not a streaming-session update
        if is_new:
            # Before the super call, which enqueues it: the queue reads its state.
            is_new = self._attach_state(request)
        super().add_request(request)
        if is_new and self.scorer is not None and request.prompt_token_ids:
            self.scorer.submit(request.request_id, request.prompt_token_ids)

    def _attach_state(self, request: Request) -> bool:
        try:
            step = self._ltr_step
            setattr(request, ranking.STATE_ATTR, ranking.RankState(last_run_step=step, arrival_step=step))
            return True
        except AttributeError:
            # A vLLM whose Request takes no new attributes (__slots__): the
            # request stays unscored, which is FCFS, rather than failing.
            if not self._warned_no_state:
                self._warned_no_state = True
                log.warning("ltr: cannot attach rank state to vLLM requests; scheduling stays FCFS")
            return False

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        self._ltr_step += 1
        step = self._ltr_step
        if self.scorer is not None:
            self._wait_for_contested_scores()
            self._apply_scores()
        self._rank(step)
        if self.ltr_config.preempt and self.running and (self.waiting or self.kv_holding_waiting):
            self._preempt_for_rank(step)
        output = super().schedule(throttle_prefills)
        requests = self.requests
        for request_id in output.num_scheduled_tokens:
            state = getattr(requests.get(request_id), ranking.STATE_ATTR, None)
            if state is not None and ranking.record_run(state, step):
                # Its promotion ended: it drops to its score's band.
                self._queue_table.stale = self._running_table.stale = True
        if self._guard.enabled and self._guard.max_overtakes > 0:
            # Every admission (waiting -> running), a preempted request's return included, as NextBatch counts them.
            admitted = [r.req_id for r in output.scheduled_new_reqs]
            admitted.extend(output.scheduled_cached_reqs.resumed_req_ids)
            for request_id in admitted:
                state = getattr(requests.get(request_id), ranking.STATE_ATTR, None)
                if state is not None:
                    self._admissions.record(state.arrival_step)
            if len(self._admissions) > 1024 + 2 * len(requests):
                self._prune_admissions()
        return output

    def _rank(self, step: int) -> None:
        """Put the queues vLLM admits from, and the running list, in the policy's order, if it can have changed."""
        running = self.running
        preempt = self.ltr_config.preempt
        # Admissions append to `running` and change its tail; finishing and
        # preemption only remove, which keeps a ranked list ranked unless its
        # order is fragile. With rank preemption any change counts: a freed
        # slot changes who must give way.
        seen = (len(running), running[-1] if running else None)
        if seen[0] != self._running_seen[0] or seen[1] is not self._running_seen[1]:
            table = self._queue_table if preempt else self._running_table
            if preempt or seen[1] is not self._running_seen[1] or table.fragile:
                table.stale = True
            self._running_seen = seen
        queues = [self.kv_holding_waiting, self.waiting]
        admitted = self._admissions.total
        if self._queue_table.needs_rank(step, admitted):
            lists: list[Any] = [running, *queues] if preempt else queues
            flags = [True, False, False] if preempt else [False, False]
            self._queue_table.reorder(lists, flags, step, self._guard, self.max_num_running_reqs, self._admissions)
        if not preempt and running and self._running_table.needs_rank(step, admitted):
            self._running_table.reorder([running], [True], step, self._guard, self.max_num_running_reqs)
        if running:
            self._running_seen = (len(running), running[-1])

    def _prune_admissions(self) -> None:
        live = (getattr(r, ranking.STATE_ATTR, None) for r in self.requests.values())
        self._admissions.forget_before(min((st.arrival_step for st in live if st is not None), default=self._ltr_step))

    def _preempt_request(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Every preemption comes through here: KV-cache pressure inside vLLM's
        # schedule, and rank preemption below. The request is back in the
        # queue; its overtake count restarts from now.
        super()._preempt_request(request, *args, **kwargs)
        state = getattr(request, ranking.STATE_ATTR, None)
        if state is not None and self._guard.max_overtakes > 0:
            state.overtake_base = int(self._admissions.admitted_after(np.array([state.arrival_step]))[0])

    def _preempt_for_rank(self, step: int) -> None:
        """Preempt the running requests that the decision leaves outside the batch, for better-ranked waiting ones."""
        table = self._queue_table.last
        if table is None:
            return
        d, rows = table.decision, table.rows
        # Only waiting requests vLLM can schedule now (not waiting for a
        # grammar or remote KV) can use a freed slot: at most that many give way.
        takers = sum(
            1 for i in d.scheduled.tolist() if not table.candidates.running[i] and rows[i].status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        )
        room = takers - (self.max_num_running_reqs - len(self.running))
        if room <= 0 or len(d.preempted) == 0:
            return
        now = time.monotonic()
        preempted = False
        for i in d.preempted.tolist()[::-1][:room]:  # the worst-ranked first
            victim = rows[i]
            if not self._request_blocks_can_be_freed(victim):
                continue  # a KV connector may still write its blocks: leave it be
            self.running.remove(victim)
            self._preempt_request(victim, now, drop_stale_output=self.requires_kv_delivery)
            self.ltr_preemptions += 1
            preempted = True
        if preempted:
            self._rank(step)  # the victims are back in the queue: put them in their places

    def _wait_for_contested_scores(self) -> None:
        """Give scores in flight up to `score_wait_ms` to arrive, if this step must choose who gets the free slots."""
        scorer = self.scorer
        assert scorer is not None
        wait_s = self.ltr_config.score_wait_ms / 1000
        if wait_s <= 0 or scorer.in_flight <= 0 or scorer.submitted <= self._waited_through:
            return
        free_slots = self.max_num_running_reqs - len(self.running)
        # With room for every waiting request the order decides nothing: no wait.
        if free_slots <= 0 or len(self.waiting) <= free_slots or scorer.client.breaker.is_open:
            return
        self._waited_through = scorer.submitted
        t0 = time.perf_counter()
        idle = scorer.wait_idle(wait_s)
        self.ltr_score_wait_s += time.perf_counter() - t0
        self.ltr_score_waits += 1
        if not idle:
            self.ltr_score_wait_timeouts += 1
            # Once, then every 1,000th: a slow sidecar would otherwise log on every burst.
            if self.ltr_score_wait_timeouts % 1000 == 1:
                log.warning(
                    "ltr: a step waited score_wait_ms=%g for %d scores in flight and went on without them "
                    "(timeouts so far: %d); the sidecar scores slower than the wait allows",
                    self.ltr_config.score_wait_ms,
                    scorer.in_flight,
                    self.ltr_score_wait_timeouts,
                )

    def _still_waiting(self, request_id: str) -> bool:
        # Called on the scorer thread: a dict lookup and an attribute read,
        # both atomic. A score for a request already running or finished
        # would only cost the sidecar time the waiting ones need.
        # With rank preemption on, a running request's score decides whether it keeps its slot.
        request = self.requests.get(request_id)
        if request is None or request.is_finished():
            return False
        return self.ltr_config.preempt or request.status != RequestStatus.RUNNING

    def _report_unscored(self, count: int, reason: str) -> None:
        """The scorer gave up on `count` requests (0: it gave up on scoring altogether). Scorer thread."""
        self.ltr_unscored += count
        self._unscored_unreported += count
        now = time.monotonic()
        # The first, then at most one a minute: a dead sidecar must show, not flood the log.
        if count and now - self._unscored_warned_at < UNSCORED_WARNING_INTERVAL_S:
            return
        self._unscored_warned_at = now
        if count == 0:
            log.warning("ltr: %s; scheduling stays first come first served", reason)
        else:
            log.warning(
                "ltr: requests without a score, scheduled first come first served: %d (%s); %d in all so far",
                self._unscored_unreported,
                reason,
                self.ltr_unscored,
            )
        self._unscored_unreported = 0

    def _apply_scores(self) -> None:
        assert self.scorer is not None
        for request_id, score in self.scorer.drain():
            request = self.requests.get(request_id)  # gone if it finished before its score came
            state = getattr(request, ranking.STATE_ATTR, None)
            if state is None:
                continue
            state.score = score
            self._queue_table.stale = True
            if request.status == RequestStatus.RUNNING:
                self._running_table.stale = True

    def shutdown(self) -> None:
        super().shutdown()
        if self.scorer is not None:
            self.scorer.close()


class LTRAsyncScheduler(LTRScheduler, AsyncScheduler):
    """LTRScheduler on top of vLLM's AsyncScheduler (`--async-scheduling`, vLLM's default where supported)."""
