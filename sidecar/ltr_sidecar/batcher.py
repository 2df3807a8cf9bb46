"""A dynamic micro-batcher: many concurrent small requests become few model calls.

Callers `submit` items and await their results. One worker gathers queued
items until it has `max_batch_size` of them or the oldest has waited
`max_delay_s`, then runs the batch in a thread. While a batch runs, new items
pile up, so under load batches fill without waiting: latency is added only
when the server is idle enough to afford it.

The queue is bounded: `Overloaded` when it is too full now, `NeverFits` when
the items would not fit even in an empty queue. Items whose caller went away
(cancelled) or whose deadline passed are dropped before inference, so a
burst of abandoned calls cannot keep the model busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue cannot take these items now; the caller should back off."""


class NeverFits(ValueError):
    """More items than the queue can ever hold: waiting cannot help, the caller must send fewer."""


class DeadlineExpired(Exception):
    """The item's deadline passed before it reached the model."""


@dataclass
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None  # time.monotonic() seconds
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Batches items for `run_batch`, a blocking function from a list of items to one result each."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be positive and max_delay_s not negative")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Entry[T, R]] = deque()
        self._wakeup = asyncio.Event()
        # One thread: batches run one at a time and ONNX Runtime's own thread
        # pool already uses every core for each of them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltr-infer")
        self._worker: asyncio.Task[None] | None = None
        self.dropped_expired = 0
        self.dropped_cancelled = 0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="ltr-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for entry in self._queue:
            if not entry.future.done():
                entry.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[T], deadline: float | None = None) -> list[R]:
        """Results for `items`, in order. Raises Overloaded, NeverFits, DeadlineExpired or the model's error."""
        if not items:
            return []
        if len(items) > self.max_queue:
            raise NeverFits(f"{len(items)} prompts to run exceed the queue's {self.max_queue}, the most it can ever hold")
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(f"queue holds {len(self._queue)} of {self.max_queue} items; {len(items)} more do not fit")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(_Entry(item, fut, deadline, now) for item, fut in zip(items, futures))
        self._wakeup.set()
        # If our caller is cancelled, gather cancels these futures and the
        # worker skips them.
        return list(await asyncio.gather(*futures))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_to_fill()
            batch = self._take_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [e.item for e in batch])
            except asyncio.CancelledError:
                for entry in batch:
                    entry.future.cancel()
                raise
            except Exception as e:  # the model failed: fail this batch, keep serving
                log.exception("batch of %d failed", len(batch))
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
            for entry, result in zip(batch, results):
                if not entry.future.done():
                    entry.future.set_result(result)

    async def _wait_to_fill(self) -> None:
        """Wait until a full batch is queued or the oldest item has waited max_delay_s."""
        close_at = self._queue[0].enqueued + self.max_delay_s
        while len(self._queue) < self.max_batch_size:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Entry[T, R]]:
        batch: list[_Entry[T, R]] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if entry.future.done():  # cancelled by its caller
                self.dropped_cancelled += 1
            elif entry.deadline is not None and entry.deadline <= now:
                self.dropped_expired += 1
                entry.future.set_exception(DeadlineExpired("deadline passed while queued"))
            else:
                batch.append(entry)
        return batch
