"""Overhead of the vLLM scheduler hook (ltr_client.vllm): engine steps per second vs stock FCFS.

One engine, three schedulers installed in turn on the idle engine, interleaved
over repetitions (the order rotates) so that drift on a shared machine hits
all of them alike:

- fcfs:      stock vLLM `Scheduler`;
- ltr:       `LTRScheduler` with a live sidecar (a separate process, as deployed);
- ltr-dead:  `LTRScheduler` pointed at a port nobody listens on (breaker opens).

Two workloads, each half short and half long requests, interleaved:

- same-prompt: one prompt for all, so every score ties and the hook keeps the
  FCFS order: the engine runs the same steps, and the steps/s ratio is the
  hook's overhead alone (target >= 0.98);
- mixed: "brief" prompts for the short half, "essay" for the long; the hook
  reorders, short requests finish far earlier, and since the same tokens then
  go into fewer, fuller steps, throughput (wall time) is the fair comparison.

It also measures the cost of ordering one step locally (what the hook does)
against a NextBatch RPC to the live sidecar, for a few queue sizes.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_CPU_KVCACHE_SPACE=1 \\
        .venv-vllm/bin/python benchmarks/hook_overhead.py --reps 5 --out hook_overhead.json

Without --model it builds a tiny random-weight Llama (CPU-friendly); without
--bundle, the tiny test ranker where "brief" prompts rank shortest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, only benchmarks/ itself is on sys.path; the shared modules are imported from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.tiny_llama import build_tiny_llama, set_vllm_env, word_level_tokenizer  # noqa: E402
from tools.sidecar_process import SidecarProcess, free_port  # noqa: E402

# Before vLLM's import, which reads them (see benchmarks/tiny_llama.py).
set_vllm_env()

BRIEF = ["brief brief answer", "brief answer please", "one word brief reply", "brief brief brief"]
ESSAY = ["essay essay about rome", "write an essay on history", "long essay essay please", "essay on the history of rome"]
VOCAB = sorted({w for p in BRIEF + ESSAY for w in p.split()} | {"the", "a", "of", "question", "explain", "detail"})
WORD_BIAS = {"brief": 5.0, "essay": -5.0}
SAME_PROMPT = "explain the question in detail"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="model directory for vLLM (default: build a tiny random Llama)")
    p.add_argument("--bundle", help="ranker bundle for the sidecar (default: build the tiny test ranker)")
    p.add_argument("--hidden-size", type=int, default=128, help="hidden size of the built model (multiple of 64); larger = slower steps")
    p.add_argument("--layers", type=int, default=2, help="layers of the built model")
    p.add_argument("--requests", type=int, default=96, help="requests per run, half short and half long, interleaved")
    p.add_argument("--short-tokens", type=int, default=8)
    p.add_argument("--long-tokens", type=int, default=48)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--reps", type=int, default=5, help="repetitions of each mode, interleaved")
    p.add_argument("--micro-sizes", default="16,256,1024", help="queue sizes for the local-vs-RPC ordering cost")
    p.add_argument("--micro-calls", type=int, default=200, help="calls per size in the ordering cost")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# Fixtures: model, bundle, sidecar process
# --------------------------------------------------------------------------


def build_tiny_llm(path: Path, hidden_size: int = 128, num_layers: int = 2) -> Path:
    """A small Llama with random weights and a word-level tokenizer over VOCAB (as in the tests)."""
    return build_tiny_llama(path, word_level_tokenizer(VOCAB), hidden_size=hidden_size, num_layers=num_layers, max_position_embeddings=512)


# --------------------------------------------------------------------------
# Engine runs
# --------------------------------------------------------------------------


def install(llm: Any, cls: type, **ltr: object) -> Any:
    """Replace the idle engine's scheduler with a new `cls` (the engine core runs in-process)."""
    core = llm.llm_engine.engine_core.engine_core
    old = core.scheduler
    assert not old.has_unfinished_requests()
    old.vllm_config.additional_config["ltr"] = dict(ltr)
    new = cls(
        vllm_config=old.vllm_config,
        kv_cache_config=old.kv_cache_config,
        structured_output_manager=old.structured_output_manager,
        block_size=old.block_size,
        hash_block_size=old.hash_block_size,
        include_finished_set=old.finished_req_ids_dict is not None,
        log_stats=old.log_stats,
    )
    new.finished_req_ids = old.finished_req_ids  # the next step tells the workers
    old.shutdown()
    core.scheduler = new
    return new


def timed(fn: Callable[..., Any], acc: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc.append(time.perf_counter() - t)

    return wrapper


def workload(n: int, short_tokens: int, long_tokens: int, same_prompt: bool = False) -> list[tuple[str, str, int]]:
    """n requests, long and short alternating; "brief" prompts for the short, "essay" ones for the long."""
    out = []
    for i in range(n):
        long = i % 2 == 0
        prompt = (ESSAY if long else BRIEF)[(i // 2) % 4]
        out.append((f"{'long' if long else 'short'}{i}", SAME_PROMPT if same_prompt else prompt, long_tokens if long else short_tokens))
    return out


def run_once(llm: Any, cls: type, ltr: dict[str, object], requests: list[tuple[str, str, int]]) -> dict[str, float]:
    from vllm import SamplingParams

    scheduler = install(llm, cls, **ltr)
    schedule_s: list[float] = []
    scheduler.schedule = timed(scheduler.schedule, schedule_s)
    engine = llm.llm_engine
    t0 = time.perf_counter()
    for rid, prompt, max_tokens in requests:
        engine.add_request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0))
    finished: dict[str, int] = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = steps
    seconds = time.perf_counter() - t0
    assert len(finished) == len(requests), "a request was lost"
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "schedule_us_per_step": 1e6 * sum(schedule_s) / len(schedule_s),
        "short_mean_finish_step": statistics.mean(s for r, s in finished.items() if r.startswith("short")),
        "long_mean_finish_step": statistics.mean(s for r, s in finished.items() if r.startswith("long")),
    }


# --------------------------------------------------------------------------
# Ordering one step: locally vs over NextBatch
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    priority: int
    ltr_state: Any


def ordering_cost(target: str, sizes: list[int], calls: int, max_num_seqs: int) -> list[dict[str, float]]:
    """Median cost of ordering n scored waiting requests once: `ranking.RankedTable.reorder` in-process vs the NextBatch RPC."""
    from ltr_client import Candidate, RankerClient, StarvationGuard
    from ltr_client.vllm.ranking import RankedTable, RankState

    guard = StarvationGuard()
    rng = random.Random(0)
    rows = []
    with RankerClient(target, timeout_s=5.0) as client:
        for n in sizes:
            items = [_Item(0, RankState(score=rng.uniform(-5, 5), last_run_step=rng.randrange(100))) for _ in range(n)]
            cands = [Candidate(f"r{i}", score=it.ltr_state.score, idle_steps=100 - it.ltr_state.last_run_step) for i, it in enumerate(items)]
            local, remote = [], []
            for _ in range(calls):
                # Full re-rank of an unsorted queue: the hook's worst case (it
                # skips ranking when nothing changed since the last step).
                queue = list(items)  # unranked each time
                t = time.perf_counter()
                RankedTable().reorder([queue], [False], 101, guard, max_num_seqs)
                local.append(time.perf_counter() - t)
                t = time.perf_counter()
                batch = client.next_batch(cands, max_num_seqs, 8192, guard)
                remote.append(time.perf_counter() - t)
                assert not batch.fallback, "NextBatch fell back: is the sidecar up?"
            rows.append({"n": n, "local_us": 1e6 * statistics.median(local), "rpc_us": 1e6 * statistics.median(remote)})
    return rows


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vllm import LLM
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from ltr_client.vllm import LTRScheduler

    tmp = Path(tempfile.mkdtemp(prefix="ltr-hook-bench-"))
    model = Path(args.model) if args.model else build_tiny_llm(tmp / "llm", args.hidden_size, args.layers)
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from tools.tiny_bundle import build_tiny_bundle

        bundle = build_tiny_bundle(tmp / "bundle", word_bias=WORD_BIAS)
    # In its own process, as deployed: it must not share the engine's GIL. One
    # inference thread: on a small shared machine the sidecar would otherwise
    # take every core from the engine, which a deployment avoids by giving it its own.
    sidecar = SidecarProcess("--model", str(bundle), "--intra-op-threads", "1")
    dead = f"127.0.0.1:{free_port()}"
    try:
        llm = LLM(
            model=str(model),
            scheduler_cls="ltr_client.vllm.LTRScheduler",
            additional_config={"ltr": {"enabled": False}},
            max_num_seqs=args.max_num_seqs,
            max_model_len=512,
            dtype="float32",
            enforce_eager=True,
            enable_prefix_caching=False,
            seed=0,
        )
        # vLLM's own class for this engine: AsyncScheduler when async scheduling is on (GPUs).
        core = llm.llm_engine.engine_core.engine_core
        stock = AsyncScheduler if core.vllm_config.scheduler_config.async_scheduling else Scheduler
        modes: dict[str, tuple[type, dict[str, object]]] = {
            "fcfs": (stock, {}),
            "ltr": (LTRScheduler, {"target": sidecar.target}),
            "ltr-dead": (LTRScheduler, {"target": dead}),
        }
        workloads = {
            # One prompt for all: every score ties, so the hook keeps FCFS
            # order and the engine runs the very same steps. The steps/s
            # ratio is then the hook's overhead alone (scoring thread,
            # ranking, bookkeeping) and nothing else.
            "same-prompt": workload(args.requests, args.short_tokens, args.long_tokens, same_prompt=True),
            # The real case: the hook reorders. It then packs the same tokens
            # into fewer, fuller steps, so compare wall time (tokens/s) here;
            # steps/s is biased against the hook.
            "mixed": workload(args.requests, args.short_tokens, args.long_tokens),
        }
        for requests in workloads.values():
            for cls, ltr in modes.values():
                run_once(llm, cls, ltr, requests)  # warm-up, discarded: first tokenizer load, first channel
        runs: dict[str, dict[str, list[dict[str, float]]]] = {w: {m: [] for m in modes} for w in workloads}
        names = list(modes)
        for rep in range(args.reps):
            for wname, requests in workloads.items():
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    cls, ltr = modes[name]
                    run = run_once(llm, cls, ltr, requests)
                    runs[wname][name].append(run)
                    print(f"rep {rep} {wname:11s} {name:8s} {run['steps_per_s']:7.1f} steps/s {run['seconds']:6.2f} s", flush=True)
        install(llm, stock)
        micro = ordering_cost(sidecar.target, [int(s) for s in args.micro_sizes.split(",")], args.micro_calls, args.max_num_seqs)
    finally:
        sidecar.stop()

    summary = {w: {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in by_mode.items()} for w, by_mode in runs.items()}

    def paired(wname: str, mode: str, key: str, inverse: bool = False) -> float:
        """Median over repetitions of mode/fcfs, each run paired with the FCFS run of its own repetition."""
        by_mode = runs[wname]
        pairs = zip(by_mode[mode], by_mode["fcfs"], strict=True)
        return statistics.median((f[key] / m[key]) if inverse else (m[key] / f[key]) for m, f in pairs)

    ratios = {
        f"{w}_{key}_{mode.replace('-', '_')}_vs_fcfs": paired(w, mode, metric, inverse)
        for w in workloads
        for mode in ("ltr", "ltr-dead")
        for key, metric, inverse in (
            ("steps_per_s", "steps_per_s", False),
            ("throughput", "seconds", True),  # same tokens: throughput ratio = inverse time ratio
        )
    }

    print()
    print(f"medians of {args.reps} interleaved runs; {args.requests} requests, max_num_seqs {args.max_num_seqs}")
    print(
        f"{'workload':11s} {'mode':9s} {'steps':>6s} {'steps/s':>8s} {'seconds':>8s} "
        f"{'sched us/step':>14s} {'short done@':>12s} {'long done@':>11s}"
    )
    for wname, by_mode in summary.items():
        for name, s in by_mode.items():
            print(
                f"{wname:11s} {name:9s} {s['steps']:6.0f} {s['steps_per_s']:8.1f} {s['seconds']:8.2f} "
                f"{s['schedule_us_per_step']:14.0f} {s['short_mean_finish_step']:12.1f} {s['long_mean_finish_step']:11.1f}"
            )
    print()
    print("ratios vs FCFS (median over repetitions of each run / the FCFS run of its repetition), target >= 0.98:")
    print(f"  {'workload':11s} {'mode':9s} {'steps/s':>8s} {'throughput':>11s}")
    for w in workloads:
        for mode in ("ltr", "ltr-dead"):
            m = mode.replace("-", "_")
            print(
                f"  {w:11s} {mode:9s} {ratios[f'{w}_steps_per_s_{m}_vs_fcfs']:8.3f} {ratios[f'{w}_throughput_{m}_vs_fcfs']:11.3f}"
            )
    print("  (same-prompt: identical steps, so steps/s is the overhead alone; mixed: the hook reorders and")
    print("   packs the same tokens into fewer, fuller steps, so throughput is the fair figure there)")
    # The engine thread's share, from time inside schedule(): much less noisy
    # than end-to-end ratios on a shared machine, but blind to the scoring
    # thread's GIL time, which the ratios above include.
    same = summary["same-prompt"]
    step_us = 1e6 / same["fcfs"]["steps_per_s"]
    for mode in ("ltr", "ltr-dead"):
        extra = same[mode]["schedule_us_per_step"] - same["fcfs"]["schedule_us_per_step"]
        ratios[f"schedule_extra_us_per_step_{mode.replace('-', '_')}"] = extra
        print(f"  {mode}: schedule() costs {extra:+.0f} us per step over FCFS = {100 * extra / step_us:+.2f}% of a {step_us:.0f} us step")
    print()
    print("ordering one step, median:")
    print(f"  {'queue':>6s} {'local rank us':>14s} {'NextBatch RPC us':>17s}")
    for row in micro:
        print(f"  {row['n']:6d} {row['local_us']:14.0f} {row['rpc_us']:17.0f}")
    if args.out:
        result = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "median": summary,
            "ratios": ratios,
            "ordering_cost": micro,
        }
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
