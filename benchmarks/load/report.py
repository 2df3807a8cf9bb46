"""The figures, judged against the project's targets; the machine and versions they were taken on; the table on stdout."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from .procfs import cpu_model

# The project's targets; the figures are judged against them in the table and with --check.
TARGETS: dict[str, tuple[str, float]] = {
    "score_saturation_ratio": (">=", 0.85),
    "score_c1_p50_overhead_ms": ("<=", 1.5),
    "nextbatch_4096_p99_ms": ("<=", 5.0),
    "rss_ratio": ("<=", 1.10),
}


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p90 and p99 of latencies in seconds, in milliseconds (None for no latencies)."""
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    p50, p90, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4)}


def versions() -> dict[str, str]:
    """Python's and the serving stack's versions, for the report."""
    out = {"python": platform.python_version()}
    for dist in ("ltr-sidecar", "onnxruntime", "onnxruntime-gpu", "grpcio", "protobuf", "numpy", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    """The machine the figures were taken on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def figures(report: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    """The headline figures of a run's report, named as in TARGETS where one applies."""
    batched = report["in_process"]["batch"]["items_per_s"]
    single_p50 = report["in_process"]["single"]["p50_ms"]
    levels = report["score"]
    best = max((lv["items_per_s"] for lv in levels), default=None)
    c1 = next((lv for lv in levels if lv["concurrency"] == 1 and lv["p50_ms"] is not None), None)
    out: dict[str, float | None] = {
        "score_saturation_ratio": round(best / batched, 4) if best and batched else None,
        "score_best_items_per_s": best,
        "inprocess_batch_items_per_s": batched,
        "score_c1_p50_overhead_ms": round(c1["p50_ms"] - single_p50, 4) if c1 and single_p50 is not None else None,
    }
    pairs = list(zip(report["_paired"]["in_process"], report["_paired"]["grpc"]))
    if pairs:
        # Same prompt, both ways: the median of the per-prompt differences is the overhead itself.
        out["score_c1_p50_overhead_ms"] = round(float(np.median([g - i for i, g in pairs])) * 1e3, 4)
        out["score_c1_paired_prompts"] = len(pairs)
    # The columns form is the one meant for large batches, so it carries the target's name.
    if "columns" in report["nextbatch"]:
        out[f"nextbatch_{args.candidates}_p99_ms"] = report["nextbatch"]["columns"]["p99_ms"]
    if "messages" in report["nextbatch"]:
        out[f"nextbatch_{args.candidates}_messages_p99_ms"] = report["nextbatch"]["messages"]["p99_ms"]
    if report.get("memory"):
        out["rss_ratio"] = report["memory"]["rss_ratio"]
    return out


def judge(figures: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each figure that has a target: its value, the target, and whether it passed."""
    verdicts = {}
    for name, (op, limit) in TARGETS.items():
        value = figures.get(name)
        if value is None:
            continue
        ok = value >= limit if op == ">=" else value <= limit
        verdicts[name] = {"value": value, "target": f"{op} {limit:g}", "pass": ok}
    return verdicts


def fmt(value: Any, digits: int = 2) -> str:
    """A figure for the table: floats to `digits` places, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table, on stdout."""
    m, model = report["machine"], report["model"]
    print(f"\nload test: {model['version']} ({model['provider']}), {m['usable_cores']} cores, {m['cpu_model'] or m['machine']}")
    s = report["settings"]
    print(f"max batch size {s['max_batch_size']}, {s['items_per_call']} item(s) per Score call, {report['prompts']['count']} sample prompts ({report['prompts']['source']})")
    print("\nin-process (ONNX Runtime, no gRPC)")
    print(f"  {'batch':>5} {'calls':>7} {'items/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for r in report["in_process"].values():
        print(f"  {r['batch_size']:>5} {r['calls']:>7} {fmt(r['items_per_s'], 1):>10} {fmt(r['p50_ms'], 3):>8} {fmt(r['p90_ms'], 3):>8} {fmt(r['p99_ms'], 3):>8}")
    print("\nScore over gRPC")
    print(f"  {'conc':>5} {'calls':>7} {'items/s':>10} {'calls/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'srv cpu':>8} {'cli cpu':>8}  errors")
    for r in report["score"]:
        errors = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "0"
        print(
            f"  {r['concurrency']:>5} {r['calls']:>7} {fmt(r['items_per_s'], 1):>10} {fmt(r['calls_per_s'], 1):>10} {fmt(r['p50_ms'], 3):>8} "
            f"{fmt(r['p90_ms'], 3):>8} {fmt(r['p99_ms'], 3):>8} {fmt(r['server_cpu_s'], 1):>8} {fmt(r['client_cpu_s'], 1):>8}  {errors}"
        )
    print(f"\nNextBatch, {s['candidates']} scored candidates, concurrency 1, client-measured")
    print(f"  {'form':<9} {'req KiB':>8} {'calls':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  errors")
    for nb in report["nextbatch"].values():
        errors = ", ".join(f"{k}={v}" for k, v in nb["errors"].items()) or "0"
        print(f"  {nb['form']:<9} {nb['request_bytes'] / 1024:>8.1f} {nb['calls']:>7} {fmt(nb['p50_ms'], 3):>8} {fmt(nb['p90_ms'], 3):>8} {fmt(nb['p99_ms'], 3):>8}  {errors}")
    mem = report.get("memory")
    if mem:
        errors = ", ".join(f"{k}={v}" for k, v in mem["errors"].items()) or "0"
        print(f"\nmemory, {mem['calls']} single-item Score calls at concurrency {mem['concurrency']}")
        print(f"  server RSS after {mem['first_checkpoint_calls']} calls {mem['rss_first_mib']:.1f} MiB, at the end {mem['rss_end_mib']:.1f} MiB, ratio {mem['rss_ratio']:.3f}, errors {errors}")
    print("\nfigures")
    verdicts = report["targets"]
    for name, value in report["figures"].items():
        verdict = verdicts.get(name)
        judged = f"  target {verdict['target']}: {'PASS' if verdict['pass'] else 'FAIL'}" if verdict else ""
        print(f"  {name:<30} {fmt(value, 3):>10}{judged}")
    print(f"\ntotal run time {report['total_seconds']:.1f} s")

