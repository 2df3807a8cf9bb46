"""LTRScheduler: vLLM's V1 scheduler, serving the shortest predicted jobs first.

Load it with `--scheduler-cls ltr_client.vllm.LTRScheduler`. It reuses all of
vLLM's scheduling mechanics (budgets, KV allocation, chunked prefill,
preemption) and changes only *order*, at three points:

1. `add_request` hands the prompt to a background scorer (no network, no
   decoding on the engine thread);
2. `schedule` applies the scores that have arrived (waiting for those in
   flight first, at most `score_wait_ms`, when it must choose which waiting
   requests get free slots), re-ranks the waiting queue
   (`LTRRequestQueue.rank`) and the running list with the shared policy, then
   runs vLLM's own `schedule`. Sorting `running` best-first makes vLLM's FCFS
   victim choice, `running.pop()`, preempt the lowest-ranked running request
   under KV-cache pressure, and gives the best-ranked requests the token
   budget first;
3. after vLLM's `schedule`, the requests that ran get their starvation
   counters updated, and first admissions go into the `AdmissionLog` that
   the guard's overtake trigger counts from.

With `preempt` on (off by default), a full batch also gives way as in the
paper's Algorithm 1: before vLLM schedules, the worst-ranked running requests
are preempted (vLLM's own preemption: blocks freed, recomputed on resume) for
better-ranked waiting ones (`ranking.preemption_victims`). This matters most
right after a burst, when the first batch is admitted before any score has
arrived: without it, long requests admitted unranked hold their slots to the
end. `score_wait_ms` is the other remedy: the step waits (bounded) for the
burst's scores instead of admitting it unranked. With `preempt` off, running
requests keep their slots until they finish unless KV memory runs out, as in
stock vLLM; on the CPU benchmark that was the better default (preemption's
recomputation cost more than it gained).
"""

from __future__ import annotations

import itertools
import logging
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
        self._running_tail: Request | None = None
        self._running_stale = True
        self._running_next_promotion_step = ranking.NEVER
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
        self.waiting = LTRRequestQueue()
        self.scorer: BackgroundScorer | None = None
        if self.ltr_config.enabled:
            cfg = self.ltr_config
            self.scorer = BackgroundScorer(
                make_client(cfg),
                detokenizer_factory(self.vllm_config.model_config),
                max_batch=cfg.max_batch,
                max_prompt_tokens=cfg.max_prompt_tokens,
                deadline_s=cfg.deadline_ms / 1000,
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
            setattr(request, ranking.STATE_ATTR, ranking.RankState(mark=step, arrival_step=step))
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
        self.waiting.rank(step, self._guard, self._admissions)
        self._rank_running(step)
        if self.ltr_config.preempt and self.running and self.waiting:
            self._preempt_for_rank(step)
        output = super().schedule(throttle_prefills)
        requests = self.requests
        count_overtakes = self._guard.max_overtakes > 0
        for request_id in output.num_scheduled_tokens:
            state = getattr(requests.get(request_id), ranking.STATE_ATTR, None)
            if state is None:
                continue
            if ranking.record_run(state, step):
                self._running_stale = True  # its promotion ended: it drops to its score's band
            if count_overtakes and not state.admitted:
                state.admitted = True
                self._admissions.record(state.arrival_step)
        if count_overtakes and len(self._admissions) > 1024 + 2 * len(requests):
            self._prune_admissions()
        return output

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

    def _rank_running(self, step: int) -> None:
        """Keep `running` best-first, re-ranking only when its order can have changed."""
        running = self.running
        if not running:
            return
        # Admissions append to `running` and change its tail; finishing and
        # preemption only remove, which keeps a ranked list ranked.
        if not self._running_stale and running[-1] is self._running_tail and step < self._running_next_promotion_step:
            return
        result = ranking.rank(running, step, self._guard)
        if result.items is not None:
            running[:] = result.items
        self._running_tail = running[-1]
        self._running_stale = False
        self._running_next_promotion_step = result.next_promotion_step

    def _preempt_for_rank(self, step: int) -> None:
        """Preempt the running requests that better-ranked waiting ones should replace this step."""
        # Only the queue's head can win a slot this step, and only requests
        # that vLLM could schedule now (not waiting for a grammar or remote KV).
        head = [
            r
            for r in itertools.islice(self.waiting, self.max_num_running_reqs)
            if r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        ]
        victims = ranking.preemption_victims(self.running, head, self.max_num_running_reqs - len(self.running))
        now = time.monotonic()
        for victim in victims:
            if not self._request_blocks_can_be_freed(victim):
                continue  # a KV connector may still write its blocks: leave it be
            self.running.remove(victim)
            self._preempt_request(victim, now, drop_stale_output=self.requires_kv_delivery)
            self.ltr_preemptions += 1
        if victims:
            self.waiting.rank(step, self._guard, self._admissions)  # the victims are back in the queue: put them in their places

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

    def _apply_scores(self) -> None:
        assert self.scorer is not None
        for request_id, score in self.scorer.drain():
            request = self.requests.get(request_id)  # gone if it finished before its score came
            state = getattr(request, ranking.STATE_ATTR, None)
            if state is None:
                continue
            state.score = score
            if request.status == RequestStatus.RUNNING:
                self._running_stale = True
            else:
                self.waiting.invalidate()

    def shutdown(self) -> None:
        super().shutdown()
        if self.scorer is not None:
            self.scorer.close()


class LTRAsyncScheduler(LTRScheduler, AsyncScheduler):
    """LTRScheduler on top of vLLM's AsyncScheduler (`--async-scheduling`, vLLM's default where supported)."""
