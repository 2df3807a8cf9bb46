"""Driving the engine: replay a workload's requests at their arrival times and record when each starts and finishes."""

from __future__ import annotations

import dataclasses

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clocks import StepClock, WallClock
from .engine import engine_core
from .policies import Policy
from .trace import TraceRequest


@dataclass
class Record:
    """One request of one run. Times in seconds from the run's start."""

    request_id: str
    sharegpt_id: str
    arrival: float
    prompt_tokens: int
    recorded_tokens: int
    max_tokens: int
    priority: int
    first_token: float | None = None
    finish: float | None = None
    # The same moments in engine steps (steps run before the request was
    # added; the step that produced its first / last token). Latency in steps
    # does not move with the machine's speed from one run to the next.
    arrival_step: int = 0
    first_token_step: int | None = None
    finish_step: int | None = None
    output_tokens: int = 0
    # LTR only: the sidecar's score when the request was first scheduled
    # (None: it was admitted unscored, in its FCFS slot).
    score_at_admission: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def latency_steps(self) -> int | None:
        return None if self.finish_step is None else self.finish_step - self.arrival_step


@dataclass
class Run:
    policy: str
    workload: str  # "burst", "online@0.8", "synthetic"
    records: list[Record]
    wall_s: float
    steps: int
    aborted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_workload(
    llm: Any,
    policy: Policy,
    workload: str,
    requests: list[TraceRequest],
    arrivals: list[float],
    timeout_s: float,
    progress: bool,
    stop_when: Callable[[list[Record], float], bool] | None = None,
    clock: WallClock | StepClock | None = None,
) -> Run:
    """Replay `requests` at `arrivals` (seconds from now), stepping the engine until all finish, or `stop_when` or the timeout says stop.

    Before each step every request whose arrival time has passed is added;
    an idle engine waits for the next arrival. Latency = finish - arrival,
    where arrival is the planned time: a request that arrives during a step
    waits for that step like one sent to a busy server. Times are on `clock`
    (default: the wall clock); `timeout_s` is always wall time.
    """
    from tqdm import tqdm
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from ltr_client.vllm import ranking

    engine = llm.llm_engine
    scheduler = engine_core(llm).scheduler
    is_ltr = getattr(scheduler, "scorer", None) is not None
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    records = {
        f"r{i:05d}": Record(
            f"r{i:05d}",
            r.sharegpt_id,
            arrivals[i],
            len(r.prompt_ids),
            r.recorded_tokens,
            r.max_tokens,
            policy.priority(r) if policy.priority else 0,
        )
        for i, r in enumerate(requests)
    }
    ids = list(records)
    added: list[str] = []
    internal_id: dict[str, str] = {}  # vLLM appends a random suffix to each request id
    # The engine's Request objects, whose rank state outlives their stay in
    # the scheduler (a request admitted and finished in one step leaves it
    # before the harness can look).
    engine_requests: dict[str, Any] = {}
    bar = tqdm(total=len(requests), desc=f"{policy.name:>12s} {workload:<12s}", unit="req", disable=not progress, file=sys.stderr, leave=True)
    steps = next_i = 0
    aborted = 0
    # The scheduler's wait counters run for the engine's life, across workloads: count from here.
    waits0 = scheduler.ltr_score_waits if is_ltr else 0
    waited_s = waited0_s = scheduler.ltr_score_wait_s if is_ltr else 0.0
    clock = clock or WallClock()
    wall0 = time.perf_counter()
    while True:
        now = clock.now()
        while next_i < len(order) and arrivals[order[next_i]] <= now:
            i = order[next_i]
            rec = records[ids[i]]
            params = SamplingParams(
                max_tokens=rec.max_tokens,
                ignore_eos=True,  # every policy generates exactly max_tokens: identical work
                temperature=0,
                detokenize=False,  # random weights: the text is noise, and decoding it costs CPU
                output_kind=RequestOutputKind.DELTA,
            )
            prompt = {"prompt_token_ids": list(requests[i].prompt_ids)}
            internal_id[rec.request_id] = engine.add_request(rec.request_id, prompt, params, priority=rec.priority)
            if is_ltr:
                engine_requests[rec.request_id] = scheduler.requests.get(internal_id[rec.request_id])
            rec.arrival_step = steps
            added.append(rec.request_id)
            next_i += 1
        if not engine.has_unfinished_requests():
            if next_i == len(order):
                break
            clock.wait_until(arrivals[order[next_i]])
            continue
        if time.perf_counter() - wall0 > timeout_s or (stop_when is not None and stop_when(list(records.values()), now)):
            unfinished = [r for r in added if records[r].finish is None]
            engine.abort_request(unfinished)
            aborted = len(unfinished) + len(order) - next_i  # the never-added ones count as aborted too
            break
        outputs = engine.step()
        steps += 1
        if is_ltr and scheduler.ltr_score_wait_s != waited_s:
            if not policy.free_score_waits:
                clock.waited(scheduler.ltr_score_wait_s - waited_s)
            waited_s = scheduler.ltr_score_wait_s
        clock.stepped()
        t = clock.now()
        for out in outputs:
            rec = records[out.request_id]
            new_tokens = len(out.outputs[0].token_ids) if out.outputs else 0
            if rec.first_token is None and new_tokens:
                rec.first_token, rec.first_token_step = t, steps
                if is_ltr:
                    # The step's schedule() applied the scores that had arrived before ranking: this is the score it admitted the request with.
                    score = getattr(getattr(engine_requests.get(rec.request_id), ranking.STATE_ATTR, None), "score", math.nan)
                    rec.score_at_admission = None if math.isnan(score) else score
            rec.output_tokens += new_tokens
            if out.finished:
                rec.finish, rec.finish_step = t, steps
                bar.update(1)
    wall = time.perf_counter() - wall0
    bar.close()
    extra: dict[str, Any] = {"ltr": is_ltr}
    if is_ltr:
        extra["score_waits"] = scheduler.ltr_score_waits - waits0
        extra["score_wait_s"] = scheduler.ltr_score_wait_s - waited0_s
        extra["score_waits_on_clock"] = not policy.free_score_waits or isinstance(clock, WallClock)
        if scheduler.scorer is not None:
            # Since the engine started (warm-up requests included): calls, failures, retries, requests given up on.
            extra["scorer"] = dataclasses.asdict(scheduler.scorer.stats)
            extra["scorer_seconds_per_prompt"] = scheduler.scorer.sizer.seconds_per_prompt
    return Run(policy.name, workload, list(records.values()), wall, steps, aborted, extra)
