"""Policies, shapes and workloads of a simulated run, and the figures computed from them.

The workloads and their seeds are the serving harness's (`benchmarks.serving`):
the burst, online and synthetic requests are disjoint slices of the shuffled
trace (`take(trace, 0, burst)`, then online, then synthetic), the online
arrivals at a rate are `poisson_arrivals(n, rate x capacity, seed x 1000 +
the rate's index in --rates)`, and the synthetic run's K is 10 % of its
requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ltr_client import ordering

from . import guards
from .engine import Engine, Result, simulate
from .trace import Requests


@dataclass(frozen=True)
class Policy:
    name: str
    scores: str  # "none" (FCFS), "oracle" (true lengths), "ranker"
    design: guards.Design | None = None
    score_delay: bool = True  # ranker scores arrive through the modelled scorer (False: at arrival, as ltr-instant)


def parse_guard(spec: str, reference: np.ndarray) -> guards.Design:
    """A guard design from the command line: step:T:Q[:K], rel:SIGNAL:K[:S], deadline:SIGNAL:W[:K]."""
    parts = spec.split(":")
    try:
        if parts[0] == "step" and 3 <= len(parts) <= 4:
            t, q, k = (int(x) for x in (parts[1:] + ["0"])[:3])
            return guards.Fixed(f"ltr-step-{t}-{q}" + (f"-{k}" if k else ""), ordering.StarvationGuard(t, q, k))
        if parts[0] == "rel" and 3 <= len(parts) <= 4:
            floor = float(parts[3]) if len(parts) == 4 else 0.0
            guards.signal(guards.Load(0, 0, 1, 1, 1, 1), parts[1])
            return guards.Relative(f"ltr-rel-{parts[1]}-{parts[2]}" + (f"+{parts[3]}s" if floor else ""), float(parts[2]), parts[1], floor)
        if parts[0] == "deadline" and 3 <= len(parts) <= 4:
            promote = float(parts[3]) if len(parts) == 4 else 0.0
            guards.signal(guards.Load(0, 0, 1, 1, 1, 1), parts[1])
            name = f"ltr-deadline-{parts[1]}-{parts[2]}" + (f"-p{parts[3]}" if promote else "")
            return guards.Deadline(name, float(parts[2]), np.sort(reference[~np.isnan(reference)]), parts[1], promote)
    except ValueError as e:
        raise ValueError(f"--guards: {spec!r}: {e}") from None
    raise ValueError(f"--guards: {spec!r} is not step:T:Q[:K], rel:SIGNAL:K[:S] or deadline:SIGNAL:W[:K]")


def standard_policies(max_num_seqs: int) -> dict[str, Policy]:
    return {
        "fcfs": Policy("fcfs", "none"),
        "oracle": Policy("oracle", "oracle", guards.no_guard()),
        "ltr": Policy("ltr", "ranker", guards.current_default()),
        "ltr-instant": Policy("ltr-instant", "ranker", guards.current_default(), score_delay=False),
        "ltr-old": Policy("ltr-old", "ranker", guards.old_default()),
        "ltr-noguard": Policy("ltr-noguard", "ranker", guards.no_guard()),
        "ltr-fair": Policy("ltr-fair", "ranker", guards.fair(max_num_seqs)),
    }


@dataclass(frozen=True)
class Workload:
    name: str  # "burst", "online@1.1", "synthetic"
    requests: Requests
    arrival_s: np.ndarray
    first_k: int | None = None  # synthetic: stop once this many are done


def scorer_ready(arrival_s: np.ndarray, rate: float) -> np.ndarray | None:
    """When each score comes back from a sidecar that scores `rate` prompts/s one at a time, in arrival order (0: at arrival)."""
    if rate <= 0:
        return None
    order = np.argsort(arrival_s, kind="stable")
    ready = np.empty(len(arrival_s))
    free = 0.0
    for i in order:
        free = max(free, float(arrival_s[i])) + 1.0 / rate
        ready[i] = free
    return ready


def run_policy(engine: Engine, policy: Policy, w: Workload, scorer_rate: float) -> Result:
    r = w.requests
    if policy.scores == "none":
        scores = None
    elif policy.scores == "oracle":
        scores = -r.output_tokens.astype(np.float64)
    else:
        scores = r.scores
    ready = scorer_ready(w.arrival_s, scorer_rate) if policy.scores == "ranker" and policy.score_delay else None
    return simulate(engine, r.prompt_tokens, r.output_tokens, w.arrival_s, scores, policy.design, ready, w.first_k)


def summarize(res: Result, first_k: int | None = None) -> dict[str, Any]:
    lat = res.latency[~np.isnan(res.latency)]
    out: dict[str, Any] = {
        "completed": len(lat),
        "mean": float(lat.mean()),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()),
        "mean_steps": float(np.nanmean(np.where(res.finish_step >= 0, res.latency_steps, np.nan))),
        "ttft_mean": float(np.nanmean(res.ttft)),
        "promoted": int(res.promoted.sum()),
        "steps": res.steps,
    }
    if first_k is not None:
        finishes = np.sort(res.finish_s[~np.isnan(res.finish_s)])
        out["time_to_first_k_s"] = float(finishes[first_k - 1]) if len(finishes) >= first_k else math.nan
    return out


@dataclass
class Figures:
    """Per workload and policy: the summary and the ratios the issue asks for."""

    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def ratios(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, p99 and max as ratios to FCFS; gain capture against the oracle; guard cost against ltr-noguard."""
    f = summaries["fcfs"]
    o = summaries.get("oracle")
    ng = summaries.get("ltr-noguard")
    out = {}
    for name, s in summaries.items():
        row = {k: s[k] / f[k] for k in ("mean", "p99", "max")}
        if o is not None and f["mean"] > o["mean"]:
            row["capture"] = (f["mean"] - s["mean"]) / (f["mean"] - o["mean"])
        if ng is not None:
            row["guard_cost"] = s["mean"] / ng["mean"]
        if "time_to_first_k_s" in s:
            row["first_k_speedup"] = f["time_to_first_k_s"] / s["time_to_first_k_s"]
        out[name] = row
    return out


def run_all(
    engine: Engine,
    policies: Sequence[Policy],
    workloads: Sequence[Workload],
    scorer_rate: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """summaries[workload][policy]."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for w in workloads:
        out[w.name] = {}
        for p in policies:
            out[w.name][p.name] = summarize(run_policy(engine, p, w, scorer_rate), w.first_k)
            if progress:
                progress(f"{w.name} {p.name}")
    return out


def online_arrivals(n: int, rate_rps: float, seed: int) -> np.ndarray:
    from benchmarks.serving import poisson_arrivals

    return np.asarray(poisson_arrivals(n, rate_rps, seed))


def measure_capacity(engine: Engine, requests: Requests) -> float:
    """Requests per second of an FCFS burst of `requests` (the harness's capacity: requests / makespan)."""
    res = simulate(engine, requests.prompt_tokens, requests.output_tokens, np.zeros(len(requests)), None, None)
    return len(requests) / float(np.nanmax(res.finish_s))
