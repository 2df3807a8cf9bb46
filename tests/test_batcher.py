"""The micro-batcher: batch sizes, the delay bound, overload, and dropping abandoned work."""

import asyncio
import threading
import time

import pytest

from ltr_sidecar.batcher import DeadlineExpired, MicroBatcher, Overloaded


class Recorder:
    """A model stand-in that records each batch it is given; `gate` can hold it mid-batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(items))
        return [x * 10 for x in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submissions_are_merged_into_batches_no_larger_than_the_maximum():
    async def main():
        model = Recorder()
        b = MicroBatcher(model, max_batch_size=4, max_delay_s=0.05, max_queue=100)
        b.start()
        results = await asyncio.gather(*(b.submit([i]) for i in range(10)))
        await b.stop()
        return model, results

    model, results = run(main())
    assert [r[0] for r in results] == [i * 10 for i in range(10)]
    assert max(len(x) for x in model.batches) == 4
    assert len(model.batches) == 3


def test_a_lone_item_waits_at_most_about_the_max_delay():
    async def main():
        b = MicroBatcher(Recorder(), max_batch_size=64, max_delay_s=0.01, max_queue=100)
        b.start()
        t = time.perf_counter()
        await b.submit([1])
        elapsed = time.perf_counter() - t
        await b.stop()
        return elapsed

    # Generous bound: the point is that it does not wait for 64 items.
    assert run(main()) < 1.0


def test_submissions_beyond_the_queue_bound_are_refused_with_overloaded():
    async def main():
        model = Recorder()
        model.gate.clear()  # hold the first batch so the queue fills
        b = MicroBatcher(model, max_batch_size=1, max_delay_s=0, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # the worker takes item 0 and blocks in the model
        queued = [asyncio.ensure_future(b.submit([i])) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit([4])
        model.gate.set()
        done = await asyncio.gather(first, *queued)
        await b.stop()
        return done

    assert [r[0] for r in run(main())] == [0, 10, 20, 30]


def test_cancelled_items_are_dropped_before_inference_and_do_not_wedge_the_worker():
    async def main():
        model = Recorder()
        model.gate.clear()
        b = MicroBatcher(model, max_batch_size=1, max_delay_s=0, max_queue=10)
        b.start()
        blocker = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)
        abandoned = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0)
        abandoned.cancel()
        model.gate.set()
        await blocker
        after = await b.submit([2])
        await b.stop()
        return model.batches, after, b.dropped_cancelled

    batches, after, dropped = run(main())
    assert [1] not in batches
    assert after == [20]
    assert dropped == 1


def test_items_whose_deadline_passed_in_the_queue_are_dropped_with_deadline_expired():
    async def main():
        model = Recorder()
        model.gate.clear()
        b = MicroBatcher(model, max_batch_size=1, max_delay_s=0, max_queue=10)
        b.start()
        blocker = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(b.submit([1], deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.05)
        model.gate.set()
        await blocker
        with pytest.raises(DeadlineExpired):
            await late
        await b.stop()
        return model.batches

    assert [1] not in run(main())


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    async def main():
        b = MicroBatcher(flaky, max_batch_size=8, max_delay_s=0, max_queue=10)
        b.start()
        with pytest.raises(RuntimeError):
            await b.submit([1])
        ok = await b.submit([2])
        await b.stop()
        return ok

    assert run(main()) == [2]
