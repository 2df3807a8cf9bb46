"""Starvation-guard designs for the simulator, written against `ltr_client.ordering`'s columns.

Each design turns one step's waiting candidates (an `ordering.Candidates`)
and the caller's load signal into the `Candidates` and `StarvationGuard`
that `ordering.priority_order` then ranks: the policy itself stays the
shared code, and a design is only what a caller (NextBatch's client, or the
hook) would compute and send in. Every design reads per-candidate state that
already travels with the candidates (`idle_steps`: for a request that never
ran, the steps it has waited) plus a few load numbers the caller keeps
(`Load`), so each can be implemented in `ordering` for both NextBatch and
the hook without state in the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from ltr_client import ordering


@dataclass(frozen=True)
class Load:
    """What the caller knows about the recent load, in engine steps. NaN: nothing observed yet."""

    step: int
    queue: int  # waiting requests
    wait: float  # moving mean of the waits (arrival to first scheduled step) of recent admissions
    latency: float  # moving mean of the latencies (arrival to finish) of recent completions
    service: float  # moving mean of the steps recent completions spent scheduled (first step to finish)
    admit_rate: float  # moving mean of admissions per step


class Design(Protocol):
    @property
    def name(self) -> str: ...

    def apply(self, c: ordering.Candidates, load: Load) -> tuple[ordering.Candidates, ordering.StarvationGuard]: ...


@dataclass(frozen=True)
class Fixed:
    """The shared policy's own guard, unchanged: an absolute step threshold and/or an overtake count."""

    name: str
    guard: ordering.StarvationGuard

    def apply(self, c: ordering.Candidates, load: Load) -> tuple[ordering.Candidates, ordering.StarvationGuard]:
        return c, self.guard


def signal(load: Load, kind: str) -> float:
    """A load signal in steps: what FCFS-like waiting looks like now.

    wait: recent admissions' mean wait; latency: recent completions' mean
    latency; queue: the queue's length over the admission rate (how long the
    newest arrival would wait under FCFS); service: recent completions' mean
    time in the batch; fcfs: queue + service, the newest arrival's latency
    under FCFS.
    """
    if kind == "wait":
        return load.wait
    if kind == "latency":
        return load.latency
    if kind == "service":
        return load.service
    if kind == "queue":
        return load.queue / load.admit_rate if load.admit_rate > 0 else math.nan
    if kind == "fcfs":
        # FCFS-equivalent latency of the newest arrival: its wait behind the queue, then a mean service.
        return (load.queue / load.admit_rate if load.admit_rate > 0 else math.nan) + load.service
    raise ValueError(f"unknown load signal {kind!r}")


@dataclass(frozen=True)
class Relative:
    """Promote a candidate once it has waited k x a load signal (plus `floor_service` x the mean service time).

    The threshold moves with the load, so there is no step count to tune:
    below overload the signal is short and the bound tight, past it the
    signal grows with FCFS's own waits. Until the signal has been observed
    (NaN) nothing is promoted: nobody has waited long yet.
    """

    name: str
    k: float
    kind: str = "latency"
    floor_service: float = 0.0
    quantum: int = ordering.DEFAULT_QUANTUM_STEPS

    def threshold(self, load: Load) -> float:
        s = signal(load, self.kind)
        extra = self.floor_service * load.service if self.floor_service else 0.0
        return math.inf if math.isnan(s) or math.isnan(extra) else max(1.0, self.k * s + extra)

    def apply(self, c: ordering.Candidates, load: Load) -> tuple[ordering.Candidates, ordering.StarvationGuard]:
        t = self.threshold(load)
        if math.isinf(t):
            return c, ordering.StarvationGuard(threshold_steps=0, quantum_steps=0)
        return c, ordering.StarvationGuard(threshold_steps=math.ceil(t), quantum_steps=self.quantum, max_overtakes=0)


@dataclass(frozen=True)
class Deadline:
    """Virtual-deadline aging: rank by arrival + w x signal x q, q the score's quantile (0 = predicted shortest).

    The key is an earliest-deadline order: a request predicted longest can be
    passed only by requests that arrive less than w x signal steps after it,
    so its wait exceeds FCFS's by about that much at most; a request predicted
    short jumps ahead of everything that arrived up to w x signal x (1 - q)
    earlier. `quantiles` maps scores to q from a reference sample of the
    ranker's scores (a deployment would ship it with the bundle); arrival is
    recovered from idle_steps (a waiting request that never ran has been idle
    since it arrived). With `promote_k` the relative threshold promotes too.
    """

    name: str
    w: float
    reference: np.ndarray  # sorted scores of a reference sample
    kind: str = "latency"
    promote_k: float = 0.0

    def apply(self, c: ordering.Candidates, load: Load) -> tuple[ordering.Candidates, ordering.StarvationGuard]:
        s = signal(load, self.kind)
        scale = 0.0 if math.isnan(s) else self.w * s
        # q: share of the reference predicted shorter (higher score) than this one.
        q = 1.0 - np.searchsorted(self.reference, c.scores, side="right") / len(self.reference)
        arrival = load.step - 1 - c.idle_steps
        key = -(arrival + scale * q)  # higher runs first
        key = np.where(np.isnan(c.scores), np.nan, key)
        guard = ordering.StarvationGuard(threshold_steps=0, quantum_steps=0)
        if self.promote_k > 0 and not math.isnan(s):
            guard = ordering.StarvationGuard(threshold_steps=max(1, math.ceil(self.promote_k * s)), quantum_steps=ordering.DEFAULT_QUANTUM_STEPS)
        return replace(c, scores=key), guard


def old_default() -> Fixed:
    return Fixed("ltr (768:32)", ordering.StarvationGuard(768, 32, 0))


def no_guard() -> Fixed:
    return Fixed("ltr-noguard", ordering.StarvationGuard(0, 0, 0))


def fair(max_num_seqs: int) -> Fixed:
    """`ltr-fair` as the harness runs it: the default guard plus the overtake trigger at 2 x max_num_seqs."""
    return Fixed("ltr-fair", ordering.StarvationGuard(ordering.DEFAULT_THRESHOLD_STEPS, ordering.DEFAULT_QUANTUM_STEPS, 2 * max_num_seqs))


def current_default() -> Fixed:
    """Whatever `ltr_client.ordering` ships as its default guard today."""
    return Fixed("ltr", ordering.StarvationGuard())
