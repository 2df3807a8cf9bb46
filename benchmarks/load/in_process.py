"""The in-process baseline: the same model run by ONNX Runtime in this process, without gRPC."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .progress import Progress
from .prompts import PromptStream
from .report import percentiles_ms


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
