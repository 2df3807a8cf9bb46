"""The PNG plots: the burst's latency CDF, online latency against rate, synthetic completions over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .driver import Run


def plot(result: dict[str, Any], runs: list[Run], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    burst = [r for r in runs if r.workload == "burst" and not r.policy.startswith("ltr-guard-")]  # the sweep has its own table
    if burst:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in burst:
            lat = sorted(r.latency for r in run.records if r.latency is not None)
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=run.policy, drawstyle="steps-post")
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("fraction of requests finished")
        ax.set_title(f"Burst of {len(burst[0].records)} requests: latency CDF")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "burst_latency_cdf.png", dpi=120)
        plt.close(fig)
        written.append("burst_latency_cdf.png")
    summaries = result["summaries"]
    rates = result["config"]["rates"]
    if any(f"online@{r:g}" in per for per in summaries.values() for r in rates):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for policy, per in summaries.items():
            xs = [r for r in rates if f"online@{r:g}" in per]
            if len(xs) < 2 and policy.startswith("ltr-guard-"):
                continue  # sweep runs have one rate: shown in the table, not as a curve
            for ax, key in zip(axes, ("mean", "p99"), strict=True):
                ax.plot(xs, [per[f"online@{r:g}"]["latency"][key] for r in xs], marker="o", label=policy)
        for ax, key in zip(axes, ("mean", "p99"), strict=True):
            ax.set_xlabel("arrival rate / capacity")
            ax.set_ylabel(f"{key} latency (s)")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"Online (Poisson) arrivals; capacity {result['capacity_rps']:.2f} requests/s")
        fig.tight_layout()
        fig.savefig(out / "online_latency_vs_rate.png", dpi=120)
        plt.close(fig)
        written.append("online_latency_vs_rate.png")
    synthetic = [r for r in runs if r.workload == "synthetic"]
    if synthetic:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in synthetic:
            fin = sorted(r.finish for r in run.records if r.finish is not None)
            ax.plot(fin, range(1, len(fin) + 1), label=run.policy, drawstyle="steps-post")
        k = summaries["fcfs" if "fcfs" in summaries else synthetic[0].policy]["synthetic"]
        ax.axhline(k["first_k"], color="grey", lw=0.8, ls="--")
        ax.axvline(k["budget_s"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("time since submission (s)")
        ax.set_ylabel("requests completed")
        ax.set_title("Synthetic data generation: completions over time (K dashed, budget dotted)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "synthetic_completions.png", dpi=120)
        plt.close(fig)
        written.append("synthetic_completions.png")
    return written
