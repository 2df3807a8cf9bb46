"""`ltr-sidecar bench`: load-test a sidecar on loopback against the same model run in-process.

Everything is measured in one run (the in-process baseline, Score at several
concurrencies, NextBatch, and optionally memory growth), so the ratios compare
like with like even on a noisy machine. The sidecar is a subprocess started
here, or with --target one already running on this machine: the tool refuses
any other host, because numbers taken across a network measure the network.

Every Score item carries a prompt the server has not seen before (a numbered
variant of a sample prompt): the score cache is keyed by prompt, so repeating
prompts would measure cache lookups instead of inference. The in-process
baseline scores the same numbered variants, so both sides tokenize and run the
same inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import DEFAULT_BUNDLE, BundleError, load_bundle

# The project's targets; the figures are judged against them in the table and with --check.
TARGETS: dict[str, tuple[str, float]] = {
    "score_saturation_ratio": (">=", 0.85),
    "score_c1_p50_overhead_ms": ("<=", 1.5),
    "nextbatch_4096_p99_ms": ("<=", 5.0),
    "rss_ratio": ("<=", 1.10),
}
SYNTHETIC_PROMPTS = 400
WARMUP_CALLS = 64


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the bench flags on `p` (the `bench` subcommand's parser)."""
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


# --- targets ---------------------------------------------------------------


class BenchError(Exception):
    """The benchmark cannot run as asked (bad target, sidecar did not start, model mismatch)."""


def parse_loopback_target(target: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT on loopback; raises BenchError for anything else, without resolving names."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", target.strip())
    if m is None:
        raise BenchError(f"--target {target!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051")
    host, port = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise BenchError(f"--target {target!r}: port out of range")
    # Names other than localhost are refused rather than resolved: DNS could
    # point anywhere, and this tool only measures loopback.
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BenchError(f"--target {target!r}: {host} is not loopback; bench only talks to 127.0.0.0/8, ::1 or localhost")
    return host, int(port)


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- prompts ---------------------------------------------------------------

_TASKS = [
    "Write a short poem about {t}.",
    "Explain {t} in detail, with examples.",
    "What is {t}?",
    "Give me a one-word answer: is {t} important?",
    "Summarize the history of {t} in one sentence.",
    "Write an essay of about 1500 words on {t}.",
    "List ten facts about {t}, each with a long description.",
    "Translate 'I like {t}' into French.",
    "Compare {t} and {u} in a table.",
    "Describe {t} to a five-year-old.",
    "Write a Python function related to {t} and explain how it works step by step.",
    "Yes or no: have you heard of {t}?",
    "Tell me a long story about {t} and {u}.",
    "Give three bullet points on {t}.",
    "Draft an email to my manager about {t}.",
    "Write a detailed tutorial on {t} for beginners, with exercises.",
]
_TOPICS = [
    "the sea", "quantum computing", "the Roman empire", "sourdough bread", "black holes", "machine learning",
    "the French revolution", "photosynthesis", "jazz music", "climate change", "the stock market", "chess openings",
    "volcanoes", "the human heart", "electric cars", "medieval castles", "sorting algorithms", "honey bees",
    "the moon landing", "coffee", "renaissance painting", "tax returns", "marathon training", "garden tomatoes",
    "neural networks", "the printing press", "coral reefs", "public transport", "vaccines", "the blues",
    "desert plants", "space probes", "interest rates", "the violin", "cloud computing", "ancient Egypt",
]
_SUBJECTS = ["my team", "the customer", "our old system", "a friend of mine", "the report", "the teacher", "this project", "the city council"]
_VERBS = ["needs", "mentions", "ignores", "depends on", "changed", "describes", "questions", "improves"]
_OBJECTS = ["the budget", "a new plan", "the last release", "the schedule", "several risks", "the main goal", "the data", "an odd result"]


def synthetic_prompts(n: int = SYNTHETIC_PROMPTS, seed: int = 0) -> list[str]:
    """`n` varied English prompts, from a few words to a few hundred, the same for the same seed."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        t, u = rng.sample(_TOPICS, 2)
        task = rng.choice(_TASKS).format(t=t, u=u)
        # About a third carry pasted context, as chat prompts often do; its
        # length spreads prompts over short, medium and longer than the model
        # reads, so the length buckets of a batch are as mixed as in practice.
        if rng.random() < 0.35:
            sentences = [
                f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
                for _ in range(int(rng.choice([2, 4, 8, 16, 32, 48])))
            ]
            task = f"Context: {' '.join(sentences)}\n{task}"
        prompts.append(task)
    return prompts


def load_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one per line) or JSONL (a "prompt" field per line); blank lines are skipped."""
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{n}: not valid JSON: {e}") from e
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt:
                raise BenchError(f"{path}:{n}: a JSON line needs a non-empty string \"prompt\"")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if not prompts:
        raise BenchError(f"{path}: no prompts")
    return prompts


class PromptStream:
    """Endless prompts that never repeat: sample prompt i mod n, numbered so the score cache always misses."""

    def __init__(self, prompts: Sequence[str]):
        self.prompts = list(prompts)
        self.next_seq = 0

    def take(self, k: int) -> list[tuple[str, str]]:
        """The next k (request_id, prompt) pairs."""
        start, self.next_seq = self.next_seq, self.next_seq + k
        n = len(self.prompts)
        return [(f"bench-{s}", f"{self.prompts[s % n]} (#{s})") for s in range(start, start + k)]


# --- the sidecar subprocess -------------------------------------------------


class SidecarProcess:
    """A sidecar started with `python -m ltr_sidecar serve` on loopback; its stderr is drained by a thread."""

    def __init__(self, argv: list[str], startup_timeout_s: float):
        self.argv = argv
        # The pipe must be read continuously: a full pipe would block the server's logging.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.tail: deque[str] = deque(maxlen=40)
        self.serving: dict[str, Any] | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="sidecar-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                self.stop()
                raise BenchError(f"the sidecar exited with status {self.proc.returncode} before serving:\n" + "".join(self.tail))
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the sidecar did not log 'serving' within {startup_timeout_s:g} s:\n" + "".join(self.tail))
        host, _, port = str(self.serving["address"]).rpartition(":")  # type: ignore[index]
        self.host = host.strip("[]")
        self.port = int(port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line)
            if self.serving is None and '"serving"' in line:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("msg") == "serving" and "address" in entry:
                    self.serving = entry
                    self._ready.set()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS of a process from /proc (Linux); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used, from /proc/PID/stat (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- progress and statistics -------------------------------------------------


class Progress:
    """One self-overwriting status line on stderr, redrawn at most 5 times a second; silent off a terminal."""

    def __init__(self, label: str, total: int, duration_s: float | None, enabled: bool):
        self.label, self.total, self.duration_s = label, total, duration_s
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.perf_counter()
        self._drawn = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        elapsed = now - self.started
        frac = done / self.total if self.total else 0.0
        if self.duration_s:
            frac = max(frac, elapsed / self.duration_s)
        bar = "#" * int(20 * min(frac, 1.0))
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r  {self.label:<24} [{bar:<20}] {done}/{self.total}  {elapsed:5.1f}s  {rate:8.1f}/s\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    p50, p90, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4)}


# --- the in-process baseline ------------------------------------------------


@dataclass
class InProcessResult:
    batch_size: int
    calls: int
    items: int
    seconds: float
    items_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


def run_in_process(
    ranker: Any, stream: PromptStream, batch_size: int, max_items: int, duration_s: float, show: bool, latencies: list[float] | None = None
) -> InProcessResult:
    """Score the stream's prompts in chunks of `batch_size` with `ranker.score_texts`, timing each call (into `latencies` if given)."""
    latencies = [] if latencies is None else latencies
    items = 0
    progress = Progress(f"in-process batch={batch_size}", max_items, duration_s, show)
    started = time.perf_counter()
    end = started + duration_s
    while items < max_items and time.perf_counter() < end:
        chunk = [p for _, p in stream.take(min(batch_size, max_items - items))]
        t0 = time.perf_counter()
        ranker.score_texts(chunk)
        latencies.append(time.perf_counter() - t0)
        items += len(chunk)
        progress.update(items)
    seconds = time.perf_counter() - started
    progress.close()
    return InProcessResult(batch_size, len(latencies), items, round(seconds, 4), round(items / seconds, 2), **percentiles_ms(latencies))


# --- gRPC load ---------------------------------------------------------------


@dataclass
class LoadResult:
    concurrency: int
    calls: int
    items: int
    seconds: float
    items_per_s: float
    calls_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    cached_items: int = 0  # should stay 0: every prompt is new to the server
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None


async def _closed_loop(
    call: Callable[[], Any],
    concurrency: int,
    max_calls: int,
    duration_s: float,
    progress: Progress,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[float], Counter[str], float]:
    """Keep `concurrency` calls in flight until max_calls were issued or duration_s passed.

    `call()` returns an awaitable; its result is passed to nothing, errors are
    counted by status code. Returns (latencies of successful calls, errors, seconds).
    """
    import grpc

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    started = time.perf_counter()
    end = started + duration_s

    async def worker() -> None:
        nonlocal issued
        while issued < max_calls and time.perf_counter() < end:
            issued += 1
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
            else:
                latencies.append(time.perf_counter() - t0)
            done = len(latencies) + sum(errors.values())
            progress.update(done)
            if on_done is not None:
                on_done(done)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    progress.close()
    return latencies, errors, seconds


class LoadClient:
    """The gRPC side: one shared grpc.aio channel to the sidecar."""

    def __init__(self, address: str, timeout_s: float):
        import grpc

        from ltr_client.api import ranker_pb2_grpc

        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = ranker_pb2_grpc.RankerServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def model_info(self) -> Any:
        from ltr_client.api import ranker_pb2 as pb

        await asyncio.wait_for(self.channel.channel_ready(), self.timeout_s)
        return await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout_s)

    def score_call(self, stream: PromptStream, items_per_call: int, cached: list[int]) -> Callable[[], Any]:
        from ltr_client.api import ranker_pb2 as pb

        async def call() -> None:
            request = pb.ScoreRequest(items=[pb.ScoreItem(request_id=r, prompt=p) for r, p in stream.take(items_per_call)])
            response = await self.stub.Score(request, timeout=self.timeout_s)
            cached[0] += sum(1 for s in response.scores if s.cached)

        return call

    async def score_level(
        self,
        stream: PromptStream,
        concurrency: int,
        items_per_call: int,
        max_calls: int,
        duration_s: float,
        server_pid: int | None,
        show: bool,
        latencies_out: list[float] | None = None,
    ) -> LoadResult:
        cached = [0]
        cpu0, own0 = (read_cpu_seconds(server_pid) if server_pid else None), _own_cpu_seconds()
        progress = Progress(f"Score c={concurrency}", max_calls, duration_s, show)
        latencies, errors, seconds = await _closed_loop(self.score_call(stream, items_per_call, cached), concurrency, max_calls, duration_s, progress)
        cpu1 = read_cpu_seconds(server_pid) if server_pid else None
        if latencies_out is not None:
            latencies_out.extend(latencies)
        calls = len(latencies)
        return LoadResult(
            concurrency=concurrency,
            calls=calls,
            items=calls * items_per_call,
            seconds=round(seconds, 4),
            items_per_s=round(calls * items_per_call / seconds, 2),
            calls_per_s=round(calls / seconds, 2),
            **percentiles_ms(latencies),
            errors=dict(errors),
            cached_items=cached[0],
            server_cpu_s=round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None,
            client_cpu_s=round(_own_cpu_seconds() - own0, 3),
        )


def nextbatch_requests(n: int, max_num_seqs: int, max_num_batched_tokens: int, seed: int, form: str, variants: int = 4) -> list[Any]:
    """A few NextBatch requests shaped like a busy engine step: every candidate already carries a score.

    About a quarter run (decode: 1 token each); the rest wait with prefill
    chunks of 16 to 2048 tokens. A few carry starvation counters or a priority.
    `form` is "columns" (CandidateColumns) or "messages" (one Candidate each);
    both forms of the same seed describe the same candidates.
    """
    from ltr_client.api import ranker_pb2 as pb

    rng = np.random.default_rng(seed)
    budget = pb.Budget(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    requests = []
    for v in range(variants):
        ids = [f"nb{v}-{i}" for i in range(n)]
        scores = rng.normal(0.0, 1.0, n).astype(np.float32)
        running = rng.random(n) < min(0.25, max_num_seqs / max(n, 1) * 1.5)
        num_tokens = np.where(running, 1, np.minimum(rng.integers(16, 2049, n), max_num_batched_tokens))
        idle = np.where(rng.random(n) < 0.1, rng.integers(1, 300, n), 0)
        priority = np.where(np.arange(n) % 97 == 0, -1, 0)
        if form == "columns":
            columns = pb.CandidateColumns(
                request_ids=ids,
                scores=scores.tolist(),
                running=running.tolist(),
                num_tokens=num_tokens.tolist(),
                priorities=priority.tolist(),
                idle_steps=idle.tolist(),
            )
            requests.append(pb.NextBatchRequest(columns=columns, budget=budget))
            continue
        candidates = []
        for i in range(n):
            c = pb.Candidate(request_id=ids[i], score=float(scores[i]), running=bool(running[i]), num_tokens=int(num_tokens[i]), idle_steps=int(idle[i]))
            if priority[i]:
                c.priority = int(priority[i])
            candidates.append(c)
        requests.append(pb.NextBatchRequest(candidates=candidates, budget=budget))
    return requests


async def nextbatch_load(client: LoadClient, args: argparse.Namespace, form: str, show: bool) -> dict[str, Any]:
    """NextBatch calls one at a time, timed end to end by the client (encoding and decoding included)."""
    requests = nextbatch_requests(args.candidates, args.max_num_seqs, args.max_num_batched_tokens, args.seed, form)
    turn = [0]

    async def call() -> None:
        turn[0] += 1
        await client.stub.NextBatch(requests[turn[0] % len(requests)], timeout=client.timeout_s)

    await _closed_loop(call, 1, 10, args.duration, Progress("warm-up", 10, None, False))
    progress = Progress(f"NextBatch {form} n={args.candidates}", args.nextbatch_calls, args.duration, show)
    latencies, errors, seconds = await _closed_loop(call, 1, args.nextbatch_calls, args.duration, progress)
    result = {
        "form": form,
        "candidates": args.candidates,
        "request_bytes": requests[0].ByteSize(),
        "calls": len(latencies),
        "seconds": round(seconds, 4),
        **percentiles_ms(latencies),
        "errors": dict(errors),
    }
    _note(f"NextBatch {form} n={args.candidates}: p50 {_fmt(result['p50_ms'], 3)} ms, p99 {_fmt(result['p99_ms'], 3)} ms")
    return result


# --- the run ----------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("ltr-sidecar", "onnxruntime", "onnxruntime-gpu", "grpcio", "protobuf", "numpy", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _server_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        sys.executable, "-m", "ltr_sidecar", "serve",
        "--model", str(args.model),
        "--host", "127.0.0.1",
        "--port", "0",
        "--metrics-port", "-1",
        "--max-batch-size", str(args.max_batch_size),
        "--intra-op-threads", str(args.intra_op_threads),
        "--max-items", str(max(8192, args.candidates, args.items_per_call)),
        "--grace", "2",
        "--log-format", "json",
        "--log-level", "info",
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
        yield _grpc_address(host, port), None
        return
    proc = SidecarProcess(_server_argv(args), args.startup_timeout)
    try:
        yield _grpc_address(proc.host, proc.port), proc
    finally:
        proc.stop()


def _providers(args: argparse.Namespace) -> list[str] | None:
    return [p.strip() for p in args.providers.split(",") if p.strip()] or None


def _figures(report: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    batched = report["in_process"]["batch"]["items_per_s"]
    single_p50 = report["in_process"]["single"]["p50_ms"]
    levels = report["score"]
    best = max((lv["items_per_s"] for lv in levels), default=None)
    c1 = next((lv for lv in levels if lv["concurrency"] == 1 and lv["p50_ms"] is not None), None)
    figures: dict[str, float | None] = {
        "score_saturation_ratio": round(best / batched, 4) if best and batched else None,
        "score_best_items_per_s": best,
        "inprocess_batch_items_per_s": batched,
        "score_c1_p50_overhead_ms": round(c1["p50_ms"] - single_p50, 4) if c1 and single_p50 is not None else None,
    }
    pairs = list(zip(report["_paired"]["in_process"], report["_paired"]["grpc"]))
    if pairs:
        # Same prompt, both ways: the median of the per-prompt differences is the overhead itself.
        figures["score_c1_p50_overhead_ms"] = round(float(np.median([g - i for i, g in pairs])) * 1e3, 4)
        figures["score_c1_paired_prompts"] = len(pairs)
    # The columns form is the one meant for large batches, so it carries the target's name.
    if "columns" in report["nextbatch"]:
        figures[f"nextbatch_{args.candidates}_p99_ms"] = report["nextbatch"]["columns"]["p99_ms"]
    if "messages" in report["nextbatch"]:
        figures[f"nextbatch_{args.candidates}_messages_p99_ms"] = report["nextbatch"]["messages"]["p99_ms"]
    if report.get("memory"):
        figures["rss_ratio"] = report["memory"]["rss_ratio"]
    return figures


def _judge(figures: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for name, (op, limit) in TARGETS.items():
        value = figures.get(name)
        if value is None:
            continue
        ok = value >= limit if op == ">=" else value <= limit
        verdicts[name] = {"value": value, "target": f"{op} {limit:g}", "pass": ok}
    return verdicts


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(report: dict[str, Any]) -> None:
    """The human-readable table, on stdout."""
    m, model = report["machine"], report["model"]
    print(f"\nltr-sidecar bench: {model['version']} ({model['provider']}), {m['usable_cores']} cores, {m['cpu_model'] or m['machine']}")
    s = report["settings"]
    print(f"max batch size {s['max_batch_size']}, {s['items_per_call']} item(s) per Score call, {report['prompts']['count']} sample prompts ({report['prompts']['source']})")
    print("\nin-process (ONNX Runtime, no gRPC)")
    print(f"  {'batch':>5} {'calls':>7} {'items/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for r in report["in_process"].values():
        print(f"  {r['batch_size']:>5} {r['calls']:>7} {_fmt(r['items_per_s'], 1):>10} {_fmt(r['p50_ms'], 3):>8} {_fmt(r['p90_ms'], 3):>8} {_fmt(r['p99_ms'], 3):>8}")
    print("\nScore over gRPC")
    print(f"  {'conc':>5} {'calls':>7} {'items/s':>10} {'calls/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'srv cpu':>8} {'cli cpu':>8}  errors")
    for r in report["score"]:
        errors = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "0"
        print(
            f"  {r['concurrency']:>5} {r['calls']:>7} {_fmt(r['items_per_s'], 1):>10} {_fmt(r['calls_per_s'], 1):>10} {_fmt(r['p50_ms'], 3):>8} "
            f"{_fmt(r['p90_ms'], 3):>8} {_fmt(r['p99_ms'], 3):>8} {_fmt(r['server_cpu_s'], 1):>8} {_fmt(r['client_cpu_s'], 1):>8}  {errors}"
        )
    print(f"\nNextBatch, {s['candidates']} scored candidates, concurrency 1, client-measured")
    print(f"  {'form':<9} {'req KiB':>8} {'calls':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  errors")
    for nb in report["nextbatch"].values():
        errors = ", ".join(f"{k}={v}" for k, v in nb["errors"].items()) or "0"
        print(f"  {nb['form']:<9} {nb['request_bytes'] / 1024:>8.1f} {nb['calls']:>7} {_fmt(nb['p50_ms'], 3):>8} {_fmt(nb['p90_ms'], 3):>8} {_fmt(nb['p99_ms'], 3):>8}  {errors}")
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
        print(f"  {name:<30} {_fmt(value, 3):>10}{judged}")
    print(f"\ntotal run time {report['total_seconds']:.1f} s")


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

        _note(f"Score: warming up ({WARMUP_CALLS} calls)")
        await _closed_loop(client.score_call(stream, args.items_per_call, [0]), min(8, max(args.concurrency)), WARMUP_CALLS, args.duration, Progress("warm-up", WARMUP_CALLS, None, False))
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
            _note(f"Score c={c}: {result.items_per_s:.1f} items/s, p50 {_fmt(result.p50_ms, 3)} ms, p99 {_fmt(result.p99_ms, 3)} ms, errors {sum(result.errors.values())}")

        forms = ("columns", "messages") if args.nextbatch_form == "both" else (args.nextbatch_form,)
        for form in forms:
            report["nextbatch"][form] = await nextbatch_load(client, args, form, show)

        if args.memory_calls > 0:
            if proc is None:
                _note("memory: skipped (needs a sidecar started by bench, not --target)")
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
    latencies, errors, seconds = await _closed_loop(
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
    _note(f"memory: RSS {result['rss_first_mib']} MiB after {checkpoint} calls, {result['rss_end_mib']} MiB after {args.memory_calls}")
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
        "machine": _machine(),
        "versions": _versions(),
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
        from .ranker import OnnxRanker

        show = not args.quiet
        ranker = OnnxRanker(bundle, _providers(args), args.intra_op_threads)
        ranker.score_texts([p for _, p in stream.take(args.max_batch_size)])  # warm-up
        paired["start"] = stream.next_seq
        single = run_in_process(ranker, stream, 1, args.requests, args.duration, show, paired["in_process"])
        batch = run_in_process(ranker, stream, args.max_batch_size, max(args.requests, 4 * args.max_batch_size), args.duration, show)
        report["in_process"] = {"single": asdict(single), "batch": asdict(batch)}
        _note(f"in-process: batch 1 {single.items_per_s:.1f} items/s (p50 {_fmt(single.p50_ms, 3)} ms), batch {batch.batch_size} {batch.items_per_s:.1f} items/s")
        # Free the session and its thread pool before the load: they would compete with the server.
        del ranker
        gc.collect()

    _note(f"starting the sidecar: {args.model}" if not args.target else f"using the sidecar at {args.target}")
    with _sidecar(args) as (address, proc):
        if proc is not None:
            report["server"] = {"argv": proc.argv[1:], "pid": proc.pid, "rss_at_start_mib": round((read_rss_bytes(proc.pid) or 0) / 2**20, 2)}
        asyncio.run(_load_phases(args, address, proc, stream, report, baseline))
    report["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["figures"] = _figures(report, args)
    del report["_paired"]
    report["targets"] = _judge(report["figures"])
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    return report


def main(args: argparse.Namespace) -> int:
    """The `bench` subcommand: 0 when it ran (1 with --check and a missed target or a failed call), 2 when it could not."""
    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C, so the sidecar subprocess is stopped rather than orphaned.
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run(args)
    except BenchError as e:
        print(f"ltr-sidecar bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltr-sidecar bench: interrupted; the sidecar was stopped", file=sys.stderr)
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
