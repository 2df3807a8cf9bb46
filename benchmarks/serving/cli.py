"""`python -m benchmarks.serving`: the flags, and the run as a whole (every policy, then the results)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import benchmarks.serving as serving_package

from .baselines import fit_bucket, ranker_check
from .driver import Run
from .engine import build_engine_model
from .events import log
from .metrics import figures, guard_sweep_rows
from .plots import plot
from .policies import POLICIES, guard_policy_name, make_policies
from .report import json_safe, machine_info, markdown, print_figures, print_summaries
from .runner import Bench, run_policy
from .trace import decode_prompts, load_split, load_trace, take

WORKLOADS = ("burst", "online", "synthetic")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=(serving_package.__doc__ or "").split("\n\n")[0],
        epilog="The defaults take 15-20 minutes on a 2-core CPU. See benchmarks/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("serving-results"), help="directory for results.json, results.md and the PNG plots")
    p.add_argument("--seed", type=int, default=0, help="seeds the trace sample, the Poisson arrivals and the engines")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated subset of {', '.join(POLICIES)}; fcfs always runs first")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {', '.join(WORKLOADS)}")

    g = p.add_argument_group("trace")
    g.add_argument("--length-scale", type=float, default=4.0, help="max_tokens = recorded answer length / this factor (at least 1 token)")
    g.add_argument("--max-output-tokens", type=int, default=256, help="cap on max_tokens after scaling")
    g.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=128,
        help="prompts are cut to this many engine tokens: the default bundle reads at most 112, "
        "and on a CPU long prefills would crowd out the decode steps that ordering is about",
    )
    g.add_argument(
        "--prompt-tail-tokens",
        type=int,
        default=32,
        help="a prompt longer than --max-prompt-tokens keeps its last N tokens and fills the rest from its start, "
        "so the ranker sees about what it would read of the whole prompt (the default bundle reads a long prompt's first 80 "
        "and last 32 of its own tokens; the engine's may split differently); 0 keeps only the start, as runs up to "
        "cpu-2core-steps-v5 did",
    )
    g.add_argument("--burst-requests", type=int, default=200, help="requests in the burst workload")
    g.add_argument("--online-requests", type=int, default=120, help="requests per online rate")
    g.add_argument("--rates", default="0.5,0.8,0.95,1.1", help="online arrival rates as fractions of capacity")
    g.add_argument("--capacity", type=float, default=0.0, help="capacity in requests/s for the online rates (0: measure it from the FCFS burst run)")
    g.add_argument("--synthetic-requests", type=int, default=200, help="requests in the synthetic data-generation workload")
    g.add_argument("--first-k-fraction", type=float, default=0.1, help="synthetic: K = this fraction of the requests; time until the first K complete")
    g.add_argument(
        "--synthetic-budget-s",
        type=float,
        default=0.0,
        help="synthetic: count completions within this many seconds (0: half the FCFS burst makespan, scaled to the synthetic size; 60 without an FCFS burst)",
    )

    g = p.add_argument_group("engine")
    g.add_argument("--hidden-size", type=int, default=384, help="hidden size of the built tiny Llama (multiple of 64); step time grows with it")
    g.add_argument("--layers", type=int, default=6, help="layers of the built tiny Llama")
    g.add_argument("--max-num-seqs", type=int, default=8, help="vLLM max_num_seqs: few slots, so that requests queue as on a loaded GPU")
    g.add_argument("--max-model-len", type=int, default=0, help="vLLM max_model_len (0: max prompt + max output tokens)")
    g.add_argument(
        "--model-config",
        type=Path,
        help="GPU variant: a Hugging Face config.json (e.g. Llama-3-8B's) run with --load-format dummy instead of the tiny Llama; untested on CPU",
    )
    g.add_argument("--load-format", default="auto", help="vLLM load_format; use 'dummy' with --model-config (random weights, no download)")
    g.add_argument("--dtype", default="float32", help="vLLM dtype (float32 on CPU; 'auto' or bfloat16 on a GPU)")
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True, help="vLLM enforce_eager (no CUDA graphs)")
    g.add_argument(
        "--engine-threads",
        type=int,
        default=1,
        help="OpenMP threads of the CPU engine (OMP_NUM_THREADS). One leaves a core to the sidecar: an OpenMP team that shares its cores with "
        "another busy process waits at every barrier for a descheduled thread, and its steps slow down tenfold (0: leave OMP_NUM_THREADS alone)",
    )
    g.add_argument("--warmup-requests", type=int, default=4, help="short requests run on each fresh engine before measuring")

    g = p.add_argument_group("ranker")
    g.add_argument("--bundle", type=Path, help="ranker bundle for the sidecar, whose tokenizer.json the engine also uses (none: the packaged default bundle)")
    # Defaults are the products' own: the default sidecar (one ONNX Runtime
    # thread per core, sharing them with the engine) and the hook at its
    # defaults, as a user first runs them. The figures hold only if that works.
    g.add_argument(
        "--sidecar-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads of the sidecar (its --intra-op-threads; 0, its default: one per core, shared with the engine here)",
    )
    g.add_argument(
        "--ltr-deadline-ms",
        type=float,
        default=None,
        help="the hook's deadline_ms (unset: the hook's default, which sizes its calls to fit a busy CPU sidecar)",
    )
    g.add_argument("--ltr-max-batch", type=int, default=None, help="the hook's max_batch (unset: the hook's default)")
    g.add_argument(
        "--ltr-score-wait-ms",
        type=float,
        default=0.0,
        help="the hook's score_wait_ms for every LTR policy but ltr-instant: how long a step may wait for scores in flight when it must "
        "choose among waiting requests (0, the hook's default: never). With --clock steps the waits count as time",
    )
    g.add_argument(
        "--guard-sweep",
        default="",
        help="extra LTR runs with these starvation guards, on the burst and on the online workload at the highest rate: "
        "THRESHOLD:QUANTUM[:OVERTAKES] triples separated by commas (the hook's starvation_threshold, _quantum and _overtakes; 0 = off)",
    )
    g.add_argument("--bucket-train-examples", type=int, default=0, help="fit the bucket classifier on the first N train examples (0: all)")

    g.add_argument(
        "--clock",
        choices=("wall", "steps"),
        default="wall",
        help="wall: arrivals and latencies on the machine's clock. steps: on a virtual clock that advances a fixed step time per engine step "
        "(the FCFS burst's mean, or --step-ms), so that every policy's arrivals fall on the same steps however fast the machine is at the time",
    )
    g.add_argument("--step-ms", type=float, default=0.0, help="--clock steps: the step time (0: the first burst run's mean step time)")

    g = p.add_argument_group("limits")
    g.add_argument("--run-timeout-s", type=float, default=600.0, help="a workload run aborts its unfinished requests after this many seconds")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    args = p.parse_args(argv)
    args.policies = _names(args.policies, POLICIES, "--policies")
    args.workloads = _names(args.workloads, WORKLOADS, "--workloads")
    args.rates = sorted(float(r) for r in args.rates.split(",") if r.strip())
    args.guard_sweep = [_guard(pair) for pair in args.guard_sweep.split(",") if pair.strip()]
    if args.length_scale <= 0 or args.max_output_tokens < 1 or args.max_prompt_tokens < 1:
        p.error("--length-scale must be positive, --max-output-tokens and --max-prompt-tokens at least 1")
    if not 0 <= args.prompt_tail_tokens < args.max_prompt_tokens:
        p.error("--prompt-tail-tokens must be at least 0 and less than --max-prompt-tokens")
    if "online" in args.workloads and (not args.rates or min(args.rates) <= 0):
        p.error("--rates must be positive fractions")
    measures_capacity = "fcfs" in args.policies and "burst" in args.workloads
    if (("online" in args.workloads and args.rates) or args.guard_sweep) and args.capacity <= 0 and not measures_capacity:
        p.error("the online workload needs --capacity, or fcfs and burst in the run to measure it")
    if args.clock == "steps" and args.step_ms <= 0 and "burst" not in args.workloads:
        p.error("--clock steps needs --step-ms, or the burst workload to measure the step time")
    if args.model_config and args.load_format == "auto":
        args.load_format = "dummy"
    if not args.max_model_len:
        args.max_model_len = args.max_prompt_tokens + args.max_output_tokens
    return args


def _names(text: str, known: Sequence[str], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"{flag}: unknown {unknown}; known: {', '.join(known)}")
    return [n for n in known if n in names]  # fcfs first: the others' figures and the capacity need it


def _guard(spec: str) -> tuple[int, int, int]:
    parts = [int(x) if x.strip() else 0 for x in spec.split(":")]
    if not 1 <= len(parts) <= 3 or min(parts) < 0:
        raise SystemExit(f"--guard-sweep: {spec!r} is not THRESHOLD:QUANTUM[:OVERTAKES] with non-negative integers")
    return (parts + [0, 0])[0], (parts + [0, 0])[1], (parts + [0, 0])[2]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.engine_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.engine_threads)  # before torch is imported, which reads it once
    args.out.mkdir(parents=True, exist_ok=True)

    from ltr_client import RankerClient
    from ltr_sidecar.bundle import DEFAULT_BUNDLE
    from tools.sidecar_process import SidecarProcess

    bundle = (args.bundle or DEFAULT_BUNDLE).resolve()
    tokenizer_json = bundle / "tokenizer.json"
    split = load_split()
    trace = load_trace(split, tokenizer_json, args)
    n_burst, n_online, n_synthetic = args.burst_requests, args.online_requests, args.synthetic_requests
    bench = Bench(
        args,
        burst=take(trace, 0, n_burst),
        online=take(trace, n_burst, n_online),
        synthetic=take(trace, n_burst + n_online, n_synthetic),
        warmup=take(trace, n_burst + n_online + n_synthetic, args.warmup_requests),
        capacity=args.capacity,
        budget_s=args.synthetic_budget_s,
        step_s=args.step_ms / 1000,
    )
    log("trace", test_examples=len(trace), burst=n_burst, online=n_online, synthetic=n_synthetic, seed=args.seed)

    skipped: dict[str, str] = {}
    bucket_expected: dict[str, float] = {}
    if "bucket" in args.policies:
        t = time.perf_counter()
        predict, why = fit_bucket(split, tokenizer_json, args)
        if predict is None:
            skipped["bucket"] = why
            args.policies.remove("bucket")
            log("policy_skipped", policy="bucket", reason=why)
        else:
            served = bench.burst + bench.online + bench.synthetic
            expected = predict(decode_prompts(tokenizer_json, [r.prompt_ids for r in served]))
            bucket_expected = {r.sharegpt_id: float(x) for r, x in zip(served, expected, strict=True)}
            log("bucket_fitted", detail=why, seconds=round(time.perf_counter() - t, 1))

    summaries: dict[str, dict[str, Any]] = {}
    hook_configs: dict[str, dict[str, Any]] = {}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ltr-serving-bench-") as tmp:
        bench.model = build_engine_model(Path(tmp), tokenizer_json, args)
        # No score cache: the same prompts recur across workloads and policies,
        # and cache hits would make the hook's later runs look faster than a
        # stream of new prompts allows.
        sidecar = SidecarProcess("--model", str(bundle), "--intra-op-threads", str(args.sidecar_threads), "--cache-size", "0")
        try:
            with RankerClient(sidecar.target, timeout_s=10.0) as client:
                info = client.model_info()
            ranker = {"name": info.name, "version": info.version, "model_sha256": info.model_sha256, "max_input_tokens": info.max_input_tokens} if info else {}
            log("sidecar_up", target=sidecar.target, **ranker)
            burst_texts = decode_prompts(tokenizer_json, [r.prompt_ids for r in bench.burst])
            check = ranker_check(sidecar.target, burst_texts, bench.burst, [bucket_expected[r.sharegpt_id] for r in bench.burst] if bucket_expected else None)
            log("ranker_check", **check)
            policies = make_policies(args, sidecar.target, (lambda r: round(bucket_expected[r.sharegpt_id])) if bucket_expected else None)
            schedule = [(name, args.workloads) for name in args.policies]
            sweep_workloads = (["burst"] if "burst" in args.workloads else []) + ["online-top"]
            schedule += [(guard_policy_name(g), sweep_workloads) for g in args.guard_sweep]
            for name, workloads in schedule:
                per: dict[str, Any] = {}
                runs += run_policy(bench, policies[name], workloads, per)
                if "hook_config" in per:
                    hook_configs[name] = per.pop("hook_config")
                summaries[name] = per
        finally:
            sidecar.stop()

    figs = figures({p: s for p, s in summaries.items() if not p.startswith("ltr-guard-")}, args.rates if "online" in args.workloads else [])
    total = time.perf_counter() - started
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ranker": ranker,
        "hook_config": hook_configs,
        "engine": {"model": str(args.model_config) if args.model_config else f"tiny Llama {args.hidden_size} hidden x {args.layers} layers, random weights"},
        "trace": {"source": "ShareGPT V3 test split (seed 0, val 0.1, test 0.2)", "test_examples": len(trace)},
        "capacity_rps": bench.capacity,
        "clock": {"kind": args.clock, "step_s": bench.step_s if args.clock == "steps" else None},
        "ranker_check": check,
        "skipped": skipped,
        "summaries": summaries,
        "figures": [{**asdict(f), "passed": f.passed} for f in figs],
        "runs": [
            {"policy": r.policy, "workload": r.workload, "wall_s": r.wall_s, "steps": r.steps, "aborted": r.aborted, "records": [asdict(x) for x in r.records]}
            for r in runs
        ],
        "total_wall_s": total,
    }
    if args.guard_sweep:
        swept = [w for w in ("burst", f"online@{args.rates[-1]:g}") if any(w in per for p, per in summaries.items() if p.startswith("ltr-guard-"))]
        result["guard_sweep"] = [{"workload": w, "rows": guard_sweep_rows(args, w, summaries, hook_configs)} for w in swept]
    result["plots"] = plot(result, runs, args.out)
    (args.out / "results.json").write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
    (args.out / "results.md").write_text(markdown(result, figs))

    print_summaries(summaries)
    print_figures(figs)
    for sweep in result.get("guard_sweep", []):
        print()
        print(f"starvation guard sweep, LTR on {sweep['workload']} (seconds, and engine steps):")
        print(f"  {'policy':20s} {'N':>5s} {'M':>5s} {'K':>5s} {'mean':>8s} {'p99':>8s} {'max':>8s} {'mean st':>8s} {'max st':>8s}")
        for row in sweep["rows"]:
            print(
                f"  {row['policy']:20s} {row['threshold']!s:>5s} {row['quantum']!s:>5s} {row.get('overtakes', 0)!s:>5s} {row['mean']:8.2f} {row['p99']:8.2f} {row['max']:8.2f} "
                f"{row['mean_steps']:8.0f} {row['max_steps']:8.0f}"
            )
    for policy, why in skipped.items():
        print(f"skipped {policy}: {why}")
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {', '.join(result['plots'])}")
    print(f"total run time {total:.0f} s")
    return 0
