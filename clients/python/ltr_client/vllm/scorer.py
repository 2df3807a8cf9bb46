"""BackgroundScorer: gets scores for new requests off the scheduling path.

The engine thread only enqueues (request id, prompt token ids) and, once per
step, takes whatever scores have arrived; both are O(1) per item and never
touch the network. One daemon thread does the slow parts: it loads the
engine's tokenizer (the engine holds token ids of the *LLM's* tokenizer, while
the ranker reads text), decodes prompts, and calls `RankerClient.score` with a
deadline, batching whatever queued up while the previous call was in flight.

Failures cost nothing: the client returns no scores (and its circuit breaker
logs the single "unavailable" warning), so those requests stay unscored and
keep their FCFS slots.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from ..breaker import CircuitBreaker
from ..client import RankerClient, ScoreItem
from .config import LTRConfig

log = logging.getLogger(__name__)

Detokenizer = Callable[[Sequence[int]], str]


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


class BackgroundScorer:
    """Scores submitted prompts in batches on a daemon thread; results are polled with `drain()`."""

    def __init__(
        self,
        client: RankerClient,
        detokenizer_factory: Callable[[], Detokenizer],
        max_batch: int = 64,
        max_prompt_tokens: int = 2048,
        deadline_s: float = 0.2,
    ):
        self.client = client
        self._detokenizer_factory = detokenizer_factory
        self._detokenize: Detokenizer | None = None
        self._disabled = False
        self.max_batch = max_batch
        self.max_prompt_tokens = max_prompt_tokens
        self.deadline_s = deadline_s
        # SimpleQueue and deque append/popleft are thread-safe on their own.
        # The counters behind the condition exist for wait_idle(); the engine
        # thread only ever takes that lock uncontended, for a nanosecond-scale increment.
        self._pending: queue.SimpleQueue[tuple[str, Sequence[int]] | None] = queue.SimpleQueue()
        self._results: deque[tuple[str, float]] = deque()
        self._progress = threading.Condition()
        self._submitted = 0
        self._done = 0
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
        """Prompts submitted and not yet scored or given up on."""
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

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._score(batch)
            except Exception:  # a bug here must never take the engine down
                log.exception("ltr: scoring a batch failed; those requests stay unscored (FCFS)")
            finally:
                with self._progress:
                    self._done += len(batch)
                    self._progress.notify_all()
            if stop:
                return

    def _score(self, batch: list[tuple[str, Sequence[int]]]) -> None:
        detokenize = self._detokenizer()
        if detokenize is None:
            return
        if self.client.breaker.is_open:
            # The call will most likely fall back at once; decode just enough
            # for the breaker's half-open trial, so a dead sidecar costs one
            # decode per batch. The rest stay unscored (FCFS).
            batch = batch[:1]
        items = []
        for request_id, token_ids in batch:
            text = detokenize(head_and_tail(token_ids, self.max_prompt_tokens))
            if text:  # the sidecar rejects empty prompts; unscored is the right answer
                items.append(ScoreItem(request_id, prompt=text))
        result = self.client.score(items, timeout_s=self.deadline_s)
        self._results.extend(result.scores.items())

    def _detokenizer(self) -> Detokenizer | None:
        if self._detokenize is None and not self._disabled:
            try:
                self._detokenize = self._detokenizer_factory()
            except Exception as e:
                # One warning, then FCFS for good: without the engine's
                # tokenizer there is no text to rank.
                self._disabled = True
                log.warning("ltr: cannot load the engine's tokenizer (%s); scheduling stays FCFS", e)
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
    )
