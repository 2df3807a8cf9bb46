"""The command line: `python -m benchmarks.load` and its flags."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltr_sidecar.bundle import DEFAULT_BUNDLE

from .prompts import SYNTHETIC_PROMPTS
from .report import print_report
from .run import run
from .target import BenchError


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be a positive integer")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be positive")
    return x


def _concurrency_list(value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated integers, e.g. 1,4,16,64") from None
    if not levels or min(levels) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected positive integers, e.g. 1,4,16,64")
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Start a sidecar on loopback (or use --target), load it with Score and NextBatch calls at several "
        "concurrencies, and compare with the same model run in-process, measured in the same run.",
    )
    g = p.add_argument_group("what to measure")
    g.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="ranker bundle the sidecar serves and the in-process baseline runs (default: %(default)s)")
    g.add_argument("--target", metavar="HOST:PORT", help="benchmark a sidecar already running on this machine instead of starting one; only loopback hosts (127.0.0.0/8, ::1, localhost) are accepted, and it must serve --model with --max-batch-size")
    g.add_argument("--prompts", type=Path, help="prompt file: one prompt per line, or JSONL with a \"prompt\" field (default: %d built-in synthetic English prompts)" % SYNTHETIC_PROMPTS)
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts and NextBatch candidates (default: %(default)s)")
    g = p.add_argument_group("Score load")
    g.add_argument("--concurrency", type=_concurrency_list, default=[1, 4, 16, 64], help="Score calls in flight, one level after another, comma-separated (default: 1,4,16,64)")
    g.add_argument("--requests", type=_positive_int, default=20_000, help="most Score calls per concurrency level, and most calls or items per in-process mode (default: %(default)s)")
    g.add_argument("--duration", type=_positive_float, default=10.0, help="most seconds per concurrency level and per in-process mode; whichever of --requests and --duration comes first ends it (default: %(default)s)")
    g.add_argument("--items-per-call", type=_positive_int, default=1, help="prompts per Score call (default: %(default)s)")
    g.add_argument("--timeout", type=_positive_float, default=30.0, help="deadline of each call in seconds (default: %(default)s)")
    g = p.add_argument_group("NextBatch load")
    g.add_argument("--candidates", type=_positive_int, default=4096, help="candidates per NextBatch call, all carrying a score (default: %(default)s)")
    g.add_argument("--nextbatch-calls", type=_positive_int, default=1000, help="most NextBatch calls per wire form, one at a time, also bounded by --duration (default: %(default)s)")
    g.add_argument("--nextbatch-form", choices=("columns", "messages", "both"), default="both", help="how candidates travel: as CandidateColumns (the form for large batches, judged against the target), as one Candidate message each, or both measured one after the other (default: %(default)s)")
    g.add_argument("--max-num-seqs", type=_positive_int, default=256, help="NextBatch budget: most sequences per step (default: %(default)s)")
    g.add_argument("--max-num-batched-tokens", type=_positive_int, default=8192, help="NextBatch budget: most tokens per step (default: %(default)s)")
    g = p.add_argument_group("memory")
    g.add_argument("--memory-calls", type=int, default=0, help="after the other phases, issue this many single-item Score calls and compare the server's RSS after the first 10%% with RSS at the end; needs a sidecar started here (default: %(default)s, skipped)")
    g.add_argument("--memory-concurrency", type=_positive_int, default=16, help="Score calls in flight during the memory phase (default: %(default)s)")
    g = p.add_argument_group("the sidecar started here (ignored with --target, except --max-batch-size and --intra-op-threads)")
    g.add_argument("--max-batch-size", type=_positive_int, default=32, help="the sidecar's most prompts per model call; the in-process baseline runs batches of this size too (default: %(default)s)")
    g.add_argument("--intra-op-threads", type=int, default=0, help="ONNX Runtime threads per model call, for the sidecar and the baseline alike (0: one per core; default: %(default)s)")
    g.add_argument("--max-delay-ms", type=float, help="the sidecar's --max-delay-ms (default: the server's own default)")
    g.add_argument("--cache-size", type=int, help="the sidecar's --cache-size (default: the server's own default)")
    g.add_argument("--max-queue", type=_positive_int, help="the sidecar's --max-queue (default: the server's own default)")
    g.add_argument("--providers", default="", help="ONNX Runtime execution providers, comma-separated, for the sidecar and the baseline (default: the server's automatic choice)")
    g.add_argument("--startup-timeout", type=_positive_float, default=120.0, help="seconds the sidecar may take to log that it is serving (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="also write every figure, setting and version as JSON to this file")
    g.add_argument("--check", action="store_true", help="exit with status 1 if any measured figure misses its target or any call failed")
    g.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """0 when it ran (1 with --check and a missed target or a failed call), 2 when it could not."""
    args = build_parser().parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C, so the sidecar subprocess is stopped rather than orphaned.
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run(args)
    except BenchError as e:
        print(f"benchmarks.load: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.load: interrupted; the sidecar was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_report(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.check:
        phases = [*report["score"], *report["nextbatch"].values(), *([report["memory"]] if report.get("memory") else [])]
        failed_calls = sum(sum(r["errors"].values()) for r in phases)
        missed = [name for name, v in report["targets"].items() if not v["pass"]]
        if failed_calls or missed:
            print(f"--check: {failed_calls} failed calls; missed targets: {', '.join(missed) or 'none'}", file=sys.stderr)
            return 1
    return 0

