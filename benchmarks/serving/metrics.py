"""Summaries of each run and the issue's figures, each a ratio of two runs from the same benchmark run."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .driver import Run
from .policies import guard_policy_name


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": sum(values) / len(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def summarize(run: Run, first_k: int | None = None, budget_s: float | None = None) -> dict[str, Any]:
    done = [r for r in run.records if r.finish is not None]
    finishes = sorted(r.finish for r in run.records if r.finish is not None)
    makespan = finishes[-1] if finishes else math.nan
    summary: dict[str, Any] = {
        "requests": len(run.records),
        "completed": len(done),
        "aborted": run.aborted,
        "latency": stats([latency for r in done if (latency := r.latency) is not None]),
        "latency_steps": stats([steps for r in done if (steps := r.latency_steps) is not None]),
        "ttft": stats([ttft for r in run.records if (ttft := r.ttft) is not None]),
        "makespan_s": makespan,
        "requests_per_s": len(done) / makespan if done else math.nan,
        "output_tokens": sum(r.output_tokens for r in run.records),
        "steps": run.steps,
        "wall_s": run.wall_s,
    }
    admitted = [r for r in run.records if r.first_token is not None]
    if run.extra.get("ltr") and admitted:
        # Low when the engine admits requests faster than the sidecar scores
        # them (an idle engine, or the first max_num_seqs of a burst): those
        # keep their FCFS slots.
        summary["scored_at_admission"] = sum(r.score_at_admission is not None for r in admitted) / len(admitted)
    if "scorer" in run.extra:
        # Whether scores arrived: calls, failures, retries and requests given up on (unscored).
        summary["scorer"] = run.extra["scorer"]
    if run.extra.get("score_waits"):
        summary["score_waits"] = run.extra["score_waits"]
        summary["score_wait_s"] = run.extra["score_wait_s"]
        summary["score_waits_on_clock"] = run.extra["score_waits_on_clock"]
    if first_k is not None:
        summary["first_k"] = first_k
        summary["time_to_first_k_s"] = finishes[first_k - 1] if len(finishes) >= first_k else math.nan
    if budget_s is not None:
        summary["budget_s"] = budget_s
        summary["completed_within_budget"] = sum(1 for f in finishes if f <= budget_s)
    return summary


@dataclass(frozen=True)
class Figure:
    name: str
    workload: str
    value: float
    target: str  # e.g. "<= 0.5"; "" for figures shown for context only
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if not self.target or math.isnan(self.value):
            return None
        op, bound = self.target.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


def figures(summaries: dict[str, dict[str, dict[str, Any]]], rates: list[float]) -> list[Figure]:
    """The issue's ratios, each from runs in this one benchmark run."""

    def get(policy: str, workload: str, *keys: str) -> float:
        value: Any = summaries.get(policy, {}).get(workload)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return math.nan if value is None else float(value)

    def ratio(a: float, b: float) -> float:
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    out: list[Figure] = []
    online = [f"online@{r:g}" for r in rates]
    if online:
        top = online[-1]
        out.append(Figure("LTR / FCFS mean latency", top, ratio(get("ltr", top, "latency", "mean"), get("fcfs", top, "latency", "mean")), "<= 0.5"))
    for w in ["burst"] + [w for w, r in zip(online, rates, strict=True) if r >= 0.8]:
        fcfs, ltr, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr", "oracle"))
        fs, ls, ns, os_ = (get(p, w, "latency_steps", "mean") for p in ("fcfs", "ltr", "ltr-noguard", "oracle"))
        note = f"oracle / FCFS mean {ratio(oracle, fcfs):.3f}; in engine steps: capture {ratio(fs - ls, fs - os_):.3f}, noguard {ratio(fs - ns, fs - os_):.3f}"
        out.append(Figure("gain capture (FCFS - LTR) / (FCFS - oracle), mean latency", w, ratio(fcfs - ltr, fcfs - oracle), ">= 0.75", note))
        if "bucket" in summaries:
            bucket = get("bucket", w, "latency", "mean")
            out.append(Figure("gain capture of the bucket baseline", w, ratio(fcfs - bucket, fcfs - oracle), "", f"bucket / FCFS mean {ratio(bucket, fcfs):.3f}"))
    out.append(
        Figure(
            "FCFS / LTR time to first K",
            "synthetic",
            ratio(get("fcfs", "synthetic", "time_to_first_k_s"), get("ltr", "synthetic", "time_to_first_k_s")),
            ">= 3",
            f"oracle: {ratio(get('fcfs', 'synthetic', 'time_to_first_k_s'), get('oracle', 'synthetic', 'time_to_first_k_s')):.2f}",
        )
    )
    for w in ["burst"] + online:
        note = f"no guard: {ratio(get('ltr-noguard', w, 'latency', 'max'), get('fcfs', w, 'latency', 'max')):.2f}"
        out.append(Figure("LTR (guard on) / FCFS max latency", w, ratio(get("ltr", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5", note))
        out.append(Figure("guard cost: LTR / LTR-noguard mean latency", w, ratio(get("ltr", w, "latency", "mean"), get("ltr-noguard", w, "latency", "mean")), ""))
    if "ltr-fair" in summaries:
        # The same figures for the overtake guard, which trades mean latency for a bound relative to FCFS.
        for w in ["burst"] + online:
            fcfs, fair, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr-fair", "oracle"))
            note = f"mean: {ratio(fair, fcfs):.3f} of FCFS, gain capture {ratio(fcfs - fair, fcfs - oracle):.3f}"
            out.append(Figure("LTR-fair / FCFS max latency", w, ratio(get("ltr-fair", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5", note))
    if "ltr-instant" in summaries:
        # The same figures with the scores in time for every admission: the
        # policy without this CPU's ranker-to-engine cost ratio.
        on_clock = any(summaries["ltr-instant"][w].get("score_waits_on_clock") for w in summaries["ltr-instant"])
        name = f"LTR-instant (scores within a step, waits {'on' if on_clock else 'not on'} the clock)"
        if online:
            top = online[-1]
            out.append(Figure(f"{name} / FCFS mean latency", top, ratio(get("ltr-instant", top, "latency", "mean"), get("fcfs", top, "latency", "mean")), "<= 0.5"))
        for w in ["burst"] + [w for w, r in zip(online, rates, strict=True) if r >= 0.8]:
            fcfs, instant, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr-instant", "oracle"))
            out.append(Figure(f"{name}: gain capture", w, ratio(fcfs - instant, fcfs - oracle), ">= 0.75", f"mean {ratio(instant, fcfs):.3f} of FCFS"))
        out.append(
            Figure(
                f"{name}: FCFS / LTR time to first K",
                "synthetic",
                ratio(get("fcfs", "synthetic", "time_to_first_k_s"), get("ltr-instant", "synthetic", "time_to_first_k_s")),
                ">= 3",
            )
        )
        for w in ["burst"] + online:
            out.append(Figure(f"{name} / FCFS max latency", w, ratio(get("ltr-instant", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5"))
    return out


def guard_sweep_rows(
    args: argparse.Namespace, workload: str, summaries: dict[str, dict[str, Any]], hook_configs: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Latency in seconds and engine steps on `workload` for every guard setting that ran it, FCFS last for reference."""
    rows = []
    for name in ["ltr-noguard", "ltr"] + [guard_policy_name(g) for g in args.guard_sweep] + ["fcfs"]:
        s = summaries.get(name, {}).get(workload)
        if s is None:
            continue
        hook = hook_configs.get(name)
        keys = ("starvation_threshold", "starvation_quantum", "starvation_overtakes")
        threshold, quantum, overtakes = (hook.get(k, 0) for k in keys) if hook else ("-", "-", "-")
        row = {"policy": name, "threshold": threshold, "quantum": quantum, "overtakes": overtakes}
        row.update({k: s["latency"][k] for k in ("mean", "p99", "max")})
        rows.append({**row, "mean_steps": s["latency_steps"]["mean"], "max_steps": s["latency_steps"]["max"]})
    return rows
