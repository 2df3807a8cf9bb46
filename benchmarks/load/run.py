"""One run: start the sidecar (or use --target), run the baseline and every load phase, and return the report."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ltr_sidecar.bundle import BundleError, load_bundle
from tools.sidecar_process import SidecarProcess, SidecarStartError, grpc_address

from .grpc_load import LoadClient, closed_loop, nextbatch_load
from .in_process import run_in_process
from .procfs import read_rss_bytes
from .progress import Progress, note
from .prompts import SYNTHETIC_PROMPTS, PromptStream, load_prompts, synthetic_prompts
from .report import figures, fmt, judge, machine, versions
from .target import BenchError, parse_loopback_target

WARMUP_CALLS = 64


def server_args(args: argparse.Namespace) -> list[str]:
    """The `serve` flags of the sidecar started here (SidecarProcess adds loopback, port 0, no metrics, JSON logs)."""
    argv = [
        "--model", str(args.model),
        "--max-batch-size", str(args.max_batch_size),
        "--intra-op-threads", str(args.intra_op_threads),
        "--max-items", str(max(8192, args.candidates, args.items_per_call)),
        "--grace", "2",
    ]  # fmt: skip
    for flag, value in (("--max-delay-ms", args.max_delay_ms), ("--cache-size", args.cache_size), ("--max-queue", args.max_queue)):
        if value is not None:
            argv += [flag, str(value)]
    if args.providers:
        argv += ["--providers", args.providers]
    return argv


@contextmanager
def _sidecar(args: argparse.Namespace) -> Iterator[tuple[str, SidecarProcess | None]]:
    if args.target:
        host, port = parse_loopback_target(args.target)
        yield grpc_address(host, port), None
        return
    try:
        proc = SidecarProcess(*server_args(args), startup_timeout_s=args.startup_timeout)
    except SidecarStartError as e:
        raise BenchError(str(e)) from e
    try:
        yield proc.target, proc
    finally:
        proc.stop(grace_s=10)


def providers(args: argparse.Namespace) -> list[str] | None:
    return [p.strip() for p in args.providers.split(",") if p.strip()] or None


async def _load_phases(
    args: argparse.Namespace, address: str, proc: SidecarProcess | None, stream: PromptStream, report: dict[str, Any], run_baseline: Callable[[], None]
) -> None:
    client = LoadClient(address, args.timeout)
    show = not args.quiet
    pid = proc.pid if proc else None
    try:
        info = await client.model_info()
        local = report["model"]
        if info.model_sha256 != local["model_sha256"]:
            raise BenchError(
                f"the sidecar at {address} serves {info.name}@{info.version} (model sha256 {info.model_sha256[:12]}), "
                f"not --model {local['version']} ({local['model_sha256'][:12]}): the comparison would be meaningless"
            )
        local["provider"] = info.execution_provider
        local["max_input_tokens"] = info.max_input_tokens

        # The baseline runs now, with the sidecar loaded and idle, so both see the same machine state.
        run_baseline()

        note(f"Score: warming up ({WARMUP_CALLS} calls)")
        await closed_loop(client.score_call(stream, args.items_per_call, [0]), min(8, max(args.concurrency)), WARMUP_CALLS, args.duration, Progress("warm-up", WARMUP_CALLS, None, False))
        paired = report["_paired"]
        for c in args.concurrency:
            if c == 1 and args.items_per_call == 1:
                # The server never saw these prompts (the baseline ran in-process), so the cache still misses.
                replay = PromptStream(stream.prompts)
                replay.next_seq = paired["start"]
                result = await client.score_level(replay, c, 1, args.requests, args.duration, pid, show, paired["grpc"])
            else:
                result = await client.score_level(stream, c, args.items_per_call, args.requests, args.duration, pid, show)
            report["score"].append(asdict(result))
            note(f"Score c={c}: {result.items_per_s:.1f} items/s, p50 {fmt(result.p50_ms, 3)} ms, p99 {fmt(result.p99_ms, 3)} ms, errors {sum(result.errors.values())}")

        forms = ("columns", "messages") if args.nextbatch_form == "both" else (args.nextbatch_form,)
        for form in forms:
            report["nextbatch"][form] = await nextbatch_load(client, args, form, show)

        if args.memory_calls > 0:
            if proc is None:
                note("memory: skipped (needs a sidecar started here, not --target)")
            else:
                report["memory"] = await _memory_phase(client, stream, proc, args, show)
    finally:
        await client.close()


async def _memory_phase(client: LoadClient, stream: PromptStream, proc: SidecarProcess, args: argparse.Namespace, show: bool) -> dict[str, Any]:
    checkpoint = max(1, args.memory_calls // 10)
    first: list[int | None] = [None]

    def on_done(done: int) -> None:
        if first[0] is None and done >= checkpoint:
            first[0] = read_rss_bytes(proc.pid)

    progress = Progress("memory", args.memory_calls, None, show)
    # No duration bound here: the point is the number of calls.
    latencies, errors, seconds = await closed_loop(
        client.score_call(stream, 1, [0]), args.memory_concurrency, args.memory_calls, float("inf"), progress, on_done
    )
    end = read_rss_bytes(proc.pid)
    if first[0] is None or end is None:
        raise BenchError(f"cannot read VmRSS of the sidecar (pid {proc.pid}) from /proc")
    result = {
        "calls": args.memory_calls,
        "concurrency": args.memory_concurrency,
        "first_checkpoint_calls": checkpoint,
        "rss_first_mib": round(first[0] / 2**20, 2),
        "rss_end_mib": round(end / 2**20, 2),
        "rss_ratio": round(end / first[0], 4),
        "seconds": round(seconds, 2),
        "errors": dict(errors),
    }
    note(f"memory: RSS {result['rss_first_mib']} MiB after {checkpoint} calls, {result['rss_end_mib']} MiB after {args.memory_calls}")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase and return the report (what --out writes). Raises BenchError."""
    started = time.perf_counter()
    if args.target:
        parse_loopback_target(args.target)  # refuse before loading anything
    if args.memory_calls < 0:
        raise BenchError("--memory-calls must not be negative")
    try:
        bundle = load_bundle(args.model)
    except BundleError as e:
        raise BenchError(str(e)) from e
    if args.prompts is not None:
        try:
            prompts, source = load_prompts(args.prompts), str(args.prompts)
        except OSError as e:
            raise BenchError(f"--prompts: {e}") from e
    else:
        prompts, source = synthetic_prompts(SYNTHETIC_PROMPTS, args.seed), f"synthetic, seed {args.seed}"
    stream = PromptStream(prompts)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("func", "command")}
    report: dict[str, Any] = {
        "figures": {},
        "targets": {},
        "machine": machine(),
        "versions": versions(),
        "model": {"path": str(args.model), "version": bundle.model_version, "model_sha256": bundle.model_sha256, "max_length": bundle.max_length},
        "settings": settings,
        "prompts": {"count": len(prompts), "source": source, "mean_chars": round(sum(map(len, prompts)) / len(prompts), 1)},
        "in_process": {},
        "score": [],
        "nextbatch": {},
    }

    # Concurrency 1 over gRPC replays the very prompts the in-process single-item
    # run scored, so the overhead compares like with like (prompt lengths vary a lot).
    paired: dict[str, Any] = {"start": 0, "in_process": [], "grpc": []}
    report["_paired"] = paired

    def baseline() -> None:
        from ltr_sidecar.ranker import OnnxRanker

        show = not args.quiet
        ranker = OnnxRanker(bundle, providers(args), args.intra_op_threads)
        ranker.score_texts([p for _, p in stream.take(args.max_batch_size)])  # warm-up
        paired["start"] = stream.next_seq
        single = run_in_process(ranker, stream, 1, args.requests, args.duration, show, paired["in_process"])
        batch = run_in_process(ranker, stream, args.max_batch_size, max(args.requests, 4 * args.max_batch_size), args.duration, show)
        report["in_process"] = {"single": asdict(single), "batch": asdict(batch)}
        note(f"in-process: batch 1 {single.items_per_s:.1f} items/s (p50 {fmt(single.p50_ms, 3)} ms), batch {batch.batch_size} {batch.items_per_s:.1f} items/s")
        # Free the session and its thread pool before the load: they would compete with the server.
        del ranker
        gc.collect()

    note(f"starting the sidecar: {args.model}" if not args.target else f"using the sidecar at {args.target}")
    with _sidecar(args) as (address, proc):
        if proc is not None:
            report["server"] = {"argv": proc.argv[1:], "pid": proc.pid, "rss_at_start_mib": round((read_rss_bytes(proc.pid) or 0) / 2**20, 2)}
        asyncio.run(_load_phases(args, address, proc, stream, report, baseline))
    report["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["figures"] = figures(report, args)
    del report["_paired"]
    report["targets"] = judge(report["figures"])
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    return report
