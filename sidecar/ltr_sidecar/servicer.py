"""The gRPC servicer: validate, translate protos to plain objects, call the logic, translate back.

The logic lives in `scoring.Scorer` and `ordering.next_batch`. This module only
checks requests (INVALID_ARGUMENT with the field's path), maps failures to
status codes, and records metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np

from ltr_client.api import ranker_pb2 as pb
from .batcher import DeadlineExpired, NeverFits, Overloaded
from .config import Limits
from .metrics import Metrics
from .online_calibration import MAX_MODELS, Features
from ltr_client.ordering import Candidates, StarvationGuard, next_batch
from ltr_client.wire import decision_fields
from .request_decoding import Undecodable
from .scoring import Scorer, ScoreInput, deadline_from_timeout

log = logging.getLogger(__name__)
Resp = TypeVar("Resp")
# Observe: longest served model name, and most output tokens one request may report.
MAX_MODEL_NAME = 256
MAX_OUTPUT_TOKENS = 1 << 24


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _rpc(method: str) -> Callable[[Callable[..., Awaitable[Resp]]], Callable[..., Awaitable[Resp]]]:
    """Map errors to status codes, count the call and time it. Never logs request contents."""

    def decorate(handler: Callable[..., Awaitable[Resp]]) -> Callable[..., Awaitable[Resp]]:
        @wraps(handler)
        async def wrapper(self: RankerServicer, request: Any, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, Undecodable):
                    raise invalid(request.reason)
                return await handler(self, request, context)
            except RpcError as e:
                code = e.code
                await context.abort(e.code, str(e))
            except asyncio.CancelledError:
                # gRPC cancels the handler when the client goes away and when
                # the call's deadline passes; only the deadline leaves no time.
                remaining = context.time_remaining()
                code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the server; see its logs")
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.requests.labels(method, code.name).inc()
                self.metrics.latency.labels(method).observe(elapsed)
                log.debug("rpc", extra={"method": method, "code": code.name, "ms": round(elapsed * 1e3, 3)})
            raise AssertionError("unreachable: abort raises")

        return wrapper

    return decorate


class RankerServicer:
    def __init__(self, scorer: Scorer, limits: Limits, guard: StarvationGuard, metrics: Metrics):
        self.scorer = scorer
        self.limits = limits
        self.guard = guard
        self.metrics = metrics
        bundle = scorer.ranker.bundle
        self.model_version = bundle.model_version

    # --- RPCs -----------------------------------------------------------------

    @_rpc("Score")
    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        inputs = self._score_inputs(request)
        self._check_model_name(request.model, "model", required=False)
        results = await self._score(inputs, context, "items", request.model)
        self.metrics.items.labels("Score").inc(len(inputs))
        return pb.ScoreResponse(
            scores=[pb.ItemScore(request_id=i.request_id, score=r.score, cached=r.cached, calibration_version=r.calibration_version)
                    for i, r in zip(inputs, results)],
            model_version=self.model_version,
        )

    @_rpc("Observe")
    async def Observe(self, request: pb.ObserveRequest, context: grpc.aio.ServicerContext) -> pb.ObserveResponse:
        observations = request.observations
        self._check_count(len(observations), "observations")
        inputs = self._observation_inputs(observations)
        calibrator = self.scorer.calibrator
        self.metrics.items.labels("Observe").inc(len(observations))
        if calibrator is None:  # --calibration off: validated, then nothing is kept or computed
            return pb.ObserveResponse(accepted=0, unknown=0, calibration_enabled=False)
        for i, o in enumerate(observations):
            if o.model not in calibrator.models and len({*calibrator.models, *(x.model for x in observations[: i + 1])}) > MAX_MODELS:
                raise invalid(f"observations[{i}].model: more than {MAX_MODELS} served models; calibrations are kept for at most {MAX_MODELS}")
        to_score = [inp for o, inp in zip(observations, inputs) if inp is not None and self.scorer.features_by_id(o.request_id) is None]
        if to_score:  # features for requests this replica has not scored recently; the prompts are not kept
            await self._score(to_score, context, "observations")
        by_model: dict[str, tuple[list[Features], list[int], list[bool]]] = {}
        unknown = 0
        for o in observations:
            features = self.scorer.features_by_id(o.request_id)
            if features is None:
                unknown += 1
                continue
            rows = by_model.setdefault(o.model, ([], [], []))
            rows[0].append(features)
            rows[1].append(o.output_tokens)
            rows[2].append(o.finish != pb.FINISH_STOPPED)
        accepted = sum(calibrator.observe(model, *rows) for model, rows in by_model.items())
        return pb.ObserveResponse(accepted=accepted, unknown=unknown, calibration_enabled=True)

    @_rpc("NextBatch")
    async def NextBatch(self, request: pb.NextBatchRequest, context: grpc.aio.ServicerContext) -> pb.NextBatchResponse:
        budget = request.budget
        if not request.HasField("budget"):
            raise invalid("budget: required")
        if budget.max_num_seqs <= 0:
            raise invalid("budget.max_num_seqs: must be positive")
        if budget.max_num_batched_tokens <= 0:
            raise invalid("budget.max_num_batched_tokens: must be positive")
        guard = self.guard
        if request.HasField("guard"):
            g = request.guard
            guard = StarvationGuard(g.threshold_steps, g.quantum_steps, g.max_overtakes)
        candidates, to_score = self._candidates(request, budget.max_num_batched_tokens)
        if to_score:
            field = "columns.prompts" if request.HasField("columns") else "candidates"
            results = await self._score([inp for _, inp in to_score], context, field)
            for (i, _), r in zip(to_score, results):
                candidates.scores[i] = r.score
        decision = next_batch(candidates, budget.max_num_seqs, budget.max_num_batched_tokens, guard)
        self.metrics.items.labels("NextBatch").inc(len(candidates))
        return pb.NextBatchResponse(
            **decision_fields(decision),
            scores=candidates.scores.tolist(),
            unscored=np.flatnonzero(np.isnan(candidates.scores)).tolist(),
            model_version=self.model_version,
        )

    @_rpc("ModelInfo")
    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfoResponse:
        ranker = self.scorer.ranker
        bundle = ranker.bundle
        return pb.ModelInfoResponse(
            name=bundle.name,
            version=bundle.version,
            model_sha256=bundle.model_sha256,
            max_input_tokens=ranker.max_length,
            execution_provider=ranker.provider,
            evaluation=bundle.evaluation,
            license=bundle.license,
            default_guard=pb.StarvationGuard(
                threshold_steps=self.guard.threshold_steps, quantum_steps=self.guard.quantum_steps, max_overtakes=self.guard.max_overtakes
            ),
            calibrations=[
                pb.Calibration(model=st.model, version=st.version, observations=st.observations, held=st.held, base_tau_b=st.base_tau,
                               serving_tau_b=st.serving_tau, refits=st.refits, promotions=st.promotions)
                for st in (self.scorer.calibrator.statuses() if self.scorer.calibrator else [])
            ],
            calibration_enabled=self.scorer.calibrator is not None,
        )

    # --- helpers --------------------------------------------------------------

    async def _score(self, inputs: list[ScoreInput], context: grpc.aio.ServicerContext, field: str, model: str = "") -> list:
        """Scores for `inputs` (the prompts of request field `field`), or the RpcError that says why not."""
        try:
            return await self.scorer.score(inputs, deadline_from_timeout(context.time_remaining()), model)
        except NeverFits as e:  # RESOURCE_EXHAUSTED would promise that a retry can succeed
            raise invalid(f"{field}: {e} (the server's --max-queue); send fewer prompts to score per call") from e
        except Overloaded as e:
            self.metrics.rejected.inc(len(inputs))
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"ranker overloaded, retry later: {e}") from e
        except DeadlineExpired as e:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from e

    def _check_count(self, n: int, field: str) -> None:
        if n == 0:
            raise invalid(f"{field}: must not be empty")
        if n > self.limits.max_items:
            raise invalid(f"{field}: {n} items exceed the limit of {self.limits.max_items} per call")

    def _check_prompt(self, prompt: str, field: str) -> None:
        if not prompt:
            raise invalid(f"{field}: must not be empty")
        # len(str) <= bytes, so only prompts that might be too long pay for encoding.
        if len(prompt) * 4 > self.limits.max_prompt_bytes and len(prompt.encode("utf-8")) > self.limits.max_prompt_bytes:
            raise invalid(f"{field}: longer than the limit of {self.limits.max_prompt_bytes} bytes")

    def _check_request_id(self, request_id: str, seen: set[str], field: str) -> None:
        if not request_id:
            raise invalid(f"{field}: must not be empty")
        if request_id in seen:
            raise invalid(f"{field}: duplicate request_id {request_id!r} in one call")
        seen.add(request_id)

    def _score_inputs(self, request: pb.ScoreRequest) -> list[ScoreInput]:
        self._check_count(len(request.items), "items")
        seen: set[str] = set()
        inputs = []
        for i, item in enumerate(request.items):
            self._check_request_id(item.request_id, seen, f"items[{i}].request_id")
            inp = self._prompt_input(item, f"items[{i}]")
            if inp is None:
                raise invalid(f"items[{i}]: set prompt or token_ids")
            inputs.append(inp)
        return inputs

    def _prompt_input(self, item: pb.ScoreItem | pb.Observation, where: str) -> ScoreInput | None:
        """The item's prompt or token ids as a ScoreInput (None if it has neither); INVALID_ARGUMENT naming `where` if bad."""
        kind = item.WhichOneof("input")
        if kind == "prompt":
            self._check_prompt(item.prompt, f"{where}.prompt")
            return ScoreInput(item.request_id, prompt=item.prompt)
        if kind == "token_ids":
            ids = item.token_ids.ids
            field = f"{where}.token_ids"
            if not ids:
                raise invalid(f"{field}: must not be empty")
            if len(ids) > self.limits.max_prompt_bytes:
                raise invalid(f"{field}: {len(ids)} ids exceed the limit of {self.limits.max_prompt_bytes}")
            vocab = self.scorer.ranker.vocab_size
            if min(ids) < 0 or max(ids) >= vocab:
                raise invalid(f"{field}: ids must lie in [0, {vocab})")
            return ScoreInput(item.request_id, token_ids=tuple(ids))
        return None

    def _observation_inputs(self, observations) -> list[ScoreInput | None]:
        """Check every observation; the prompt input of each that carries one."""
        seen: set[str] = set()
        inputs = []
        for i, o in enumerate(observations):
            where = f"observations[{i}]"
            self._check_request_id(o.request_id, seen, f"{where}.request_id")
            self._check_model_name(o.model, f"{where}.model", required=True)
            if o.finish not in (pb.FINISH_STOPPED, pb.FINISH_LENGTH, pb.FINISH_ABORTED):
                raise invalid(f"{where}.finish: must be FINISH_STOPPED, FINISH_LENGTH or FINISH_ABORTED, not {o.finish}")
            if o.finish == pb.FINISH_LENGTH and o.output_tokens == 0:
                raise invalid(f"{where}.output_tokens: 0, but a request cut by max_tokens generated at least one token")
            if o.output_tokens > MAX_OUTPUT_TOKENS:
                raise invalid(f"{where}.output_tokens: {o.output_tokens} exceeds {MAX_OUTPUT_TOKENS}")
            inputs.append(self._prompt_input(o, where))
        return inputs

    @staticmethod
    def _check_model_name(model: str, field: str, required: bool) -> None:
        if required and not model:
            raise invalid(f"{field}: must name the served model")
        if len(model) > MAX_MODEL_NAME:
            raise invalid(f"{field}: longer than {MAX_MODEL_NAME} characters")

    def _candidates(self, request: pb.NextBatchRequest, max_tokens: int) -> tuple[Candidates, list[tuple[int, ScoreInput]]]:
        """Columns for the policy, and the candidates that still need scoring (with their index)."""
        if request.HasField("columns"):
            if request.candidates:
                raise invalid("candidates: set candidates or columns, not both")
            candidates, to_score = self._from_columns(request.columns)
        else:
            candidates, to_score = self._from_messages(request.candidates)
        over = np.flatnonzero(candidates.num_tokens > max_tokens)
        if len(over):
            i = int(over[0])
            field = f"columns.num_tokens[{i}]" if request.HasField("columns") else f"candidates[{i}].num_tokens"
            raise invalid(f"{field}: {candidates.num_tokens[i]} exceeds budget.max_num_batched_tokens ({max_tokens})")
        return candidates, to_score

    def _from_messages(self, cands) -> tuple[Candidates, list[tuple[int, ScoreInput]]]:
        n = len(cands)
        self._check_count(n, "candidates")
        scores = np.full(n, np.nan)
        running = np.zeros(n, dtype=bool)
        num_tokens = np.ones(n, dtype=np.int64)
        priority = np.zeros(n, dtype=np.int64)
        idle = np.zeros(n, dtype=np.int64)
        promoted = np.zeros(n, dtype=np.int64)
        protected = np.zeros(n, dtype=bool)
        overtakes = np.zeros(n, dtype=np.int64)
        arrivals = np.zeros(n, dtype=np.int64)
        to_score: list[tuple[int, ScoreInput]] = []
        seen: set[str] = set()
        for i, c in enumerate(cands):
            self._check_request_id(c.request_id, seen, f"candidates[{i}].request_id")
            kind = c.WhichOneof("rank_input")
            if kind == "score":
                if not math.isfinite(c.score):
                    raise invalid(f"candidates[{i}].score: must be finite")
                scores[i] = c.score
            elif kind == "prompt":
                self._check_prompt(c.prompt, f"candidates[{i}].prompt")
                to_score.append((i, ScoreInput(c.request_id, prompt=c.prompt)))
            else:
                cached = self.scorer.cached_score(c.request_id)
                if cached is not None:
                    scores[i] = cached
            running[i] = c.running
            num_tokens[i] = max(1, c.num_tokens)
            if c.HasField("priority"):
                priority[i] = c.priority
            idle[i] = c.idle_steps
            promoted[i] = c.promoted_steps_left
            protected[i] = c.protected
            overtakes[i] = c.overtakes
            if c.HasField("arrival_step") != cands[0].HasField("arrival_step"):
                raise invalid(f"candidates[{i}].arrival_step: set it on every candidate or on none")
            arrivals[i] = c.arrival_step
        arrival_steps = self._arrival_steps(arrivals, "candidates[{}].arrival_step") if cands[0].HasField("arrival_step") else None
        return Candidates(scores, running, num_tokens, priority, idle, promoted, protected, overtakes, arrival_steps), to_score

    @staticmethod
    def _arrival_steps(values: np.ndarray, field: str) -> np.ndarray:
        """Arrival steps, which must not decrease: rows are in arrival order, and the order's tie-break relies on it."""
        drops = np.flatnonzero(np.diff(values) < 0)
        if len(drops):
            i = int(drops[0]) + 1
            raise invalid(f"{field.format(i)}: {values[i]} is less than the one before it ({values[i - 1]}); candidates are in arrival order")
        return values

    def _from_columns(self, cols: pb.CandidateColumns) -> tuple[Candidates, list[tuple[int, ScoreInput]]]:
        ids = list(cols.request_ids)
        n = len(ids)
        self._check_count(n, "columns.request_ids")
        if len(set(ids)) != n or not all(ids):
            seen: set[str] = set()
            for i, request_id in enumerate(ids):
                self._check_request_id(request_id, seen, f"columns.request_ids[{i}]")

        def column(name: str, dtype: type, default: float) -> np.ndarray:
            values = getattr(cols, name)
            if not values:
                return np.full(n, default, dtype=dtype)
            if len(values) != n:
                raise invalid(f"columns.{name}: {len(values)} entries, expected 0 or {n} (one per request id)")
            return np.asarray(values, dtype=dtype)

        scores = column("scores", np.float64, np.nan)
        if np.isinf(scores).any():
            raise invalid(f"columns.scores[{int(np.flatnonzero(np.isinf(scores))[0])}]: must be finite or NaN")
        prompts = list(cols.prompts)
        if prompts and len(prompts) != n:
            raise invalid(f"columns.prompts: {len(prompts)} entries, expected 0 or {n} (one per request id)")
        to_score: list[tuple[int, ScoreInput]] = []
        for i in np.flatnonzero(np.isnan(scores)).tolist():
            if prompts and prompts[i]:
                self._check_prompt(prompts[i], f"columns.prompts[{i}]")
                to_score.append((i, ScoreInput(ids[i], prompt=prompts[i])))
            else:
                cached = self.scorer.cached_score(ids[i])
                if cached is not None:
                    scores[i] = cached
        candidates = Candidates(
            scores=scores,
            running=column("running", bool, False),
            num_tokens=np.maximum(column("num_tokens", np.int64, 1), 1),
            priority=column("priorities", np.int64, 0),
            idle_steps=column("idle_steps", np.int64, 0),
            promoted_steps_left=column("promoted_steps_left", np.int64, 0),
            protected=column("protected", bool, False),
            overtakes=column("overtakes", np.int64, 0),
            arrival_steps=self._arrival_steps(column("arrival_steps", np.int64, 0), "columns.arrival_steps[{}]") if cols.arrival_steps else None,
        )
        return candidates, to_score
