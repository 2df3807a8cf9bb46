"""One policy's fresh engine through every workload, sharing what the FCFS burst measured."""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .clocks import StepClock, WallClock
from .driver import Record, Run, run_workload
from .engine import engine_core, start_engine, stop_engine, warm_up
from .events import log
from .metrics import summarize
from .policies import Policy
from .trace import TraceRequest, poisson_arrivals

# The synthetic budget when no FCFS burst runs to derive it from and --synthetic-budget-s is not given.
NO_FCFS_BUDGET_S = 60.0


@dataclass
class Bench:
    """What every policy's runs share: the model, the requests of each workload, and what the FCFS burst measured."""

    args: argparse.Namespace
    burst: list[TraceRequest]
    online: list[TraceRequest]
    synthetic: list[TraceRequest]
    warmup: list[TraceRequest]
    capacity: float  # requests/s; 0 until the FCFS burst has run (or --capacity)
    budget_s: float  # synthetic budget; 0 until known
    step_s: float = 0.0  # --clock steps: seconds per engine step; 0 until known
    model: Path | None = None  # built into a temporary directory once the sidecar is about to start


def run_policy(bench: Bench, policy: Policy, workloads: Sequence[str], summaries: dict[str, dict[str, Any]]) -> list[Run]:
    """One fresh engine for `policy`, warmed up, through `workloads` in order; summaries go into `summaries` by workload."""
    args = bench.args
    progress = not args.no_progress
    t = time.perf_counter()
    assert bench.model is not None
    llm = start_engine(bench.model, policy, args)
    runs: list[Run] = []
    try:
        scheduler = engine_core(llm).scheduler
        if hasattr(scheduler, "ltr_config"):
            summaries["hook_config"] = asdict(scheduler.ltr_config)
        log("engine_started", policy=policy.name, scheduler=type(scheduler).__name__, seconds=round(time.perf_counter() - t, 1))
        warm_up(llm, bench.warmup)
        for workload in workloads:
            if workload == "burst":
                calibrating = args.clock == "steps" and bench.step_s <= 0
                clock = StepClock(1.0) if calibrating else new_clock(bench)
                run = run_workload(llm, policy, "burst", bench.burst, [0.0] * len(bench.burst), args.run_timeout_s, progress, clock=clock)
                if calibrating:
                    # The step clock's unit is this run's mean step time; its
                    # own times were counted in steps (all arrived at 0).
                    bench.step_s = run.wall_s / run.steps
                    log("step_time", ms=round(1000 * bench.step_s, 2))
                    for rec in run.records:
                        rec.first_token = None if rec.first_token is None else rec.first_token * bench.step_s
                        rec.finish = None if rec.finish is None else rec.finish * bench.step_s
                summaries["burst"] = summarize(run)
                if policy.name == "fcfs":
                    measured(bench, summaries["burst"])
                runs.append(run)
            elif workload in ("online", "online-top"):  # online-top: the highest rate only (the guard sweep)
                for rate in args.rates if workload == "online" else args.rates[-1:]:
                    # Seeded by the rate's place in --rates: every policy, the guard sweep too, sees the same arrivals at a rate.
                    arrivals = poisson_arrivals(len(bench.online), rate * bench.capacity, seed=args.seed * 1000 + args.rates.index(rate))
                    run = run_workload(llm, policy, f"online@{rate:g}", bench.online, arrivals, args.run_timeout_s, progress, clock=new_clock(bench))
                    summaries[run.workload] = {**summarize(run), "rate_rps": rate * bench.capacity}
                    runs.append(run)
            elif workload == "synthetic":
                k_first = max(1, math.ceil(args.first_k_fraction * len(bench.synthetic)))
                budget = bench.budget_s or NO_FCFS_BUDGET_S

                def stop_when(records: list[Record], now: float) -> bool:
                    return now >= budget and sum(r.finish is not None for r in records) >= k_first

                synthetic = [0.0] * len(bench.synthetic)
                run = run_workload(llm, policy, "synthetic", bench.synthetic, synthetic, args.run_timeout_s, progress, stop_when, new_clock(bench))
                summaries["synthetic"] = summarize(run, first_k=k_first, budget_s=budget)
                runs.append(run)
            log("workload_done", policy=policy.name, workload=workload, seconds=round(time.perf_counter() - t, 1))
    finally:
        stop_engine(llm)
        del llm
        gc.collect()
    return runs


def new_clock(bench: Bench) -> WallClock | StepClock:
    return StepClock(bench.step_s) if bench.args.clock == "steps" else WallClock()


def measured(bench: Bench, fcfs_burst: dict[str, Any]) -> None:
    """What the FCFS burst sets for the runs after it (its own synthetic run included), unless given by flags."""
    if bench.capacity <= 0:
        bench.capacity = fcfs_burst["requests_per_s"]
        log("capacity", requests_per_s=round(bench.capacity, 3))
    if bench.budget_s <= 0:
        # Half the time FCFS needed for the burst, scaled to the synthetic size: about half the work fits.
        bench.budget_s = 0.5 * fcfs_burst["makespan_s"] * len(bench.synthetic) / len(bench.burst)
        log("synthetic_budget", seconds=round(bench.budget_s, 2))
