"""Scoring service logic: cache first, then the micro-batched ranker, then the served model's calibration. No gRPC here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .batcher import MicroBatcher
from .online_calibration import Calibrator, Features
from .ranker import OnnxRanker
from .score_cache import ScoreCache, prompt_key


@dataclass(frozen=True)
class ScoreInput:
    """One request to score: its id and either its prompt or its token ids."""

    request_id: str
    prompt: str | None = None
    token_ids: Sequence[int] | None = None

    @property
    def key(self) -> bytes:
        return prompt_key(self.prompt, self.token_ids)


@dataclass(frozen=True)
class ScoreResult:
    score: float
    cached: bool
    # The served model's calibration that moved the score; "" for the base ranker.
    calibration_version: str = ""


class Scorer:
    """Scores requests for the servicer: deduplicates, consults the cache, batches the rest."""

    def __init__(
        self,
        ranker: OnnxRanker,
        *,
        cache_size: int,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
        calibrator: Calibrator | None = None,
    ):
        """The sizes have no defaults here: `config.ServerConfig` holds them.

        With a `calibrator` (online calibration) the ranker must output its pooled embedding; each
        prompt's features are cached beside its score, by prompt and by request id, for Observe."""
        self.ranker = ranker
        self.calibrator = calibrator
        self.cache: ScoreCache[float] = ScoreCache(cache_size)
        self.features: ScoreCache[Features] = ScoreCache(cache_size if calibrator is not None else 0)
        self.batcher: MicroBatcher[ScoreInput, tuple[float, Features | None]] = MicroBatcher(
            self._run_batch, max_batch_size=max_batch_size, max_delay_s=max_delay_s, max_queue=max_queue, on_batch=on_batch
        )

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def score(self, inputs: Sequence[ScoreInput], deadline: float | None = None, model: str = "") -> list[ScoreResult]:
        """One result per input; calibrated to `model` when it has a promoted calibration.
        Raises batcher.Overloaded, batcher.NeverFits or batcher.DeadlineExpired."""
        calibrating = self.calibrator is not None
        results: list[ScoreResult | None] = [None] * len(inputs)
        features: list[Features | None] = [None] * len(inputs)
        pending: dict[bytes, list[int]] = {}  # identical prompts in one call are scored once
        for i, item in enumerate(inputs):
            key = item.key
            if key in pending:
                pending[key].append(i)
                continue
            score = self.cache.get(key)
            feature = self.features.get(key) if calibrating else None
            if score is not None and (feature is not None or not calibrating):
                self.cache.remember_id(item.request_id, key)
                self.features.remember_id(item.request_id, key)
                results[i], features[i] = ScoreResult(score, cached=True), feature
            else:
                pending[key] = [i]
        if pending:
            firsts = [inputs[rows[0]] for rows in pending.values()]
            scored = await self.batcher.submit(firsts, deadline)
            for (key, rows), (score, feature) in zip(pending.items(), scored):
                for i in rows:
                    self.cache.put(inputs[i].request_id, key, score)
                    if feature is not None:
                        self.features.put(inputs[i].request_id, key, feature)
                    results[i], features[i] = ScoreResult(score, cached=False), feature
        if calibrating and model:
            return self._calibrate(results, features, model)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _calibrate(self, results: list[ScoreResult], features: list[Features], model: str) -> list[ScoreResult]:
        """The base scores moved by `model`'s serving calibration: one version for the whole call."""
        assert self.calibrator is not None
        adapter, version = self.calibrator.serving(model)
        if adapter is None:
            return results
        scores = adapter.apply(np.stack([f.embedding for f in features]), np.array([f.base_score for f in features]),
                               np.array([f.prompt_tokens for f in features]))
        return [ScoreResult(float(s), r.cached, version) for s, r in zip(scores, results)]

    def features_by_id(self, request_id: str) -> Features | None:
        """The features of the prompt last scored under `request_id` (calibration on), else None."""
        return self.features.get_by_id(request_id)

    def warm_up(self) -> float:
        """Run the model once on a lone prompt and once on a full batch, at the most tokens it reads; the seconds it took.

        Some execution providers do work on a model's first run, or on the first
        run of each input shape (CUDA picks its kernels, TensorRT builds an
        engine); a server that reports SERVING before it has paid for that makes
        its first callers pay instead. Call before `start`, from a worker thread.
        """
        started = time.perf_counter()
        # One token repeated past max_length: every row is as long as the model reads.
        prompt = "warm " * (self.ranker.max_length + 8)
        for rows in (1, self.batcher.max_batch_size):
            self._run_batch([ScoreInput(f"warm-up-{i}", prompt=prompt) for i in range(rows)])
        return time.perf_counter() - started

    def cached_score(self, request_id: str) -> float | None:
        return self.cache.get_by_id(request_id)

    def _run_batch(self, items: list[ScoreInput]) -> list[tuple[float, Features | None]]:
        # Runs in the batcher's worker thread: tokenizing here keeps the event loop free.
        texts = [(i, it.prompt) for i, it in enumerate(items) if it.prompt is not None]
        ids: list[Sequence[int]] = [()] * len(items)
        if texts:
            for (i, _), tokens in zip(texts, self.ranker.tokenize([t for _, t in texts])):
                ids[i] = tokens
        for i, it in enumerate(items):
            if it.prompt is None:
                ids[i] = self.ranker.truncate([it.token_ids])[0]  # type: ignore[list-item]
        if self.calibrator is None:
            return [(score, None) for score in np.asarray(self.ranker.score_ids(ids), dtype=np.float64).tolist()]
        scores, embeddings = self.ranker.score_with_features(ids)
        return [(float(s), Features(e, float(s), len(row))) for s, e, row in zip(scores, embeddings, ids)]


def deadline_from_timeout(seconds: float | None) -> float | None:
    """An absolute time.monotonic() deadline from a remaining-time budget."""
    return None if seconds is None else time.monotonic() + seconds
