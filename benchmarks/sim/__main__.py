"""Simulate continuous batching under the shared ordering policy: FCFS, oracle and the ranker with starvation guards.

    python -m benchmarks.sim --out sim-results                       # CPU harness shape, default ranker
    python -m benchmarks.sim --shape gpu --out sim-gpu               # max_num_seqs 256, full-length answers
    python -m benchmarks.sim --scores tau --tau 0.6                  # synthetic scores at a Kendall tau
    python -m benchmarks.sim --validate-v5 --out sim-v5              # against the committed real-vLLM run v5
    python -m benchmarks.sim --guards rel:latency:2.5,deadline:latency:2

See benchmarks/README.md ("The simulator").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine
from .trace import DEFAULT_CACHE, Requests, TraceConfig, kendall_tau, real_trace, synthetic_scores
from .workloads import Policy, Workload, measure_capacity, online_arrivals, parse_guard, ratios, run_all, standard_policies

WORKLOADS = ("burst", "online", "synthetic")
NO_CAP = 1_000_000

# The shapes. cpu: the committed real-vLLM runs (benchmarks/results/cpu-2core-steps-v5: --clock steps --step-ms 17.414
# --capacity 6.2014 --online-requests 400, the harness's other defaults). gpu: an 8B-class engine on one GPU, answers at
# their recorded length, prompts uncut; the step time is a rough model (20 ms + 0.02 ms per scheduled token), not a measurement.
SHAPES: dict[str, dict[str, Any]] = {
    "cpu": {
        "max_num_seqs": 8, "step_ms": 17.414, "step_ms_per_token": 0.0, "capacity": 6.2014, "length_scale": 4.0,
        "max_output_tokens": 256, "max_prompt_tokens": 128, "burst_requests": 200, "online_requests": 400, "synthetic_requests": 200,
    },
    "gpu": {
        "max_num_seqs": 256, "step_ms": 20.0, "step_ms_per_token": 0.02, "capacity": 0.0, "length_scale": 1.0,
        "max_output_tokens": NO_CAP, "max_prompt_tokens": NO_CAP, "burst_requests": 1000, "online_requests": 2000, "synthetic_requests": 1000,
    },
}  # fmt: skip

# Mean, p99 and max latency (s) and the synthetic time to first K measured by the real harness, from
# benchmarks/results/cpu-2core-steps-v5/results.md and cpu-2core-steps-v5-overload/results.md ("ltr" there ran the
# 768:32 guard, which is "ltr-old" here; the harness's ltr scored through a real CPU sidecar).
MEASURED_V5: dict[str, dict[str, tuple[float, float, float]]] = {
    "burst": {"fcfs": (15.94, 31.28, 32.25), "ltr-old": (13.09, 31.56, 32.08), "ltr-noguard": (12.77, 31.60, 33.03),
              "ltr-fair": (13.15, 31.58, 32.02), "ltr-instant": (12.59, 31.55, 32.34), "oracle": (9.71, 32.10, 33.19)},
    "online@0.8": {"fcfs": (1.69, 5.03, 6.27), "ltr-old": (1.61, 5.19, 10.47), "ltr-noguard": (1.61, 5.19, 10.47),
                   "ltr-fair": (1.64, 5.69, 8.09), "ltr-instant": (1.60, 5.00, 10.42), "oracle": (1.59, 5.83, 11.59)},
    "online@0.95": {"fcfs": (3.35, 6.86, 8.48), "ltr-old": (2.75, 16.72, 19.29), "ltr-noguard": (2.72, 25.62, 42.73),
                    "ltr-fair": (2.96, 9.06, 10.67), "ltr-instant": (2.73, 16.89, 18.02), "oracle": (2.33, 15.02, 39.51)},
    "online@1.1": {"fcfs": (6.75, 12.54, 13.86), "ltr-old": (5.44, 17.69, 18.17), "ltr-noguard": (4.57, 47.00, 51.47),
                   "ltr-fair": (5.96, 14.33, 15.04), "ltr-instant": (5.36, 17.65, 18.11), "oracle": (3.65, 43.36, 52.77)},
    "online@1.3": {"fcfs": (9.19, 18.48, 19.81), "ltr-old": (7.93, 18.89, 19.65), "ltr-noguard": (6.20, 47.42, 59.61),
                   "ltr-fair": (8.23, 18.67, 19.77), "oracle": (4.70, 46.86, 51.32)},
    "online@1.5": {"fcfs": (14.29, 27.32, 29.14), "ltr-old": (13.15, 27.32, 29.14), "ltr-noguard": (9.87, 57.52, 64.56),
                   "ltr-fair": (13.52, 27.32, 29.14), "oracle": (7.08, 54.60, 66.60)},
}  # fmt: skip
V5_SCORER_RATE = 60.0
MEASURED_V5_FIRST_K = {"fcfs": 3.50, "ltr-old": 2.19, "ltr-noguard": 2.18, "ltr-fair": 2.19, "ltr-instant": 0.71, "oracle": 0.35}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sim",
        description=__doc__.split("\n\n")[0],
        epilog="Shape defaults (cpu / gpu): "
        + "; ".join(f"{k} {SHAPES['cpu'][k]:g} / {SHAPES['gpu'][k]:g}" for k in SHAPES["cpu"])
        + f" ({NO_CAP:,} = no cap). See benchmarks/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="directory for summary.json, results.md and load.png (none: print only)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="cpu", help="engine and trace defaults; the flags below override them")
    p.add_argument("--seed", type=int, default=0, help="the harness's --seed: trace order and Poisson arrivals (seed x 1000 + the rate's index)")
    p.add_argument(
        "--replicates", type=int, default=1, help="online: also run N-1 further arrival seeds and request slices, and report their mean and worst ratios"
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--rates", default="0.8,0.95,1.1,1.5", help="online arrival rates as fractions of capacity")
    p.add_argument(
        "--policies",
        default="fcfs,oracle,ltr,ltr-noguard,ltr-fair",
        help="comma-separated subset of fcfs, oracle, ltr (the ordering module's default guard, scores through the modelled scorer), "
        "ltr-instant (the same, scores at arrival), ltr-old (the 768:32 guard), ltr-noguard, ltr-fair (overtakes 2 x max_num_seqs); "
        "fcfs always runs",
    )
    p.add_argument(
        "--guards",
        default="",
        help="extra ranker policies, comma-separated guard designs: step:T:Q[:K] (the ordering module's guard: threshold, quantum, "
        "overtakes), rel:SIGNAL:K[:S] (promote after K x SIGNAL [+ S x mean service] waited steps), deadline:SIGNAL:W[:K] "
        "(rank by arrival + W x SIGNAL x the score's quantile [, promote after K x SIGNAL]); SIGNAL is wait, latency, queue, service or fcfs (queue + service)",
    )
    p.add_argument(
        "--validate-v5", action="store_true", help="simulate the committed real-vLLM run v5 (its trace, seeds, rates and overload rates) and compare"
    )

    g = p.add_argument_group("scores")
    g.add_argument("--scores", choices=("ranker", "tau"), default="ranker", help="ranker: the default bundle on the trace's prompts; tau: synthetic, at --tau")
    g.add_argument("--tau", type=float, default=0.6, help="--scores tau: the target Kendall tau-b against the output lengths")
    g.add_argument(
        "--scorer-rate",
        type=float,
        help="ltr: the sidecar scores this many prompts/s, one at a time in arrival order, and a request keeps its FCFS slot until "
        "scored (default 0: every score is there at arrival, as ltr-instant; --validate-v5: 60, what the v5 CPU sidecar managed, "
        "3.4 s for the 200-prompt burst)",
    )
    g.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="file caching the ranker's scores (ShareGPT ids and numbers only)")

    g = p.add_argument_group("engine and trace (default: the shape's)")
    g.add_argument("--max-num-seqs", type=int, help="slots in the running batch")
    g.add_argument("--max-num-batched-tokens", type=int, default=8192, help="token budget per step (decodes take 1, prefills their prompt)")
    g.add_argument("--no-chunked-prefill", action="store_true", help="a prompt that does not fit the step's token budget waits for the next step")
    g.add_argument("--step-ms", type=float, help="step time: this constant ...")
    g.add_argument("--step-ms-per-token", type=float, help="... plus this much per token scheduled in the step")
    g.add_argument(
        "--capacity", type=float, help="online rates are fractions of this many requests/s (0: measure it with an FCFS burst of the online requests)"
    )
    g.add_argument("--length-scale", type=float, help="output tokens = recorded answer length / this (the harness's flag)")
    g.add_argument("--max-output-tokens", type=int, help="cap on output tokens (the harness's flag)")
    g.add_argument("--max-prompt-tokens", type=int, help="prompts cut to this many tokens (the harness's flag)")
    g.add_argument("--prompt-tail-tokens", type=int, default=32, help="a cut prompt keeps its last N tokens (the harness's flag; v5 ran with 0)")
    g.add_argument("--burst-requests", type=int, help="requests in the burst")
    g.add_argument("--online-requests", type=int, help="requests per online rate")
    g.add_argument("--synthetic-requests", type=int, help="requests in the synthetic run (time to the first 10 %% done)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    for k, v in SHAPES[args.shape].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.validate_v5:
        args.shape, args.prompt_tail_tokens, args.seed = "cpu", 0, 0
        for k, v in SHAPES["cpu"].items():
            setattr(args, k, v)
        args.policies = "fcfs,oracle,ltr-old,ltr-instant,ltr-noguard,ltr-fair"
        args.workloads = "burst,online,synthetic"
        if args.scorer_rate is None:
            args.scorer_rate = V5_SCORER_RATE
    if args.scorer_rate is None:
        args.scorer_rate = 0.0
    if args.scorer_rate < 0:
        p.error("--scorer-rate must not be negative")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if bad := sorted(set(args.workloads) - set(WORKLOADS)):
        p.error(f"--workloads: unknown {bad}")
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates: {args.rates!r} is not comma-separated numbers")
    if not args.rates or min(args.rates) <= 0:
        p.error("--rates must be positive")
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    known = standard_policies(1)
    if bad := sorted(set(args.policies) - set(known)):
        p.error(f"--policies: unknown {bad}; known: {', '.join(known)}")
    if "fcfs" not in args.policies:
        args.policies.insert(0, "fcfs")
    if args.replicates < 1:
        p.error("--replicates must be at least 1")
    if not 0 < args.tau <= 1:
        p.error(f"--tau: {args.tau} is outside (0, 1]")
    if args.max_num_seqs < 1 or args.max_num_batched_tokens < 1 or args.step_ms <= 0 or args.step_ms_per_token < 0:
        p.error("--max-num-seqs and --max-num-batched-tokens must be at least 1, --step-ms positive, --step-ms-per-token not negative")
    if not 0 <= args.prompt_tail_tokens < args.max_prompt_tokens:
        p.error("--prompt-tail-tokens must be at least 0 and less than --max-prompt-tokens")
    return args


def load_requests(args: argparse.Namespace) -> tuple[Requests, str]:
    """The trace with scores, and a line saying what they are."""
    cfg = TraceConfig(args.seed, args.length_scale, args.max_output_tokens, args.max_prompt_tokens, args.prompt_tail_tokens)
    trace = real_trace(cfg, args.cache, not args.no_progress, score=args.scores == "ranker")
    if args.scores == "tau":
        trace = Requests(trace.prompt_tokens, trace.output_tokens, synthetic_scores(trace.output_tokens, args.tau, args.seed))
        return trace, f"synthetic scores at target tau {args.tau:g}"
    return trace, "the default ranker's scores"


def build_workloads(args: argparse.Namespace, trace: Requests, engine: Engine, replicate: int = 0) -> tuple[list[Workload], float]:
    """The harness's slices and arrivals (replicate 0), or further request slices and arrival seeds; and the capacity used."""
    nb, no, ns = args.burst_requests, args.online_requests, args.synthetic_requests
    online = trace.take(nb + replicate * no, no)
    capacity = args.capacity or measure_capacity(engine, online)
    out: list[Workload] = []
    if replicate == 0 and "burst" in args.workloads:
        out.append(Workload("burst", trace.take(0, nb), np.zeros(nb)))
    if "online" in args.workloads:
        for i, rate in enumerate(args.rates):
            seed = args.seed * 1000 + i + 7919 * replicate
            out.append(Workload(f"online@{rate:g}", online, online_arrivals(no, rate * capacity, seed)))
    if replicate == 0 and "synthetic" in args.workloads:
        out.append(Workload("synthetic", trace.take(nb + no, ns), np.zeros(ns), first_k=max(1, math.ceil(0.1 * ns))))
    return out, capacity


def make_policies(args: argparse.Namespace, trace: Requests) -> list[Policy]:
    std = standard_policies(args.max_num_seqs)
    policies = [std[name] for name in args.policies]
    names = {p.name for p in policies}
    for spec in (s.strip() for s in args.guards.split(",") if s.strip()):
        design = parse_guard(spec, trace.scores)
        if design.name not in names:
            policies.append(Policy(design.name, "ranker", design))
            names.add(design.name)
    return policies


def fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def guard_table(summaries: dict[str, dict[str, dict[str, Any]]], workloads: Sequence[str], policies: Sequence[str]) -> list[str]:
    """The issue's guard table: per policy and load, mean / p99 / max as ratios to FCFS, gain capture, guard cost."""
    head = "| policy | " + " | ".join(f"{w}: mean / p99 / max | capture | cost" for w in workloads) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(workloads)]
    for name in policies:
        cells = []
        for w in workloads:
            r = ratios(summaries[w]).get(name)
            if r is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{fmt(r['mean'])} / {fmt(r['p99'])} / {fmt(r['max'])}", fmt(r.get("capture")), fmt(r.get("guard_cost"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def workload_tables(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    for w, per in summaries.items():
        rat = ratios(per)
        lines += ["", f"### {w}", ""]
        first_k = "time_to_first_k_s" in per["fcfs"]
        cols = "| policy | mean s | p99 s | max s | mean steps | TTFT s | mean / FCFS | p99 / FCFS | max / FCFS | capture | guard cost | promoted |"
        lines += [cols + (" first K s | FCFS / first K |" if first_k else ""), "|---" * (cols.count("|") - 1 + (2 if first_k else 0)) + "|"]
        for name, s in per.items():
            r = rat[name]
            row = (
                f"| {name} | {fmt(s['mean'])} | {fmt(s['p99'])} | {fmt(s['max'])} | {s['mean_steps']:.0f} | {fmt(s['ttft_mean'])} | "
                f"{fmt(r['mean'])} | {fmt(r['p99'])} | {fmt(r['max'])} | {fmt(r.get('capture'))} | {fmt(r.get('guard_cost'))} | {s['promoted']} |"
            )
            if first_k:
                row += f" {fmt(s['time_to_first_k_s'])} | {fmt(r.get('first_k_speedup'))} |"
            lines.append(row)
    return lines


def validation_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Simulated against measured (v5) mean latency as a ratio to FCFS, and max as a ratio to FCFS."""
    lines = [
        "| workload | policy | mean / FCFS: measured | simulated | max / FCFS: measured | simulated | FCFS mean s: measured | simulated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w, measured in MEASURED_V5.items():
        if w not in summaries:
            continue
        sim = summaries[w]
        mf = measured["fcfs"]
        for name, (mean, _p99, mx) in measured.items():
            if name == "fcfs" or name not in sim:
                continue
            s = sim[name]
            lines.append(
                f"| {w} | {name} | {mean / mf[0]:.2f} | {s['mean'] / sim['fcfs']['mean']:.2f} | {mx / mf[2]:.2f} | "
                f"{s['max'] / sim['fcfs']['max']:.2f} | {mf[0]:.2f} | {sim['fcfs']['mean']:.2f} |"
            )
    if "synthetic" in summaries:
        sim = summaries["synthetic"]
        for name, k in MEASURED_V5_FIRST_K.items():
            if name != "fcfs" and name in sim:
                lines.append(
                    f"| synthetic | {name} | FCFS / first K: {MEASURED_V5_FIRST_K['fcfs'] / k:.2f} | "
                    f"{sim['fcfs']['time_to_first_k_s'] / sim[name]['time_to_first_k_s']:.2f} | | | first K s: {k:.2f} | {sim[name]['time_to_first_k_s']:.2f} |"
                )
    return lines


def plot(summaries: dict[str, dict[str, dict[str, Any]]], policies: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    online = sorted((float(w.split("@")[1]), w) for w in summaries if w.startswith("online@"))
    if not online:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in policies:
        if name == "fcfs":
            continue
        xs = [x for x, w in online if name in summaries[w]]
        for ax, key in zip(axes, ("mean", "max"), strict=True):
            ax.plot(xs, [ratios(summaries[w])[name][key] for x, w in online if name in summaries[w]], marker="o", label=name)
    for ax, key in zip(axes, ("mean", "max"), strict=True):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("arrival rate / capacity")
        ax.set_ylabel(f"{key} latency / FCFS's")
        ax.set_title(f"{key} latency, ratio to FCFS")
    axes[1].axhline(1.5, color="red", lw=0.8, ls=":")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replicate_summary(reps: list[dict[str, dict[str, dict[str, Any]]]], policies: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per online workload and policy, over replicates: the mean of each ratio, and the worst (largest) max ratio."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for w in reps[0]:
        if not w.startswith("online@"):
            continue
        out[w] = {}
        for name in policies:
            rs = [ratios(r[w])[name] for r in reps if name in r[w]]
            out[w][name] = {
                **{k: float(np.mean([r[k] for r in rs if k in r])) for k in ("mean", "p99", "max", "capture", "guard_cost") if any(k in r for r in rs)},
                "worst_max": float(max(r["max"] for r in rs)),
            }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    engine = Engine(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        chunked_prefill=not args.no_chunked_prefill,
        step_ms=args.step_ms,
        step_ms_per_token=args.step_ms_per_token,
    )
    trace, scores_note = load_requests(args)
    try:
        policies = make_policies(args, trace)
    except ValueError as e:
        print(f"python -m benchmarks.sim: error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    all_summaries: list[dict[str, dict[str, dict[str, Any]]]] = []
    capacity = 0.0
    rate_groups = [[0.8, 0.95, 1.1], [1.3, 1.5]] if args.validate_v5 else [args.rates]
    jobs = []
    for rep in range(args.replicates):
        for rates in rate_groups:
            args.rates = rates
            ws, cap = build_workloads(args, trace, engine, rep)
            if rates is not rate_groups[0]:
                ws = [w for w in ws if w.name.startswith("online@")]
            capacity = capacity or cap
            jobs.append((rep, ws))
    total = sum(len(ws) for _, ws in jobs) * len(policies)
    bar = tqdm(total=total, desc="simulating", unit="run", disable=args.no_progress, file=sys.stderr)
    by_rep: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}
    for rep, ws in jobs:
        by_rep.setdefault(rep, {}).update(run_all(engine, policies, ws, args.scorer_rate, lambda _: bar.update(1)))
    bar.close()
    all_summaries = [by_rep[r] for r in sorted(by_rep)]
    summaries = all_summaries[0]
    names = [p.name for p in policies]
    online = [w for w in summaries if w.startswith("online@")]
    tau_burst = kendall_tau(trace.take(0, args.burst_requests).scores, trace.take(0, args.burst_requests).output_tokens)
    header = (
        f"Shape {args.shape}: max_num_seqs {args.max_num_seqs}, step {args.step_ms:g} ms + {args.step_ms_per_token:g} ms/token, "
        f"token budget {args.max_num_batched_tokens} ({'chunked' if not args.no_chunked_prefill else 'whole'} prefill), "
        f"capacity {capacity:.4g} requests/s{' (measured: FCFS burst of the online requests)' if not args.capacity else ''}; "
        f"output tokens = recorded / {args.length_scale:g}, at most {args.max_output_tokens:,}; prompts cut to {args.max_prompt_tokens:,} "
        f"(tail {args.prompt_tail_tokens}); {scores_note}, tau-b {tau_burst:.3f} on the burst's requests; scorer "
        + (f"{args.scorer_rate:g} prompts/s" if args.scorer_rate else "instant")
        + f"; seed {args.seed}, {args.replicates} replicate(s)."
    )
    md = ["# Simulated serving", "", f"`python -m benchmarks.sim {' '.join(sys.argv[1:] if argv is None else argv)}`", "", header, ""]
    if online:
        md += [
            "## Guard table (the harness's seed)",
            "",
            "Ratios to FCFS in the same run; capture = (FCFS - policy) / (FCFS - oracle) mean; cost = mean / ltr-noguard's.",
            "",
        ]
        md += guard_table(summaries, online, names)
    rep_summary = replicate_summary(all_summaries, names) if args.replicates > 1 else None
    if rep_summary:
        md += ["", f"## Over {args.replicates} replicates (mean ratios; worst max ratio)", ""]
        md += ["| policy | " + " | ".join(f"{w}: mean / max (worst) | capture | cost" for w in online) + " |", "|---|" + "---|---|---|" * len(online)]
        for name in names:
            cells = []
            for w in online:
                r = rep_summary[w][name]
                cells += [f"{fmt(r['mean'])} / {fmt(r['max'])} ({fmt(r['worst_max'])})", fmt(r.get("capture")), fmt(r.get("guard_cost"))]
            md.append(f"| {name} | " + " | ".join(cells) + " |")
    if args.validate_v5:
        md += ["", "## Simulated against measured (real vLLM, run v5)", ""] + validation_table(summaries)
    md += ["", "## Per workload"] + workload_tables(summaries)
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "command": ["python", "-m", "benchmarks.sim", *(sys.argv[1:] if argv is None else argv)],
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "capacity_rps": capacity,
            "tau_b_burst": tau_burst,
            "summaries": summaries,
            "ratios": {w: ratios(per) for w, per in summaries.items()},
            "replicates": rep_summary,
            "seconds": time.perf_counter() - t0,
        }
        (args.out / "summary.json").write_text(json.dumps(result, indent=1, default=float))
        (args.out / "results.md").write_text(text)
        plot(summaries, names, args.out / "load.png", header[:160] + "...")
        print(f"wrote {args.out}/summary.json, results.md, load.png", file=sys.stderr)
    print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
