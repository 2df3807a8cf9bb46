"""The hook's background scorer against a real sidecar on loopback: scores arrive when the sidecar is slow or away.

No vLLM here: the scorer takes token ids and a detokenizer, so these tests
hand it word ids and a word list.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ltr_client import CircuitBreaker, RankerClient, ScoreItem
from ltr_client.vllm.scorer import BackgroundScorer, CallSizer
from tools.sidecar_process import free_port
from tools.tiny_bundle import build_tiny_bundle

WORDS = ["tell", "me", "a", "story", "about", "a", "dragon", "and", "a", "knight"] * 24  # 240 words: a long prompt


def words(ids: list[int]) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in ids)


def prompt_ids(i: int) -> list[int]:
    return list(range(i % 7, len(WORDS)))  # distinct prompts, so no two share a cache entry


def scorer_for(target: str, deadline_s: float, **kw: object) -> BackgroundScorer:
    # As the hook's make_client builds it: a timeout sizes calls down and never opens the breaker.
    client = RankerClient(target, timeout_s=deadline_s, breaker=kw.pop("breaker", None), slow_is_unhealthy=False)  # type: ignore[arg-type]
    return BackgroundScorer(client, lambda: words, deadline_s=deadline_s, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def heavy_bundle(tmp_path_factory: pytest.TempPathFactory):
    # A model slow enough that a burst of long prompts takes far longer than one prompt.
    return build_tiny_bundle(tmp_path_factory.mktemp("heavy") / "b", dim=256, num_layers=4, max_length=256)


def slow_sidecar(start_sidecar: Any, bundle: Any) -> tuple[Any, float]:
    """A sidecar whose calls take time in proportion to their prompts (one per model call, no cache), and its seconds per prompt."""
    sidecar = start_sidecar(model=bundle, max_batch_size=1, cache_size=0)
    with RankerClient(sidecar.target, timeout_s=30) as probe:
        probe.score([ScoreItem("warm", prompt=words(prompt_ids(0)))])
        t0 = time.perf_counter()
        for i in range(3):
            probe.score([ScoreItem(f"t{i}", prompt=words(prompt_ids(i)) + f" {i}")])
    return sidecar, (time.perf_counter() - t0) / 3


def test_a_burst_too_big_for_one_call_within_the_deadline_is_scored_whole_in_calls_sized_from_measured_latency(
    start_sidecar, heavy_bundle
):
    sidecar, one = slow_sidecar(start_sidecar, heavy_bundle)
    deadline_s = 8 * one
    burst = 64
    with RankerClient(sidecar.target, timeout_s=30) as probe:
        # What the hook used to do: the whole burst in one call, cancelled at the deadline.
        whole = probe.score([ScoreItem(f"w{i}", prompt=words(prompt_ids(i)) + f" w{i}") for i in range(burst)], timeout_s=deadline_s)
    assert whole.fallback and whole.error == "DEADLINE_EXCEEDED"

    scorer = scorer_for(sidecar.target, deadline_s, max_batch=64, retries=3)
    try:
        for i in range(burst):
            scorer.submit(f"r{i}", prompt_ids(i) + [i])
        assert scorer.wait_idle(120)
        scores = dict(scorer.drain())
    finally:
        scorer.close()
    assert set(scores) == {f"r{i}" for i in range(burst)}, "every request of the burst got its score"
    assert scorer.stats.unscored == 0 and scorer.stats.calls > 1
    assert scorer.sizer.size() < burst


def test_a_sidecar_slower_than_the_deadline_for_one_prompt_still_scores_every_request_and_keeps_its_breaker_closed(
    start_sidecar, heavy_bundle
):
    sidecar, one = slow_sidecar(start_sidecar, heavy_bundle)
    # The deadline fits not even one prompt: every call at the configured deadline would time out.
    scorer = scorer_for(sidecar.target, one / 3, max_batch=64, retries=3, breaker=CircuitBreaker(failure_threshold=3))
    try:
        for i in range(12):
            scorer.submit(f"r{i}", prompt_ids(i) + [i])
        assert scorer.wait_idle(120)
        scores = dict(scorer.drain())
    finally:
        scorer.close()
    assert len(scores) >= 11 and scorer.stats.unscored <= 1, scorer.stats
    assert scorer.stats.failed_calls >= 1 and not scorer.client.breaker.is_open and scorer.client.breaker.times_opened == 0


def test_a_failed_call_is_retried_with_backoff_only_for_requests_that_still_wait_then_given_up_and_reported():
    dead = f"127.0.0.1:{free_port()}"
    gave_up: list[tuple[int, str]] = []
    admitted = {"r1", "r3"}  # the engine started these meanwhile: their scores are no longer needed
    scorer = scorer_for(
        dead,
        0.2,
        breaker=CircuitBreaker(failure_threshold=100),  # stays closed: every attempt is a real call
        retries=2,
        still_waiting=lambda rid: rid not in admitted,
        on_unscored=lambda n, why: gave_up.append((n, why)),
    )
    try:
        for i in range(4):
            scorer.submit(f"r{i}", prompt_ids(i))
        t0 = time.perf_counter()
        assert scorer.wait_idle(30)
        took = time.perf_counter() - t0
    finally:
        scorer.close()
    stats = scorer.stats
    assert stats.scored == 0 and scorer.drain() == []
    assert stats.skipped == 2, "the admitted requests were not retried"
    assert stats.unscored == 2 and sum(n for n, _ in gave_up) == 2 and all("UNAVAILABLE" in why for _, why in gave_up)
    # All four were queued for a retry after the first call; only the two still waiting were retried, twice each.
    assert stats.retried == 4 + 2
    assert 3 <= stats.calls <= 5, "the first call, then each retry round (jitter may split a round in two)"
    assert took >= 0.05 * 0.5 + 0.1 * 0.5, "the retries backed off"


def test_with_the_breaker_open_a_batch_costs_one_decode_and_is_given_up_at_once():
    decoded: list[int] = []

    def counting(ids: list[int]) -> str:
        decoded.append(1)
        return words(ids)

    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=60)
    breaker.record_failure()  # open, and not due for a trial for a minute
    client = RankerClient(f"127.0.0.1:{free_port()}", timeout_s=0.2, breaker=breaker)
    gave_up: list[int] = []
    scorer = BackgroundScorer(client, lambda: counting, on_unscored=lambda n, why: gave_up.append(n))
    try:
        for i in range(10):
            scorer.submit(f"r{i}", prompt_ids(i))
        assert scorer.wait_idle(10)
    finally:
        scorer.close()
    assert scorer.stats.unscored == 10 and sum(gave_up) == 10 and scorer.stats.calls == 0
    assert len(decoded) <= len(gave_up), "one decode per batch given up, not one per request"


def test_call_size_follows_measured_latency_and_shrinks_on_a_timeout():
    sizer = CallSizer(deadline_s=0.2, max_batch=64, fill=0.5, first_call=4)
    assert sizer.size() == 4, "a fresh hook knows nothing of the sidecar: a small first call"
    sizer.observe(4, 0.004)  # 1 ms a prompt: 100 fit in half the deadline
    assert sizer.size() == 64
    sizer.timed_out(64, 0.2)  # each took more than 0.2 / 64 s
    assert sizer.size() <= 32 and sizer.timeout_s(sizer.size()) == 0.2
    for _ in range(50):
        sizer.observe(10, 0.1)  # 10 ms a prompt
    assert sizer.size() == 10 and sizer.timeout_s(10) == 0.2


def test_a_sidecar_too_slow_for_one_prompt_in_the_deadline_gets_one_prompt_calls_with_a_stretched_deadline():
    sizer = CallSizer(deadline_s=0.2, max_batch=64, fill=0.5, first_call=4, max_stretch=10)
    sizer.timed_out(4, 0.2)  # four prompts did not fit in 200 ms
    sizer.timed_out(sizer.size(), sizer.timeout_s(sizer.size()))
    assert sizer.size() == 1 and sizer.timeout_s(1) > 0.2, "one prompt, given the time it needs"
    for _ in range(10):
        sizer.timed_out(1, sizer.timeout_s(1))
    assert sizer.timeout_s(1) == 2.0, "never beyond max_stretch x the deadline"
