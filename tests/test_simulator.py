"""The serving simulator (benchmarks/sim): its engine model, that it runs the shared ordering code, and its CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ltr_client import ordering

from benchmarks.sim import guards
from benchmarks.sim.engine import Engine, simulate
from benchmarks.sim.trace import kendall_tau, synthetic_scores
from benchmarks.sim.workloads import parse_guard, scorer_ready

REPO = Path(__file__).resolve().parent.parent


def skewed(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths with a heavy tail, like ShareGPT's."""
    rng = np.random.default_rng(seed)
    out = np.clip(np.round(np.exp(rng.normal(3.5, 1.0, n))), 1, 400).astype(np.int64)
    return np.full(n, 16, dtype=np.int64), out


def test_one_request_takes_one_step_per_output_token_and_its_first_token_comes_with_its_prefill() -> None:
    r = simulate(Engine(max_num_seqs=1, step_ms=10.0), np.array([10]), np.array([5]), np.array([0.0]), None, None)
    assert r.first_token_s[0] == pytest.approx(0.010)
    assert r.finish_s[0] == pytest.approx(0.050)
    assert r.finish_step[0] == 5


def test_a_chunked_prefill_spreads_over_steps_and_a_whole_one_waits_for_budget() -> None:
    eng = Engine(max_num_seqs=2, max_num_batched_tokens=64, step_ms=10.0)
    r = simulate(eng, np.array([100]), np.array([1]), np.array([0.0]), None, None)
    assert r.finish_step[0] == 2  # 64 + 36 prompt tokens, the first token with the second chunk
    whole = Engine(max_num_seqs=2, max_num_batched_tokens=64, step_ms=10.0, chunked_prefill=False)
    # Request 1's 40-token prompt does not fit beside request 0's 40 in a 64-token step: it starts a step later.
    r = simulate(whole, np.array([40, 40]), np.array([3, 3]), np.zeros(2), None, None)
    assert r.finish_step.tolist() == [3, 4]


def test_step_time_grows_with_the_tokens_scheduled() -> None:
    eng = Engine(max_num_seqs=1, step_ms=10.0, step_ms_per_token=1.0)
    r = simulate(eng, np.array([20]), np.array([2]), np.array([0.0]), None, None)
    assert r.finish_s[0] == pytest.approx((10 + 20 + 10 + 1) / 1000)


def test_equal_scores_serve_first_come_first_served() -> None:
    prompt, out = skewed(60)
    arrivals = np.sort(np.random.default_rng(1).uniform(0, 2, 60))
    eng = Engine(max_num_seqs=4)
    fcfs = simulate(eng, prompt, out, arrivals, None, None)
    tied = simulate(eng, prompt, out, arrivals, np.zeros(60), guards.current_default())
    np.testing.assert_array_equal(tied.finish_step, fcfs.finish_step)


def test_an_idle_engine_jumps_to_the_next_arrival() -> None:
    r = simulate(Engine(max_num_seqs=1, step_ms=10.0), np.array([1, 1]), np.array([2, 2]), np.array([0.0, 5.0]), None, None)
    assert r.latency.tolist() == pytest.approx([0.02, 0.02])


def test_the_oracle_beats_fcfs_on_mean_latency_in_a_skewed_burst() -> None:
    prompt, out = skewed()
    eng = Engine(max_num_seqs=8)
    fcfs = simulate(eng, prompt, out, np.zeros(len(out)), None, None)
    oracle = simulate(eng, prompt, out, np.zeros(len(out)), -out.astype(float), guards.no_guard())
    assert np.mean(oracle.latency) < 0.7 * np.mean(fcfs.latency)
    # The same work: every request finishes, the makespan moves only by the tail's packing.
    assert not np.isnan(oracle.finish_s).any()
    assert abs(oracle.steps - fcfs.steps) < 0.05 * fcfs.steps


def test_the_simulator_ranks_with_the_shared_ordering_module(monkeypatch: pytest.MonkeyPatch) -> None:
    prompt, out = skewed()
    eng = Engine(max_num_seqs=4)
    scores = -out.astype(float)
    before = simulate(eng, prompt, out, np.zeros(len(out)), scores, guards.no_guard())
    calls = []
    real = ordering.priority_order

    def reversed_order(c: ordering.Candidates, guard: ordering.StarvationGuard) -> ordering.GuardedOrder:
        calls.append(len(c))
        p = real(c, guard)
        return p._replace(order=p.order[::-1].copy())

    monkeypatch.setattr(ordering, "priority_order", reversed_order)
    after = simulate(eng, prompt, out, np.zeros(len(out)), scores, guards.no_guard())
    assert calls, "the simulator never called ltr_client.ordering.priority_order"
    # Reversing the shared policy's order makes it longest-first: a worse mean than shortest-first.
    assert np.mean(after.latency) > 1.5 * np.mean(before.latency)


def starving_trace() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A long request behind a stream of short ones that arrive faster than one slot serves them: shortest-first starves it."""
    n = 400
    out = np.full(n, 4, dtype=np.int64)  # 4 steps of 10 ms each
    out[1] = 50
    arrivals = (np.arange(n) - 1) * 0.03  # the shorts every 3 steps
    arrivals[:2] = [0.0, 0.001]  # the long one while request 0 runs
    scores = -out.astype(float)
    return np.full(n, 8, dtype=np.int64), out, arrivals, scores


def test_without_a_guard_a_long_request_starves_and_a_guard_bounds_its_wait() -> None:
    prompt, out, arrivals, scores = starving_trace()
    eng = Engine(max_num_seqs=1, step_ms=10.0)
    nog = simulate(eng, prompt, out, arrivals, scores, guards.no_guard())
    assert nog.latency[1] > 10.0  # served only once the stream ends
    bounded = simulate(eng, prompt, out, arrivals, scores, guards.Fixed("g", ordering.StarvationGuard(100, 32, 0)))
    # Promoted after 100 idle steps, then the next free slot (<= 4 steps), then its own 50 steps.
    assert bounded.latency[1] <= (100 + 4 + 50 + 2) * 0.010
    assert bounded.promoted[1]
    relative = simulate(eng, prompt, out, arrivals, scores, guards.Relative("r", k=3.0, kind="latency"))
    assert relative.latency[1] < nog.latency[1] / 5


def test_a_different_guard_changes_the_result() -> None:
    prompt, out, arrivals, scores = starving_trace()
    eng = Engine(max_num_seqs=1, step_ms=10.0)
    a = simulate(eng, prompt, out, arrivals, scores, guards.Fixed("a", ordering.StarvationGuard(100, 32, 0)))
    b = simulate(eng, prompt, out, arrivals, scores, guards.Fixed("b", ordering.StarvationGuard(300, 32, 0)))
    assert a.latency[1] < b.latency[1]


def test_a_virtual_deadline_bounds_the_longest_predicted_request() -> None:
    prompt, out, arrivals, scores = starving_trace()
    eng = Engine(max_num_seqs=1, step_ms=10.0)
    design = guards.Deadline("d", w=2.0, reference=np.sort(scores), kind="latency")
    r = simulate(eng, prompt, out, arrivals, scores, design)
    assert r.latency[1] < 2.0


def test_unscored_requests_keep_their_fcfs_slots_until_the_score_arrives() -> None:
    prompt, out = skewed(40)
    eng = Engine(max_num_seqs=2)
    arrivals = np.zeros(40)
    never = simulate(eng, prompt, out, arrivals, -out.astype(float), guards.no_guard(), score_ready_s=np.full(40, math.inf))
    fcfs = simulate(eng, prompt, out, arrivals, None, None)
    np.testing.assert_array_equal(never.finish_step, fcfs.finish_step)


def test_the_modelled_scorer_returns_scores_in_arrival_order_at_its_rate() -> None:
    ready = scorer_ready(np.array([0.0, 0.0, 10.0]), rate=10.0)
    assert ready is not None
    assert ready.tolist() == pytest.approx([0.1, 0.2, 10.1])
    assert scorer_ready(np.zeros(3), 0.0) is None


def test_runs_are_deterministic_for_a_seed() -> None:
    prompt, out = skewed()
    s1, s2 = synthetic_scores(out, 0.6, seed=3), synthetic_scores(out, 0.6, seed=3)
    np.testing.assert_array_equal(s1, s2)
    arrivals = np.sort(np.random.default_rng(5).uniform(0, 5, len(out)))
    r1 = simulate(Engine(), prompt, out, arrivals, s1, guards.current_default())
    r2 = simulate(Engine(), prompt, out, arrivals, s2, guards.current_default())
    np.testing.assert_array_equal(r1.finish_s, r2.finish_s)
    assert not np.array_equal(s1, synthetic_scores(out, 0.6, seed=4))


@pytest.mark.parametrize("tau", [0.45, 0.8])
def test_synthetic_scores_reach_their_target_tau(tau: float) -> None:
    out = np.clip(np.round(np.exp(np.random.default_rng(123).normal(4, 1.2, 3000))), 1, 4000).astype(np.int64)
    assert kendall_tau(synthetic_scores(out, tau, seed=0), out) == pytest.approx(tau, abs=0.04)


def test_guard_specs_parse_and_bad_ones_name_the_flag() -> None:
    ref = np.arange(10.0)
    assert isinstance(parse_guard("step:768:32", ref), guards.Fixed)
    assert isinstance(parse_guard("rel:latency:2.5", ref), guards.Relative)
    assert isinstance(parse_guard("deadline:wait:3", ref), guards.Deadline)
    for bad in ("step:x:1", "rel:nosuch:2", "what"):
        with pytest.raises(ValueError, match="--guards"):
            parse_guard(bad, ref)


def test_cli_help_and_a_bad_flag() -> None:
    ok = subprocess.run([sys.executable, "-m", "benchmarks.sim", "--help"], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "--guards" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.sim", "--rates", "0,1"], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--rates" in bad.stderr and "Traceback" not in bad.stderr
