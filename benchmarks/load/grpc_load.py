"""The load over gRPC: closed-loop Score calls at a concurrency, and NextBatch calls one at a time."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .procfs import own_cpu_seconds, read_cpu_seconds
from .progress import Progress, note
from .prompts import PromptStream
from .report import fmt, percentiles_ms


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


async def closed_loop(
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
        cpu0, own0 = (read_cpu_seconds(server_pid) if server_pid else None), own_cpu_seconds()
        progress = Progress(f"Score c={concurrency}", max_calls, duration_s, show)
        latencies, errors, seconds = await closed_loop(self.score_call(stream, items_per_call, cached), concurrency, max_calls, duration_s, progress)
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
            client_cpu_s=round(own_cpu_seconds() - own0, 3),
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

    await closed_loop(call, 1, 10, args.duration, Progress("warm-up", 10, None, False))
    progress = Progress(f"NextBatch {form} n={args.candidates}", args.nextbatch_calls, args.duration, show)
    latencies, errors, seconds = await closed_loop(call, 1, args.nextbatch_calls, args.duration, progress)
    result = {
        "form": form,
        "candidates": args.candidates,
        "request_bytes": requests[0].ByteSize(),
        "calls": len(latencies),
        "seconds": round(seconds, 4),
        **percentiles_ms(latencies),
        "errors": dict(errors),
    }
    note(f"NextBatch {form} n={args.candidates}: p50 {fmt(result['p50_ms'], 3)} ms, p99 {fmt(result['p99_ms'], 3)} ms")
    return result
