"""RankerClient and AsyncRankerClient: call the sidecar, never fail the engine.

Each client holds one channel for its lifetime, puts a deadline on every call,
lets gRPC retry UNAVAILABLE with backoff (a service-config retry policy), and
keeps a circuit breaker. Every failure (sidecar down, slow, overloaded, or a
bad request) returns a well-defined fallback instead of raising: no scores
for Score, first-come-first-served for NextBatch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import grpc

from . import ordering, wire
from .api import ranker_pb2 as pb
from .api import ranker_pb2_grpc as pbg
from .breaker import CircuitBreaker

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"
# The environment variable naming the sidecar's address, for every client: the vLLM hook, the proxy and `ltr-sidecar health`.
TARGET_ENV = "LTR_TARGET"
# Failures that say "the sidecar cannot help right now": they count toward
# opening the breaker. Others (INVALID_ARGUMENT) are the caller's bug and only fall back.
_UNHEALTHY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


BREAKER_OPEN = "breaker_open"


def _code_name(error: grpc.RpcError) -> str:
    code = error.code() if callable(getattr(error, "code", None)) else None
    return code.name if code is not None else "UNKNOWN"


@dataclass(frozen=True)
class ScoreItem:
    """One request to score: an id and its prompt (or token ids from the bundle's tokenizer)."""

    request_id: str
    prompt: str | None = None
    token_ids: Sequence[int] | None = None


@dataclass(frozen=True)
class Scores:
    """Scores by request id (higher = shorter predicted output). Empty, with fallback=True, on failure."""

    scores: dict[str, float]
    model_version: str | None
    fallback: bool
    # Why it fell back: a gRPC status code's name, or "breaker_open" when no
    # call was made; None on success. Callers that retry read it.
    error: str | None = None
    # The served model's calibration that produced the scores ("" for the base
    # ranker; one per call). Scores compare only within one version.
    calibration_version: str = ""


# How a request ended (vLLM's finish_reason) -> the wire's Finish.
FINISH = {"stop": pb.FINISH_STOPPED, "length": pb.FINISH_LENGTH, "abort": pb.FINISH_ABORTED}


@dataclass(frozen=True)
class Finished:
    """One finished request, for `observe`: its id, the tokens it generated and how it ended.

    finish: "stop" (the model ended it: exact), "length" (cut by max_tokens) or
    "abort" (both censored: the answer would have run at least this long).
    The prompt (or token ids) is needed only for a request this sidecar did not score.
    """

    request_id: str
    output_tokens: int
    finish: str
    model: str
    prompt: str | None = None
    token_ids: Sequence[int] | None = None


@dataclass(frozen=True)
class Observed:
    """What `observe` achieved: observations the sidecar kept, and those it had no features for."""

    accepted: int
    unknown: int
    calibration_enabled: bool
    fallback: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One request the engine could run this step; see ltr.v1.Candidate."""

    request_id: str
    score: float | None = None
    prompt: str | None = None
    running: bool = False
    num_tokens: int = 1
    priority: int = 0
    idle_steps: int = 0
    promoted_steps_left: int = 0
    protected: bool = False
    overtakes: int = 0
    # When it arrived (e.g. the engine step), on every candidate or on none:
    # requests that arrive in the same step do not overtake one another.
    arrival_step: int | None = None


@dataclass(frozen=True)
class Batch(ordering.Decision):
    """A NextBatch decision (`ordering.Decision`: indices refer to the candidates as given), and where it came from."""

    model_version: str | None = None
    fallback: bool = False  # True: the local FCFS decision, the sidecar did not answer

    @classmethod
    def of(cls, decision: ordering.Decision, model_version: str | None, fallback: bool) -> Batch:
        return cls(**{f.name: getattr(decision, f.name) for f in fields(ordering.Decision)}, model_version=model_version, fallback=fallback)


def candidate_table(candidates: Sequence[Candidate]) -> ordering.Candidates:
    """The policy's columns for `candidates` (in arrival order)."""
    arrivals = [c.arrival_step for c in candidates]
    given = [a is not None for a in arrivals]
    if any(given) and not all(given):
        raise ValueError(f"candidates[{given.index(False)}].arrival_step: set it on every candidate or on none")
    return ordering.Candidates.build(
        scores=[math.nan if c.score is None else c.score for c in candidates],
        running=[c.running for c in candidates],
        num_tokens=[c.num_tokens for c in candidates],
        priority=[c.priority for c in candidates],
        idle_steps=[c.idle_steps for c in candidates],
        promoted_steps_left=[c.promoted_steps_left for c in candidates],
        protected=[c.protected for c in candidates],
        overtakes=[c.overtakes for c in candidates],
        arrival_steps=arrivals if all(given) and candidates else None,
    )


def service_config(max_attempts: int = 3, initial_backoff_s: float = 0.01, max_backoff_s: float = 0.2, lb_policy: str | None = None) -> str:
    """gRPC service config: retry UNAVAILABLE with exponential backoff (max_attempts >= 2); optional load-balancing policy."""
    config: dict = {}
    if max_attempts >= 2:  # gRPC rejects a retry policy of one attempt
        config["methodConfig"] = [
            {
                "name": [{"service": "ltr.v1.RankerService"}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_s}s",
                    "maxBackoff": f"{max_backoff_s}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    if lb_policy:
        config["loadBalancingConfig"] = [{lb_policy: {}}]
    return json.dumps(config)


def fcfs_batch(candidates: Sequence[Candidate], max_num_seqs: int, max_num_batched_tokens: int) -> Batch:
    """The fallback decision, `ordering.fcfs_decision`: explicit priority, then arrival order, within the budget."""
    return Batch.of(ordering.fcfs_decision(candidate_table(candidates), max_num_seqs, max_num_batched_tokens), None, fallback=True)


class _ClientBase:
    """What both clients share: the breaker, request building and response reading."""

    def __init__(self, target: str, timeout_s: float, breaker: CircuitBreaker | None, slow_is_unhealthy: bool = True):
        self.target = target
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        # A caller that sizes its calls to the sidecar's speed (the hook's
        # background scorer) treats a timeout as "too big a call", not as a
        # sidecar that cannot help: only a sidecar that is away opens its breaker.
        self._unhealthy = _UNHEALTHY if slow_is_unhealthy else _UNHEALTHY - {grpc.StatusCode.DEADLINE_EXCEEDED}

    def _options(self, max_attempts: int, lb_policy: str | None, max_message_bytes: int) -> list[tuple[str, object]]:
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(max_attempts, lb_policy=lb_policy)),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]

    @staticmethod
    def _score_request(items: Sequence[ScoreItem], model: str = "") -> pb.ScoreRequest:
        out = []
        for it in items:
            if it.prompt is not None:
                out.append(pb.ScoreItem(request_id=it.request_id, prompt=it.prompt))
            else:
                out.append(pb.ScoreItem(request_id=it.request_id, token_ids=pb.TokenIds(ids=list(it.token_ids or ()))))
        return pb.ScoreRequest(items=out, model=model)

    @staticmethod
    def _scores(resp: pb.ScoreResponse) -> Scores:
        version = resp.scores[0].calibration_version if resp.scores else ""
        return Scores({s.request_id: s.score for s in resp.scores}, resp.model_version, fallback=False, calibration_version=version)

    @staticmethod
    def _observe_request(finished: Sequence[Finished]) -> pb.ObserveRequest:
        out = []
        for f in finished:
            if f.finish not in FINISH:
                raise ValueError(f"finish: {f.finish!r} is not one of {', '.join(FINISH)}")
            o = pb.Observation(request_id=f.request_id, output_tokens=f.output_tokens, finish=FINISH[f.finish], model=f.model)
            if f.prompt is not None:
                o.prompt = f.prompt
            elif f.token_ids is not None:
                o.token_ids.ids.extend(f.token_ids)
            out.append(o)
        return pb.ObserveRequest(observations=out)

    @staticmethod
    def _next_batch_request(
        candidates: Sequence[Candidate], max_num_seqs: int, max_num_batched_tokens: int, guard: ordering.StarvationGuard | None
    ) -> pb.NextBatchRequest:
        # Columns: an order of magnitude cheaper to encode and decode than one message per candidate.
        cols = wire.candidate_columns(
            [c.request_id for c in candidates], candidate_table(candidates), [c.prompt or "" for c in candidates]
        )
        req = pb.NextBatchRequest(
            columns=cols, budget=pb.Budget(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
        )
        if guard is not None:
            req.guard.CopyFrom(
                pb.StarvationGuard(threshold_steps=guard.threshold_steps, quantum_steps=guard.quantum_steps, max_overtakes=guard.max_overtakes)
            )
        return req

    @staticmethod
    def _batch(resp: pb.NextBatchResponse) -> Batch:
        return Batch.of(wire.decision_from_response(resp), resp.model_version, fallback=False)

    def _failed(self, method: str, error: Exception) -> None:
        code = error.code() if isinstance(error, grpc.RpcError) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and code not in self._unhealthy:
            # Slow, not away: the caller sizes its next call down. Neither a
            # success nor a failure, but a half-open trial must end somehow.
            if self.breaker.is_open:
                self.breaker.record_failure()
            return
        if code is not None and code not in self._unhealthy:
            # The sidecar answered, so it is healthy: this also ends a half-open trial.
            self.breaker.record_success()
            log.warning("ltr sidecar refused %s (%s): %s; using the fallback", method, code.name, error.details())
            return
        if self.breaker.record_failure():
            log.warning(
                "ltr sidecar at %s is unavailable (%s); scheduling falls back to FCFS until it answers again",
                self.target,
                code.name if code else type(error).__name__,
            )

    def _succeeded(self) -> None:
        if self.breaker.is_open:
            log.info("ltr sidecar at %s answers again", self.target)
        self.breaker.record_success()


class RankerClient(_ClientBase):
    """Blocking client. Thread-safe; create one and reuse it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout_s: float = 0.5,
        credentials: grpc.ChannelCredentials | None = None,
        breaker: CircuitBreaker | None = None,
        max_attempts: int = 3,
        lb_policy: str | None = None,
        max_message_bytes: int = 64 << 20,
        slow_is_unhealthy: bool = True,
    ):
        super().__init__(target, timeout_s, breaker, slow_is_unhealthy)
        options = self._options(max_attempts, lb_policy, max_message_bytes)
        self.channel = grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        self.stub = pbg.RankerServiceStub(self.channel)

    def score(self, items: Sequence[ScoreItem], timeout_s: float | None = None, model: str = "") -> Scores:
        """Scores, calibrated to the served `model` when the sidecar has a calibration for it."""
        if not items:
            return Scores({}, None, fallback=True)
        if not self.breaker.allow():
            return Scores({}, None, fallback=True, error=BREAKER_OPEN)
        try:
            resp = self.stub.Score(self._score_request(items, model), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("Score", e)
            return Scores({}, None, fallback=True, error=_code_name(e))
        self._succeeded()
        return self._scores(resp)

    def observe(self, finished: Sequence[Finished], timeout_s: float | None = None) -> Observed:
        """Report finished requests (one call, no retry loop); a failure or an open breaker drops them."""
        if not finished:
            return Observed(0, 0, calibration_enabled=False, fallback=True)
        if not self.breaker.allow():
            return Observed(0, 0, calibration_enabled=False, fallback=True, error=BREAKER_OPEN)
        try:
            resp = self.stub.Observe(self._observe_request(finished), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("Observe", e)
            return Observed(0, 0, calibration_enabled=False, fallback=True, error=_code_name(e))
        self._succeeded()
        return Observed(resp.accepted, resp.unknown, resp.calibration_enabled)

    def next_batch(
        self,
        candidates: Sequence[Candidate],
        max_num_seqs: int,
        max_num_batched_tokens: int,
        guard: ordering.StarvationGuard | None = None,
        timeout_s: float | None = None,
    ) -> Batch:
        if not candidates or not self.breaker.allow():
            return fcfs_batch(candidates, max_num_seqs, max_num_batched_tokens)
        try:
            req = self._next_batch_request(candidates, max_num_seqs, max_num_batched_tokens, guard)
            resp = self.stub.NextBatch(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("NextBatch", e)
            return fcfs_batch(candidates, max_num_seqs, max_num_batched_tokens)
        self._succeeded()
        return self._batch(resp)

    def model_info(self, timeout_s: float | None = None) -> pb.ModelInfoResponse | None:
        if not self.breaker.allow():
            return None
        try:
            resp = self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("ModelInfo", e)
            return None
        self._succeeded()
        return resp

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRankerClient(_ClientBase):
    """asyncio client, for engines and gateways that run an event loop. Create it inside the loop."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout_s: float = 0.5,
        credentials: grpc.ChannelCredentials | None = None,
        breaker: CircuitBreaker | None = None,
        max_attempts: int = 3,
        lb_policy: str | None = None,
        max_message_bytes: int = 64 << 20,
        slow_is_unhealthy: bool = True,
    ):
        super().__init__(target, timeout_s, breaker, slow_is_unhealthy)
        options = self._options(max_attempts, lb_policy, max_message_bytes)
        aio = grpc.aio
        self.channel = aio.secure_channel(target, credentials, options) if credentials else aio.insecure_channel(target, options)
        self.stub = pbg.RankerServiceStub(self.channel)

    async def score(self, items: Sequence[ScoreItem], timeout_s: float | None = None, model: str = "") -> Scores:
        """Scores, calibrated to the served `model` when the sidecar has a calibration for it."""
        if not items:
            return Scores({}, None, fallback=True)
        if not self.breaker.allow():
            return Scores({}, None, fallback=True, error=BREAKER_OPEN)
        try:
            resp = await self.stub.Score(self._score_request(items, model), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("Score", e)
            return Scores({}, None, fallback=True, error=_code_name(e))
        self._succeeded()
        return self._scores(resp)

    async def observe(self, finished: Sequence[Finished], timeout_s: float | None = None) -> Observed:
        """Report finished requests (one call, no retry loop); a failure or an open breaker drops them."""
        if not finished:
            return Observed(0, 0, calibration_enabled=False, fallback=True)
        if not self.breaker.allow():
            return Observed(0, 0, calibration_enabled=False, fallback=True, error=BREAKER_OPEN)
        try:
            resp = await self.stub.Observe(self._observe_request(finished), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("Observe", e)
            return Observed(0, 0, calibration_enabled=False, fallback=True, error=_code_name(e))
        self._succeeded()
        return Observed(resp.accepted, resp.unknown, resp.calibration_enabled)

    async def next_batch(
        self,
        candidates: Sequence[Candidate],
        max_num_seqs: int,
        max_num_batched_tokens: int,
        guard: ordering.StarvationGuard | None = None,
        timeout_s: float | None = None,
    ) -> Batch:
        if not candidates or not self.breaker.allow():
            return fcfs_batch(candidates, max_num_seqs, max_num_batched_tokens)
        try:
            req = self._next_batch_request(candidates, max_num_seqs, max_num_batched_tokens, guard)
            resp = await self.stub.NextBatch(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("NextBatch", e)
            return fcfs_batch(candidates, max_num_seqs, max_num_batched_tokens)
        self._succeeded()
        return self._batch(resp)

    async def model_info(self, timeout_s: float | None = None) -> pb.ModelInfoResponse | None:
        if not self.breaker.allow():
            return None
        try:
            resp = await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            self._failed("ModelInfo", e)
            return None
        self._succeeded()
        return resp

    async def close(self) -> None:
        await self.channel.close()
