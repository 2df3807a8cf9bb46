"""The Python client against a real sidecar on loopback, and its fallbacks when the sidecar is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np
import pytest

from ltr_client import AsyncRankerClient, Candidate, CircuitBreaker, RankerClient, ScoreItem, StarvationGuard, fcfs_batch
from ltr_client.client import candidate_table
from ltr_client.ordering import Decision, next_batch
from tools.sidecar_process import free_port


def test_score_returns_scores_by_request_id_and_the_model_version(sidecar):
    with RankerClient(sidecar.target) as client:
        result = client.score([ScoreItem("a", "brief answer"), ScoreItem("b", "essay on rome")])
    assert not result.fallback
    assert result.scores["a"] > result.scores["b"]
    assert result.model_version.startswith("tiny-test-ranker@")


def test_next_batch_over_rpc_matches_the_shared_policy_run_locally(sidecar):
    cands = [
        Candidate("a", score=0.5, running=True, arrival_step=3),
        Candidate("b", score=2.0, num_tokens=30, arrival_step=4),
        Candidate("c", score=-1.0, num_tokens=20, idle_steps=800, arrival_step=4),
        Candidate("d", score=1.0, running=True, priority=1, arrival_step=6),
        Candidate("e", num_tokens=5, overtakes=2, arrival_step=6),
    ]
    with RankerClient(sidecar.target) as client:
        remote = client.next_batch(cands, max_num_seqs=3, max_num_batched_tokens=40)
    local = next_batch(candidate_table(cands), 3, 40, StarvationGuard())
    assert not remote.fallback and remote.model_version
    for field in dataclasses.fields(Decision):
        assert np.array_equal(getattr(remote, field.name), getattr(local, field.name)), field.name
    assert remote.protected.tolist() == [False, False, True, False, False]


def test_a_partial_arrival_step_column_is_a_caller_error_naming_the_candidate():
    with pytest.raises(ValueError, match=r"candidates\[1\].arrival_step"):
        fcfs_batch([Candidate("a", arrival_step=1), Candidate("b")], 1, 1)


def test_the_overtake_guard_and_counts_round_trip_through_the_client(sidecar):
    guard = StarvationGuard(threshold_steps=0, quantum_steps=2, max_overtakes=2)
    with RankerClient(sidecar.target) as client:
        first = client.next_batch([Candidate("long", score=-5.0, overtakes=1), Candidate("short", score=5.0)], 1, 100, guard=guard)
        assert first.scheduled.tolist() == [1] and first.overtakes.tolist() == [2, 0]
        second = client.next_batch([Candidate("long", score=-5.0, overtakes=2), Candidate("later", score=9.0)], 1, 100, guard=guard)
    assert second.scheduled.tolist() == [0] and second.protected.tolist() == [True, False]


def test_the_protected_flag_round_trips_through_the_client(sidecar):
    # "long" was promoted earlier and is running; the better-ranked "short" must not displace it.
    cands = [Candidate("long", score=-5.0, running=True, protected=True), Candidate("short", score=5.0)]
    with RankerClient(sidecar.target) as client:
        batch = client.next_batch(cands, max_num_seqs=1, max_num_batched_tokens=100)
    assert not batch.fallback
    assert batch.scheduled.tolist() == [0] and batch.preempted.tolist() == [] and batch.protected.tolist() == [True, False]
    assert fcfs_batch(cands, 1, 100).protected.tolist() == [True, False]


def test_prompts_in_next_batch_are_scored_by_the_sidecar(sidecar):
    with RankerClient(sidecar.target) as client:
        batch = client.next_batch([Candidate("x", prompt="essay essay"), Candidate("y", prompt="brief brief")], 1, 100)
    assert batch.scheduled.tolist() == [1]


def test_a_dead_sidecar_gives_fallbacks_opens_the_breaker_and_warns_once(caplog):
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    client = RankerClient(f"127.0.0.1:{free_port()}", timeout_s=0.2, breaker=breaker)
    cands = [Candidate("a", running=True), Candidate("b", priority=-1), Candidate("c")]
    with caplog.at_level(logging.WARNING, logger="ltr_client"):
        results = [client.score([ScoreItem("a", "hi")]) for _ in range(5)]
        t = time.perf_counter()
        batch = client.next_batch(cands, max_num_seqs=2, max_num_batched_tokens=10)
        open_call_s = time.perf_counter() - t
    assert all(r.fallback and r.scores == {} for r in results)
    assert batch.fallback and batch.order.tolist() == [1, 0, 2] and batch.scheduled.tolist() == [1, 0]
    assert breaker.is_open and breaker.times_opened == 1
    assert open_call_s < 0.05, "an open breaker must not touch the network"
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    client.close()


def test_the_client_recovers_when_the_sidecar_comes_back(start_sidecar):
    port = free_port()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=0.2)
    client = RankerClient(f"127.0.0.1:{port}", timeout_s=0.5, breaker=breaker)
    assert client.score([ScoreItem("a", "hi")]).fallback
    assert breaker.is_open
    start_sidecar(port=port)
    time.sleep(0.3)  # past reset_after_s: the next call is the half-open trial
    deadline = time.monotonic() + 10
    result = client.score([ScoreItem("a", "hi")])
    while result.fallback and time.monotonic() < deadline:
        time.sleep(0.3)
        result = client.score([ScoreItem("a", "hi")])
    assert not result.fallback and not breaker.is_open
    client.close()


def test_a_sidecar_stopped_mid_run_turns_into_fallbacks_not_exceptions(start_sidecar):
    sidecar = start_sidecar()
    client = RankerClient(sidecar.target, timeout_s=0.5)
    assert not client.score([ScoreItem("a", "hi")]).fallback
    sidecar.stop(grace=0)
    for _ in range(5):
        assert client.score([ScoreItem("b", "hi")]).fallback
        assert client.next_batch([Candidate("b")], 1, 10).fallback
    client.close()


def test_a_rejected_request_falls_back_without_opening_the_breaker(sidecar):
    client = RankerClient(sidecar.target)
    result = client.score([ScoreItem("dup", "a"), ScoreItem("dup", "b")])  # INVALID_ARGUMENT
    assert result.fallback and not client.breaker.is_open
    client.close()


def test_a_rejected_half_open_trial_still_closes_the_breaker(start_sidecar):
    port = free_port()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=0.1)
    client = RankerClient(f"127.0.0.1:{port}", timeout_s=0.5, breaker=breaker)
    assert client.score([ScoreItem("a", "hi")]).fallback and breaker.is_open
    start_sidecar(port=port)
    deadline = time.monotonic() + 10
    while breaker.is_open and time.monotonic() < deadline:
        time.sleep(0.2)  # each trial either finds the channel still reconnecting or gets INVALID_ARGUMENT
        client.score([ScoreItem("dup", "a"), ScoreItem("dup", "b")])
    assert not breaker.is_open, "an INVALID_ARGUMENT answer proves the sidecar is up"
    assert not client.score([ScoreItem("b", "hi")]).fallback
    client.close()


def test_fcfs_fallback_respects_explicit_priority_then_arrival_and_the_budget():
    batch = fcfs_batch([Candidate("a", num_tokens=5), Candidate("b", priority=-1, num_tokens=5), Candidate("c", num_tokens=5)], 10, 10)
    assert batch.order.tolist() == [1, 0, 2] and batch.num_scheduled == 2 and batch.fallback


def test_async_client_scores_and_falls_back(sidecar):
    async def main():
        live = AsyncRankerClient(sidecar.target)
        dead = AsyncRankerClient(f"127.0.0.1:{free_port()}", timeout_s=0.2)
        ok = await live.score([ScoreItem("a", "brief")])
        batch = await live.next_batch([Candidate("a", score=1.0), Candidate("b", score=2.0)], 1, 10)
        down = await dead.score([ScoreItem("a", "brief")])
        down_batch = await dead.next_batch([Candidate("a"), Candidate("b")], 1, 10)
        await live.close()
        await dead.close()
        return ok, batch, down, down_batch

    ok, batch, down, down_batch = asyncio.run(main())
    assert not ok.fallback and "a" in ok.scores
    assert batch.scheduled.tolist() == [1]
    assert down.fallback and down_batch.fallback and down_batch.scheduled.tolist() == [0]


def test_breaker_lets_one_trial_through_after_the_reset_period():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=5, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow()
    assert breaker.record_failure() is True  # opened
    assert not breaker.allow()
    now[0] = 6
    assert breaker.allow() and not breaker.allow()  # exactly one trial
    breaker.record_success()
    assert breaker.allow() and not breaker.is_open


@pytest.mark.parametrize("lb_policy", [None, "round_robin"])
def test_service_config_is_accepted_by_grpc(sidecar, lb_policy):
    with RankerClient(sidecar.target, lb_policy=lb_policy) as client:
        assert client.model_info() is not None
