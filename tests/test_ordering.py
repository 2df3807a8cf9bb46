"""The ordering policy, without gRPC: strict priority, budget, preemption, starvation guard."""

import json

import numpy as np
import pytest

from ltr_client.ordering import Candidates, StarvationGuard, fcfs_decision, next_batch

NO_GUARD = StarvationGuard(0, 0)


def test_higher_score_runs_first_and_ties_keep_arrival_order():
    c = Candidates.build(scores=[0.1, 0.9, 0.5, 0.9])
    d = next_batch(c, max_num_seqs=10, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.order.tolist() == [1, 3, 2, 0]
    assert d.num_scheduled == 4


def test_explicit_user_priority_is_the_primary_key():
    c = Candidates.build(scores=[9.0, -9.0, 0.0], priority=[1, 0, 0])
    d = next_batch(c, 10, 100, NO_GUARD)
    assert d.order.tolist() == [2, 1, 0]


def test_unscored_candidates_keep_their_fcfs_slots_and_scored_ones_sort_among_the_other_slots():
    c = Candidates.build(scores=[1.0, np.nan, 3.0, 2.0, np.nan])
    assert next_batch(c, 10, 100, NO_GUARD).order.tolist() == [2, 1, 3, 0, 4]


def test_an_unscored_candidate_has_as_many_candidates_ahead_of_it_as_under_fcfs():
    # Its score never comes: it must not wait behind later arrivals that were scored.
    c = Candidates.build(scores=[np.nan, 5.0, 9.0, 7.0])
    d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [0]
    assert next_batch(Candidates.build(scores=[-1.0, np.nan, 9.0]), 10, 100, NO_GUARD).order.tolist() == [2, 1, 0]


def test_with_no_scores_the_order_is_first_come_first_served_within_priority_and_band():
    c = Candidates.build(scores=[np.nan] * 4, priority=[0, 0, -1, 0], promoted_steps_left=[0, 0, 0, 2])
    assert next_batch(c, 10, 100, NO_GUARD).order.tolist() == [2, 3, 0, 1]


def test_scored_candidates_move_only_among_slots_of_their_own_priority():
    c = Candidates.build(scores=[1.0, 9.0, np.nan, 5.0, 7.0], priority=[1, 1, 0, 0, 1])
    assert next_batch(c, 10, 100, NO_GUARD).order.tolist() == [2, 3, 1, 4, 0]


def test_batch_is_the_prefix_that_fits_max_num_seqs():
    c = Candidates.build(scores=[1, 2, 3, 4, 5])
    d = next_batch(c, max_num_seqs=2, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [4, 3]


def test_batch_is_a_strict_prefix_under_the_token_budget():
    # The 2nd-ranked candidate needs 60 tokens and does not fit beside the 1st;
    # the 3rd would fit but must not overtake it.
    c = Candidates.build(scores=[3, 2, 1], num_tokens=[50, 60, 1])
    d = next_batch(c, max_num_seqs=10, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [0]


def test_running_candidates_outside_the_batch_are_preempted():
    c = Candidates.build(scores=[1.0, 5.0, 0.0], running=[True, False, True])
    d = next_batch(c, max_num_seqs=2, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [1, 0]
    assert d.preempted.tolist() == [2]


def test_idle_counters_grow_for_left_out_candidates_and_reset_for_scheduled_ones():
    c = Candidates.build(scores=[1.0, 0.0], idle_steps=[3, 7])
    d = next_batch(c, 1, 100, NO_GUARD)
    assert d.idle_steps.tolist() == [0, 8]


def test_starved_candidate_is_promoted_for_quantum_executed_steps():
    guard = StarvationGuard(threshold_steps=3, quantum_steps=2)
    # Candidate 0 is the long one (lowest score); candidate 1 always outranks it.
    state = Candidates.build(scores=[-10.0, 1.0])
    ran_long = []
    for _ in range(8):
        d = next_batch(state, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
        ran_long.append(0 in d.scheduled.tolist())
        state = Candidates.build(
            scores=state.scores, idle_steps=d.idle_steps, promoted_steps_left=d.promoted_steps_left
        )
    # Idle for 3 steps, then it runs for exactly its quantum of 2 steps, then waits again.
    assert ran_long[:7] == [False, False, False, True, True, False, False]


def test_promoted_candidates_run_oldest_first_regardless_of_score():
    c = Candidates.build(scores=[-5.0, 3.0, 9.0], promoted_steps_left=[1, 1, 0])
    assert next_batch(c, 10, 100).order.tolist() == [0, 1, 2]


def test_guard_with_threshold_zero_never_promotes():
    c = Candidates.build(scores=[-10.0, 1.0], idle_steps=[10_000, 0])
    assert next_batch(c, 1, 100, NO_GUARD).scheduled.tolist() == [1]


def test_policy_is_stateless_same_input_same_decision():
    c = Candidates.build(scores=[0.3, 0.2, 0.9], running=[True, False, False], idle_steps=[0, 300, 0])
    a, b = next_batch(c, 2, 100), next_batch(c, 2, 100)
    for field in ("order", "preempted", "idle_steps", "promoted_steps_left"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist()


def test_long_request_finishes_within_the_bound_the_guard_implies():
    """Simulate an engine: one long job among a never-ending stream of short ones, batch of 1."""
    guard = StarvationGuard(threshold_steps=20, quantum_steps=5)
    long_left = 10  # steps of work
    queue = {"long": (-100.0, 0, 0)}  # id -> (score, idle, promoted_left)
    next_short = 0
    for step in range(200):
        for _ in range(2):  # two short arrivals per step: the queue never drains
            queue[f"s{next_short}"] = (float(next_short % 7), 0, 0)
            next_short += 1
        ids = list(queue)
        c = Candidates.build(
            scores=[queue[i][0] for i in ids],
            idle_steps=[queue[i][1] for i in ids],
            promoted_steps_left=[queue[i][2] for i in ids],
        )
        d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
        for k, rid in enumerate(ids):
            queue[rid] = (queue[rid][0], int(d.idle_steps[k]), int(d.promoted_steps_left[k]))
        ran = ids[int(d.scheduled[0])]
        if ran == "long":
            long_left -= 1
            if long_left == 0:
                break
        else:
            del queue[ran]  # a short job finishes in one step
    # Each cycle: threshold idle steps, then quantum executed steps.
    cycles = -(-10 // guard.quantum_steps)
    assert long_left == 0
    assert step < cycles * (guard.threshold_steps + guard.quantum_steps) + 1


def test_promotion_protects_a_running_candidate_from_rank_preemption_after_its_quantum():
    guard = StarvationGuard(threshold_steps=3, quantum_steps=1)
    c = Candidates.build(scores=[-10.0, 5.0], running=[False, True], idle_steps=[3, 0])
    d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
    assert d.scheduled.tolist() == [0] and d.protected.tolist() == [True, False]
    assert d.promoted_steps_left.tolist() == [0, 0]  # its one-step quantum is spent
    # Next step it is running, its quantum is over, and a better-ranked request waits: it keeps its slot.
    c = Candidates.build(
        scores=[-10.0, 5.0], running=[True, False], idle_steps=d.idle_steps, promoted_steps_left=d.promoted_steps_left,
        protected=d.protected,
    )
    d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
    assert d.scheduled.tolist() == [0] and d.preempted.tolist() == []


def test_protected_candidate_that_is_waiting_ranks_by_score_again():
    # Protection keeps a running request running; a waiting one (preempted by the budget) competes as usual.
    c = Candidates.build(scores=[-10.0, 5.0], protected=[True, False])
    assert next_batch(c, 1, 100, NO_GUARD).scheduled.tolist() == [1]


def test_promoted_long_request_runs_to_completion_among_a_stream_of_better_ranked_arrivals():
    """An engine with one slot: once promoted, the long job is never preempted for rank, so it finishes at threshold + work."""
    guard = StarvationGuard(threshold_steps=20, quantum_steps=2)
    work = 10  # steps the long job needs
    queue = {"long": {"score": -100.0}}
    running: str | None = None
    next_short, long_done_at, long_preempted_after_promotion = 0, None, False
    for step in range(300):
        for _ in range(2):  # short arrivals that always outrank it: the queue never drains
            queue[f"s{next_short}"] = {"score": float(next_short % 7)}
            next_short += 1
        ids = list(queue)
        field = lambda name, default: [queue[i].get(name, default) for i in ids]  # noqa: E731
        c = Candidates.build(
            scores=field("score", 0.0), running=[i == running for i in ids], idle_steps=field("idle", 0),
            promoted_steps_left=field("promoted", 0), protected=field("protected", False),
        )
        d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
        for k, rid in enumerate(ids):
            queue[rid].update(idle=int(d.idle_steps[k]), promoted=int(d.promoted_steps_left[k]), protected=bool(d.protected[k]))
        if any(ids[k] == "long" for k in d.preempted) and queue["long"]["protected"]:
            long_preempted_after_promotion = True
        running = ids[int(d.scheduled[0])]
        if running == "long":
            work -= 1
            if work == 0:
                long_done_at = step
                break
        else:
            del queue[running]  # a short job finishes in one step
            running = None
    assert not long_preempted_after_promotion
    # It idles `threshold` steps, then runs its 10 steps back to back (not 2 per promotion).
    assert long_done_at == guard.threshold_steps + 10 - 1


def test_each_admission_of_a_later_arrival_counts_as_one_overtake_of_every_earlier_waiting_candidate():
    # a, b and c wait (arrival order); d runs. c is admitted past a and b; d only keeps running.
    c = Candidates.build(scores=[0.0, 1.0, 5.0, 9.0], running=[False, False, False, True], overtakes=[4, 0, 0, 0])
    d = next_batch(c, max_num_seqs=2, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [3, 2]
    assert d.overtakes.tolist() == [5, 1, 0, 0], "a running candidate that stays scheduled overtakes no one"


def test_the_overtake_trigger_promotes_a_candidate_passed_over_by_max_overtakes_later_arrivals():
    guard = StarvationGuard(threshold_steps=0, quantum_steps=2, max_overtakes=3)
    c = Candidates.build(scores=[-10.0, 1.0, 2.0], overtakes=[3, 0, 0])
    d = next_batch(c, 1, 100, guard)
    assert d.scheduled.tolist() == [0] and d.protected.tolist() == [True, False, False]
    assert next_batch(Candidates.build(scores=[-10.0, 1.0], overtakes=[2, 0]), 1, 100, guard).scheduled.tolist() == [1]


def test_with_the_overtake_trigger_a_request_starts_at_most_k_admissions_later_than_fcfs_would_start_it():
    """One slot, jobs of one step, two better-ranked arrivals per step: FCFS would start the long job at once."""
    k = 5
    guard = StarvationGuard(threshold_steps=0, quantum_steps=1, max_overtakes=k)
    queue = {"long": {"score": -100.0}}
    started_before_long = 0
    for step in range(100):
        for j in range(2):
            queue[f"s{step}-{j}"] = {"score": float(j)}
        ids = list(queue)
        field = lambda name, default: [queue[i].get(name, default) for i in ids]  # noqa: E731
        c = Candidates.build(scores=field("score", 0.0), overtakes=field("overtakes", 0), promoted_steps_left=field("promoted", 0))
        d = next_batch(c, max_num_seqs=1, max_num_batched_tokens=100, guard=guard)
        for i, rid in enumerate(ids):
            queue[rid].update(overtakes=int(d.overtakes[i]), promoted=int(d.promoted_steps_left[i]))
        ran = ids[int(d.scheduled[0])]
        if ran == "long":
            break
        started_before_long += 1
        del queue[ran]
    assert started_before_long == k


def test_requests_that_arrived_in_the_same_step_do_not_overtake_one_another():
    # A burst (arrival step 0) and a later arrival (step 1); c and d are admitted past a.
    c = Candidates.build(scores=[0.0, 1.0, 5.0, 9.0], arrival_steps=[0, 0, 0, 1])
    d = next_batch(c, max_num_seqs=2, max_num_batched_tokens=100, guard=NO_GUARD)
    assert d.scheduled.tolist() == [3, 2]
    assert d.overtakes.tolist() == [1, 1, 0, 0], "c arrived with a and b: only d overtook them"
    by_position = next_batch(Candidates.build(scores=[0.0, 1.0, 5.0, 9.0]), 2, 100, NO_GUARD)
    assert by_position.overtakes.tolist() == [2, 2, 0, 0], "without arrival steps every row is a later arrival"


def test_a_preempted_requests_return_counts_as_an_admission():
    c = Candidates.build(scores=[-5.0, 9.0], arrival_steps=[0, 1])
    assert next_batch(c, 1, 100, NO_GUARD).overtakes.tolist() == [1, 0]


def test_the_guards_headroom_is_the_steps_and_admissions_before_the_first_promotion():
    guard = StarvationGuard(threshold_steps=10, quantum_steps=2, max_overtakes=4)
    idle, overtakes, promoted = np.array([3, 7, 9]), np.array([1, 0, 3]), np.array([0, 0, 1])
    assert guard.headroom(idle, overtakes, promoted) == (3, 3), "the promoted one is not counted"
    for extra in range(3):
        assert not (guard.due(idle + extra, overtakes) & (promoted <= 0)).any()
    assert guard.due(idle + 3, overtakes)[1]
    assert StarvationGuard(0, 0).headroom(idle, overtakes, promoted) == (np.inf, np.inf)


def test_the_fallback_is_the_policy_with_no_scores_and_no_guard():
    c = Candidates.build(scores=[9.0, -9.0, 1.0], running=[True, False, False], idle_steps=[0, 5000, 0], priority=[0, 0, -1])
    d = fcfs_decision(c, max_num_seqs=2, max_num_batched_tokens=100)
    assert d.order.tolist() == [2, 0, 1] and d.preempted.tolist() == []
    assert d.idle_steps.tolist() == [0, 5001, 0] and not d.protected.any()
    assert fcfs_decision(c, 0, 0).num_scheduled == 1, "a budget below 1 counts as 1"


def test_non_positive_budget_is_rejected():
    with pytest.raises(ValueError):
        next_batch(Candidates.build(scores=[1.0]), 0, 10)


def test_the_checked_in_fallback_vectors_are_what_the_policy_decides():
    from tools import fcfs_vectors

    assert fcfs_vectors.PATH.read_text() == fcfs_vectors.render(), "stale: run `python tools/fcfs_vectors.py`"


def test_the_python_clients_fallback_decides_every_vector_alike():
    # clients/node/test/fallback.test.js asserts the same vectors against the Node client's fallback.
    from ltr_client import Candidate, fcfs_batch
    from tools import fcfs_vectors

    cases = json.loads(fcfs_vectors.PATH.read_text())["cases"]
    assert len(cases) > 50
    for case in cases:
        cands = [
            Candidate(
                r["requestId"], running=r.get("running", False), num_tokens=r.get("numTokens", 1), priority=r.get("priority", 0),
                idle_steps=r.get("idleSteps", 0), promoted_steps_left=r.get("promotedStepsLeft", 0),
                protected=r.get("protected", False), overtakes=r.get("overtakes", 0), arrival_step=r.get("arrivalStep"),
            )
            for r in case["candidates"]
        ]
        batch = fcfs_batch(cands, case["budget"]["maxNumSeqs"], case["budget"]["maxNumBatchedTokens"])
        got = {key: np.asarray(getattr(batch, field)).tolist() for field, key in fcfs_vectors.EXPECTED.items()}
        assert got == case["expected"], case["name"]
