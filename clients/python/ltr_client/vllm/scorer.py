"""BackgroundScorer: gets scores for new requests off the scheduling path.

The engine thread only enqueues (request id, prompt token ids) and, once per
step, takes whatever scores have arrived; both are O(1) per item and never
touch the network. One daemon thread does the slow parts: it loads the
engine's tokenizer (the engine holds token ids of the *LLM's* tokenizer, while
the ranker reads text), decodes prompts, and calls `RankerClient.score`.

Scores must arrive even when the sidecar shares a busy node with the engine,
where a burst's one big call can outlast the deadline and lose every score in
it. So the thread:

- sizes each call to the deadline from the latency it measures
  (`CallSizer`): a sidecar that needs 20 ms a prompt gets calls of a few
  prompts, each answered within the deadline, rather than one call that is
  cancelled whole;
- retries a call that failed or timed out, with backoff and at most
  `retries` times, and only for the requests that still wait: a request
  admitted meanwhile no longer needs its score (`still_waiting`);
- gives up on a request only when it is out of retries or the circuit breaker
  is open, and counts it (`ScoreStats.unscored`): such a request keeps its
  FCFS slot, and the scheduler logs it at WARNING.

Nothing here can fail the engine: a bug in a batch is logged and those
requests stay unscored.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..breaker import CircuitBreaker
from ..client import BREAKER_OPEN, RankerClient, ScoreItem
from .config import LTRConfig

log = logging.getLogger(__name__)

Detokenizer = Callable[[Sequence[int]], str]

# Failures worth another try: the sidecar was slow, busy or briefly away.
# Anything else (INVALID_ARGUMENT) would fail the same way again.
RETRYABLE = frozenset({"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"})
BACKOFF_S = 0.05  # first retry delay; doubles per attempt, with jitter
MAX_BACKOFF_S = 1.0


def head_and_tail(token_ids: Sequence[int], max_tokens: int) -> Sequence[int]:
    """A prompt's ids cut to `max_tokens`: its first and last halves when longer.

    Only bounds the decoding work and the message size: the ranker reads a
    few hundred of its own tokens, from the start of the prompt and, with a
    bundle that keeps the tail (ranker.json "truncation"), from its end, so
    both ends must survive this cut.
    """
    if len(token_ids) <= max_tokens:
        return token_ids
    head = (max_tokens + 1) // 2
    return [*token_ids[:head], *token_ids[len(token_ids) - (max_tokens - head) :]]


class CallSizer:
    """How many prompts one Score call may carry, and its deadline, so that it ends in time.

    It keeps a running estimate of the sidecar's seconds per prompt (fixed
    costs included, which errs toward smaller calls) and sizes calls to fill
    `fill` of the deadline, leaving the rest for the machine's noise. A
    timeout doubles the estimate at once; successes pull it back smoothly.
    The first call carries `first_call` prompts: a fresh hook knows nothing
    of the sidecar yet, and a small call both answers quickly and measures it.

    A sidecar too slow for even one prompt within the deadline (a CPU
    sidecar on cores the engine and others keep busy) gets calls of one
    prompt with the deadline that prompt needs, up to `max_stretch` times
    the configured one: a score a little late still orders a queue that
    waits seconds, where a call that can never succeed orders nothing.
    """

    def __init__(self, deadline_s: float, max_batch: int, fill: float = 0.5, first_call: int = 4, smoothing: float = 0.3,
                 max_stretch: float = 10.0):
        self.deadline_s = deadline_s
        self.max_batch = max_batch
        self.fill = fill
        self.smoothing = smoothing
        self.max_deadline_s = deadline_s * max_stretch
        self.seconds_per_prompt: float | None = None
        self._first_call = max(1, min(first_call, max_batch))

    def size(self) -> int:
        """Prompts for the next call, between 1 and max_batch."""
        if self.seconds_per_prompt is None:
            return self._first_call
        fits = int(self.fill * self.deadline_s / max(self.seconds_per_prompt, 1e-6))
        return max(1, min(self.max_batch, fits))

    def timeout_s(self, prompts: int) -> float:
        """The deadline of a call of `prompts` prompts: the configured one, stretched only when it cannot fit them."""
        if self.seconds_per_prompt is None:
            return self.deadline_s
        needs = self.seconds_per_prompt * prompts / self.fill
        return min(self.max_deadline_s, max(self.deadline_s, needs))

    def observe(self, prompts: int, seconds: float) -> None:
        """A call of `prompts` prompts answered in `seconds`."""
        per = seconds / max(prompts, 1)
        old = self.seconds_per_prompt
        self.seconds_per_prompt = per if old is None else old + self.smoothing * (per - old)

    def timed_out(self, prompts: int, seconds: float) -> None:
        """A call of `prompts` prompts ran out of its deadline after `seconds`: each took longer than seconds / prompts."""
        # How much longer they needed is unknown: guess twice, so that a
        # sidecar far slower than the deadline is caught up with in a few calls.
        floor = seconds / max(prompts, 1)
        old = self.seconds_per_prompt or 0.0
        self.seconds_per_prompt = 2 * max(old, floor)


@dataclass
class ScoreStats:
    """What the scorer did, for logs, tests and benchmarks. Counted on the scorer thread."""

    calls: int = 0  # Score calls made
    failed_calls: int = 0  # of those, failed or timed out
    scored: int = 0  # requests that got a score
    retried: int = 0  # request retries after a failed call
    skipped: int = 0  # retries dropped: the request no longer waited by then
    unscored: int = 0  # requests given up on: they keep their FCFS slot


@dataclass(eq=False)  # identity: a job is one request's turn
class _Job:
    request_id: str
    token_ids: Sequence[int]
    attempts: int = 0
    not_before: float = 0.0


class BackgroundScorer:
    """Scores submitted prompts in batches on a daemon thread; results are polled with `drain()`."""

    def __init__(
        self,
        client: RankerClient,
        detokenizer_factory: Callable[[], Detokenizer],
        max_batch: int = 64,
        max_prompt_tokens: int = 2048,
        deadline_s: float = 0.2,
        retries: int = 3,
        still_waiting: Callable[[str], bool] | None = None,
        on_unscored: Callable[[int, str], None] | None = None,
    ):
        """`still_waiting(request_id)` says whether a score would still be used (called on the scorer thread);
        `on_unscored(count, reason)` hears of requests given up on (also on the scorer thread)."""
        self.client = client
        self._detokenizer_factory = detokenizer_factory
        self._detokenize: Detokenizer | None = None
        self._disabled = False
        self.max_batch = max_batch
        self.max_prompt_tokens = max_prompt_tokens
        self.deadline_s = deadline_s
        self.retries = retries
        self.sizer = CallSizer(deadline_s, max_batch)
        self.stats = ScoreStats()
        self._still_waiting = still_waiting or (lambda _request_id: True)
        self._on_unscored = on_unscored or (lambda _count, _reason: None)
        # SimpleQueue and deque append/popleft are thread-safe on their own.
        # The counters behind the condition exist for wait_idle(); the engine
        # thread only ever takes that lock uncontended, for a nanosecond-scale increment.
        self._pending: queue.SimpleQueue[tuple[str, Sequence[int]] | None] = queue.SimpleQueue()
        self._backlog: deque[_Job] = deque()  # scorer thread only
        self._results: deque[tuple[str, float]] = deque()
        self._progress = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ltr-scorer", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        """Queue one prompt for scoring. Never blocks."""
        with self._progress:
            self._submitted += 1
        self._pending.put((request_id, prompt_token_ids))

    def drain(self) -> list[tuple[str, float]]:
        """Scores that arrived since the last call, as (request id, score). Never blocks."""
        out = []
        results = self._results
        while results:
            out.append(results.popleft())
        return out

    @property
    def submitted(self) -> int:
        """Prompts submitted so far."""
        return self._submitted

    @property
    def in_flight(self) -> int:
        """Prompts submitted and not yet scored, skipped or given up on (retries pending included)."""
        return self._submitted - self._done

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every prompt submitted so far was scored or given up on, or `timeout_s` passed; True if idle."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread (after the call in flight, at most one deadline) and close the channel."""
        self._pending.put(None)
        self._thread.join(timeout_s)
        self.client.close()

    # -- the scorer thread ------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._take_pending(block=not self._backlog)
            if self._stopping:
                break
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._score(batch)
            except Exception:  # a bug here must never take the engine down
                log.exception("ltr: scoring a batch failed; those requests stay unscored (FCFS)")
                self._finish(batch)
                self._give_up(len(batch), "internal error")
        # Whatever is left stays unscored: the engine is shutting down.
        self._finish(list(self._backlog))

    def _take_pending(self, block: bool) -> None:
        """Move submissions into the backlog; with `block`, wait for one (or, with retries due later, until the first is due)."""
        timeout = None
        if not block and self._backlog:
            wait = min(job.not_before for job in self._backlog) - time.monotonic()
            if wait > 0:
                timeout = wait
                block = True
        while True:
            try:
                item = self._pending.get(timeout=timeout) if block else self._pending.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopping = True
                return
            self._backlog.append(_Job(*item))
            block, timeout = False, None

    def _next_batch(self) -> list[_Job]:
        """Up to `sizer.size()` due jobs, oldest first; retries only while their requests still wait."""
        # With the breaker open, a whole batch rides on one trial prompt (below).
        size = self.max_batch if self.client.breaker.is_open else self.sizer.size()
        now = time.monotonic()
        batch: list[_Job] = []
        later: list[_Job] = []
        while self._backlog and len(batch) < size:
            job = self._backlog.popleft()
            if job.not_before > now:
                later.append(job)
            elif job.attempts and not self._still_waiting(job.request_id):
                self.stats.skipped += 1
                self._finish([job])
            else:
                batch.append(job)
        self._backlog.extendleft(reversed(later))
        return batch

    def _score(self, batch: list[_Job]) -> None:
        detokenize = self._detokenizer()
        if detokenize is None:
            self._finish(batch)
            return
        rest: list[_Job] = []
        if self.client.breaker.is_open:
            # Most likely no call will be made; decode just one prompt, for
            # the breaker's half-open trial, so a dead sidecar costs one
            # decode per batch. The rest wait for the trial's outcome.
            batch, rest = batch[:1], batch[1:]
        items, kept = [], []
        for job in batch:
            text = detokenize(head_and_tail(job.token_ids, self.max_prompt_tokens))
            if text:  # the sidecar rejects empty prompts; unscored is the right answer
                items.append(ScoreItem(job.request_id, prompt=text))
                kept.append(job)
        if len(kept) < len(batch):
            self._finish([job for job in batch if job not in kept])
        if not kept:
            self._backlog.extendleft(reversed(rest))
            return
        t0 = time.perf_counter()
        result = self.client.score(items, timeout_s=self.sizer.timeout_s(len(items)))
        elapsed = time.perf_counter() - t0
        if result.error == BREAKER_OPEN:
            self._finish(kept + rest)
            self._give_up(len(kept) + len(rest), "the sidecar is unavailable (circuit breaker open)")
            return
        self._backlog.extendleft(reversed(rest))
        self.stats.calls += 1
        if not result.fallback:
            self.sizer.observe(len(kept), elapsed)
            self._results.extend(result.scores.items())
            self.stats.scored += len(result.scores)
            self._finish(kept)
            return
        self.stats.failed_calls += 1
        if result.error == "DEADLINE_EXCEEDED":
            self.sizer.timed_out(len(kept), elapsed)
        retry = [job for job in kept if result.error in RETRYABLE and job.attempts < self.retries]
        give_up = [job for job in kept if job not in retry]
        now = time.monotonic()
        for job in retry:
            job.attempts += 1
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (job.attempts - 1))
            job.not_before = now + delay * (0.5 + random.random())
        self.stats.retried += len(retry)
        # Retries go back to the front: they are the oldest requests waiting.
        self._backlog.extendleft(reversed(retry))
        if give_up:
            self._finish(give_up)
            self._give_up(len(give_up), result.error or "no answer")

    def _give_up(self, count: int, reason: str) -> None:
        self.stats.unscored += count
        try:
            self._on_unscored(count, reason)
        except Exception:
            log.exception("ltr: reporting unscored requests failed")

    def _finish(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._progress:
            self._done += len(jobs)
            self._progress.notify_all()

    def _detokenizer(self) -> Detokenizer | None:
        if self._detokenize is None and not self._disabled:
            try:
                self._detokenize = self._detokenizer_factory()
            except Exception as e:
                # Once, then FCFS for good: without the engine's tokenizer
                # there is no text to rank.
                self._disabled = True
                self._give_up(0, f"cannot load the engine's tokenizer ({e})")
        return self._detokenize


def make_client(cfg: LTRConfig) -> RankerClient:
    """The RankerClient the hook's settings describe. Reads the TLS files now, so a bad path fails at engine start."""
    credentials = None
    if cfg.tls_ca:

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(cfg.tls_ca),
            private_key=read(cfg.tls_client_key),
            certificate_chain=read(cfg.tls_client_cert),
        )
    return RankerClient(
        cfg.target,
        timeout_s=cfg.deadline_ms / 1000,
        credentials=credentials,
        breaker=CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s),
        lb_policy=cfg.lb_policy or None,
        # The scorer sizes its calls (CallSizer): a slow sidecar gets smaller
        # calls and longer deadlines; only one that is away opens the breaker.
        slow_is_unhealthy=False,
    )
