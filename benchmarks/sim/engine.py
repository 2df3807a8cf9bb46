"""Continuous batching, one engine step at a time, ordered by the shared policy (`ltr_client.ordering`).

It mirrors what the vLLM hook does with its default settings (`preempt` off):

- every step, the waiting queue (rows in arrival order) is ordered by
  `ordering.priority_order`, the function NextBatch and the hook call: a
  request whose score has not arrived keeps its FCFS slot there;
- the guard's counters are the hook's: a waiting request's idle steps count
  from the step it arrived in (or last ran), a promotion lasts `quantum`
  executed steps, and overtakes count admitted requests that arrived in a
  later step (`ranking.AdmissionLog`);
- then vLLM's own scheduling: running requests keep their slots and are
  scheduled first (a decode is one token, a chunked prefill takes what the
  token budget leaves), and waiting requests are admitted in queue order while
  a slot and token budget remain. No preemption: the KV cache is taken as
  large enough, as it was in the CPU runs (no KV preemptions);
- a request generates its first token in the step that completes its prefill
  and one more per step after it, and leaves when it has `output_tokens`.

Time is a step clock, like the harness's `--clock steps`: arrivals are
added before a step when their time has passed, each step advances the clock
by `step_ms` (+ `step_ms_per_token` x tokens scheduled), an idle engine jumps
to the next arrival, and latency = finish - arrival.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
from ltr_client import ordering

from .guards import Design, Load


@dataclass(frozen=True)
class Engine:
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    step_ms: float = 17.414
    step_ms_per_token: float = 0.0
    # Moving means of the load signals cover about this many events (admissions or completions).
    signal_window: int = 64

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
        if self.step_ms <= 0 or self.step_ms_per_token < 0:
            raise ValueError("step_ms must be positive and step_ms_per_token non-negative")


@dataclass(frozen=True)
class Result:
    """Per request, in submission order. NaN where a request did not finish (a stopped run)."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    arrival_step: np.ndarray
    finish_step: np.ndarray
    promoted: np.ndarray  # bool: the guard promoted it at some point
    steps: int

    @property
    def latency(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def ttft(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def latency_steps(self) -> np.ndarray:
        return (self.finish_step - self.arrival_step).astype(np.float64)


class _Signals:
    """The load signals a caller keeps for a relative guard: moving means over recent admissions and completions, in steps."""

    def __init__(self, window: int) -> None:
        self.wait, self.latency, self.service, self.admit_rate = _Mean(window), _Mean(window), _Mean(window), _Mean(window)

    def load(self, step: int, queue: int) -> Load:
        return Load(step, queue, self.wait.value, self.latency.value, self.service.value, self.admit_rate.value)


@dataclass
class _GuardState:
    """The hook's RankState, one column per field, one row per request."""

    mark: np.ndarray  # the step it last ran in, or arrived before
    promoted_left: np.ndarray
    protected: np.ndarray
    arrival_step: np.ndarray
    admitted_arrivals: list[int]  # sorted arrival steps of the admitted requests (overtake counts)


class _Mean:
    """Exponential moving mean over about `n` values, exact mean of the first `n` (no start-up bias)."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.value = n, 0, math.nan

    def add(self, x: float) -> None:
        self.count += 1
        w = 1.0 / min(self.count, self.n)
        self.value = x if self.count == 1 else self.value + w * (x - self.value)


def simulate(
    engine: Engine,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    arrival_s: np.ndarray,
    scores: np.ndarray | None,
    design: Design | None,
    score_ready_s: np.ndarray | None = None,
    stop_after: int | None = None,
) -> Result:
    """Serve the requests; `scores` None is FCFS (nothing ranked), else ranked with `design`'s guard.

    `score_ready_s`: when each score arrives (None: at arrival; NaN scores
    never do). Until then the request keeps its FCFS slot, as in the hook.
    `stop_after`: stop once this many requests have finished (the synthetic
    workload's first K).
    """
    n = len(output_tokens)
    prompt_left = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
    out_len = np.maximum(np.asarray(output_tokens, dtype=np.int64), 1)
    generated = np.zeros(n, dtype=np.int64)
    first_s = np.full(n, math.nan)
    finish_s = np.full(n, math.nan)
    arrival_step = np.zeros(n, dtype=np.int64)
    finish_step = np.full(n, -1, dtype=np.int64)
    first_step = np.zeros(n, dtype=np.int64)
    g = _GuardState(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool), arrival_step, [])
    admitted = np.zeros(n, dtype=bool)
    ready = np.asarray(arrival_s, dtype=np.float64) if score_ready_s is None else np.asarray(score_ready_s, dtype=np.float64)
    has_score = scores is not None and design is not None
    sc = np.full(n, math.nan) if scores is None else np.asarray(scores, dtype=np.float64)

    order = np.argsort(np.asarray(arrival_s), kind="stable")
    arrivals = np.asarray(arrival_s, dtype=np.float64)
    waiting: list[int] = []  # arrival order
    running: list[int] = []
    signals = _Signals(engine.signal_window)
    t, step, nxt, done = 0.0, 0, 0, 0
    while True:
        while nxt < n and arrivals[order[nxt]] <= t:
            i = int(order[nxt])
            waiting.append(i)
            arrival_step[i] = g.mark[i] = step
            nxt += 1
        if not waiting and not running:
            if nxt == n:
                break
            t = max(t, float(arrivals[order[nxt]]))
            continue
        if stop_after is not None and done >= stop_after:
            break
        step += 1
        free = engine.max_num_seqs - len(running)
        queue = waiting
        if has_score and free > 0 and waiting:
            assert design is not None
            queue = _rank(waiting, step, t, sc, ready, g, design, signals.load(step, len(waiting)))

        budget = engine.max_num_batched_tokens
        scheduled: list[int] = []
        chunks: list[int] = []
        for i in running:
            if budget <= 0:
                break
            c = min(int(prompt_left[i]), budget) if prompt_left[i] > 0 else 1
            scheduled.append(i)
            chunks.append(c)
            budget -= c
        new: list[int] = []
        for i in queue:
            if len(running) + len(new) >= engine.max_num_seqs or budget <= 0:
                break
            need = int(prompt_left[i])
            if need > budget and not engine.chunked_prefill:
                break
            c = min(need, budget)
            new.append(i)
            scheduled.append(i)
            chunks.append(c)
            budget -= c
        if new:
            gone = set(new)
            waiting = [i for i in waiting if i not in gone]
            running.extend(new)
            for i in new:
                admitted[i] = True
                first_step[i] = step
                bisect.insort(g.admitted_arrivals, int(arrival_step[i]))
                signals.wait.add(float(step - 1 - arrival_step[i]))
        signals.admit_rate.add(float(len(new)))
        idx = np.asarray(scheduled, dtype=np.int64)
        ch = np.asarray(chunks, dtype=np.int64)
        # ranking.record_run: the idle count restarts, a promotion spends one step.
        g.mark[idx] = step
        g.promoted_left[idx] = np.maximum(g.promoted_left[idx] - 1, 0)
        prefilling = prompt_left[idx] > 0
        prompt_left[idx] = np.where(prefilling, prompt_left[idx] - ch, prompt_left[idx])
        emits = idx[prompt_left[idx] == 0]  # a decode, or the step that completed a prefill
        generated[emits] += 1
        t += (engine.step_ms + engine.step_ms_per_token * int(ch.sum())) / 1000.0
        firsts = emits[generated[emits] == 1]
        first_s[firsts] = t
        fin = emits[generated[emits] >= out_len[emits]]
        if len(fin):
            finish_s[fin] = t
            finish_step[fin] = step
            gone = set(fin.tolist())
            running = [i for i in running if i not in gone]
            done += len(fin)
            for i in fin.tolist():
                signals.latency.add(float(step - arrival_step[i]))
                signals.service.add(float(step - first_step[i] + 1))
    fs = np.where(finish_step >= 0, finish_step, 0)
    return Result(
        arrival_s=arrivals.copy(),
        first_token_s=first_s,
        finish_s=finish_s,
        arrival_step=arrival_step,
        finish_step=np.where(finish_step >= 0, fs, -1),
        promoted=g.protected.copy(),
        steps=step,
    )


def _rank(waiting: list[int], step: int, t: float, sc: np.ndarray, ready: np.ndarray, g: _GuardState, design: Design, load: Load) -> list[int]:
    """The waiting queue in the order the shared policy gives it this step (a score not yet arrived counts as none)."""
    w = np.asarray(waiting, dtype=np.int64)
    scores = np.where(ready[w] <= t, sc[w], math.nan)
    if np.isnan(scores).all():
        return waiting  # nothing to rank: FCFS
    cands = ordering.Candidates(
        scores=scores,
        running=np.zeros(len(w), dtype=bool),
        num_tokens=np.ones(len(w), dtype=np.int64),
        priority=np.zeros(len(w), dtype=np.int64),
        idle_steps=np.maximum(step - 1 - g.mark[w], 0),
        promoted_steps_left=g.promoted_left[w],
        protected=g.protected[w],
        overtakes=ordering.admitted_later(np.asarray(g.admitted_arrivals, dtype=np.int64), g.arrival_step[w]),
        arrival_steps=g.arrival_step[w],
    )
    cands, guard = design.apply(cands, load)
    ranked = ordering.priority_order(cands, guard)
    g.promoted_left[w] = ranked.promoted_steps_left
    g.protected[w] = ranked.protected
    return w[ranked.order].tolist()
