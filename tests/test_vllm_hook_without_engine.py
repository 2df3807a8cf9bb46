"""The vLLM hook's parts that need no engine: the ranking policy applied to a queue, rank preemption, the
admission log, cutting long prompts, and the configuration. They import without vLLM, so they always run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ltr_client import ordering
from ltr_client.vllm import LTRConfig
from ltr_client.vllm.ranking import AdmissionLog, RankState, preemption_victims, rank
from ltr_client.vllm.scorer import head_and_tail


@dataclass
class Item:
    """A stand-in for a vLLM request: what the ranking reads (a name for the assertions, priority, arrival, ltr_state)."""

    name: str
    score: float | None = None
    priority: int = 0
    mark: int = 0
    arrival_step: int = 0

    def __post_init__(self) -> None:
        self.ltr_state = RankState(
            score=float("nan") if self.score is None else self.score, mark=self.mark, arrival_step=self.arrival_step
        )


def names(items: list[Item] | None) -> list[str] | None:
    return None if items is None else [i.name for i in items]


def test_unscored_requests_keep_their_fcfs_slots_and_scored_ones_sort_around_them():
    items = [Item("a", 1.0), Item("b"), Item("c", 3.0), Item("d", 2.0), Item("e")]
    assert names(rank(items, step=1, guard=ordering.StarvationGuard()).items) == ["c", "b", "d", "a", "e"]
    assert rank([Item("a"), Item("b")], 1, ordering.StarvationGuard()).items is None, "no scores: FCFS as is"


def test_priority_is_the_primary_key_and_the_guard_promotes_with_the_shared_policy():
    guard = ordering.StarvationGuard(threshold_steps=5, quantum_steps=2)
    items = [Item("low", -9.0), Item("high", 9.0), Item("urgent-unscored", priority=-1), Item("late", 0.0, mark=10)]
    # At step 7 "low" and "high" have idled 6 steps (promoted: oldest first), "late" none.
    result = rank(items, step=7, guard=guard)
    assert names(result.items) == ["urgent-unscored", "low", "high", "late"]
    assert items[0].ltr_state.promoted_steps_left == 2 and items[3].ltr_state.promoted_steps_left == 0
    assert items[0].ltr_state.protected and not items[3].ltr_state.protected
    # Until "late" idles 5 steps (step 16), ranking again cannot change the order.
    assert result.next_promotion_step == 16
    assert rank(result.items, step=8, guard=guard).items is None


def test_promoted_requests_run_oldest_first_even_after_the_queue_was_reranked():
    guard = ordering.StarvationGuard(threshold_steps=5, quantum_steps=2)
    old, older, fresh = Item("old", 9.0), Item("older", 1.0), Item("fresh", 5.0, mark=10)
    old.arrival_time, older.arrival_time, fresh.arrival_time = 2.0, 1.0, 3.0
    # The queue as the last ranking left it: best score first, not arrival order.
    result = rank([old, fresh, older], step=7, guard=guard)
    assert names(result.items) == ["older", "old", "fresh"], "both idled past the threshold: oldest arrival first"


def test_better_ranked_waiting_requests_displace_the_worst_running_ones_beyond_the_free_slots():
    running = [Item("good", 5.0), Item("unscored"), Item("bad", -3.0), Item("worse", -4.0)]
    waiting = [Item("best", 9.0), Item("mid", 0.0), Item("meh", -3.5), Item("new")]
    # No free slot: "best" displaces "worse", "mid" displaces "bad"; "meh" ranks below "good".
    assert names(preemption_victims(running, waiting, free_slots=0)) == ["worse", "bad"]
    # One free slot goes to "best" without preempting anyone.
    assert names(preemption_victims(running, waiting, free_slots=1)) == ["worse"]
    assert preemption_victims(running, [Item("x"), Item("y")], free_slots=0) == [], "unscored requests never preempt"
    promoted = Item("promoted", -9.0)
    promoted.ltr_state.promoted_steps_left = 3
    assert preemption_victims([promoted], [Item("best", 9.0)], free_slots=0) == [], "the starvation band outranks any score"
    promoted.ltr_state.promoted_steps_left, promoted.ltr_state.protected = 0, True
    assert preemption_victims([promoted], [Item("best", 9.0)], free_slots=0) == [], "once promoted, it keeps its slot"
    assert names(preemption_victims([Item("low", 9.0, priority=1)], [Item("urgent", -9.0, priority=-1)], 0)) == ["low"]


def test_the_admission_log_counts_admissions_that_arrived_in_later_steps_and_survives_pruning():
    log = AdmissionLog()
    for arrival_step in (5, 2, 9, 7, 5):
        log.record(arrival_step)
    # Arrivals of the same step (a burst) do not overtake one another.
    assert log.admitted_after(np.array([0, 4, 5, 6, 9])).tolist() == [5, 4, 2, 2, 0]
    log.forget_before(4)  # no live request arrived before step 4
    assert len(log) == 4 and log.total == 5
    assert log.admitted_after(np.array([4, 6])).tolist() == [4, 2]


def test_long_prompts_keep_both_ends_for_the_ranker_and_short_ones_stay_whole():
    ids = list(range(100))
    assert head_and_tail(ids, 10) == [*range(5), *range(95, 100)]
    assert head_and_tail(ids, 7) == [0, 1, 2, 3, 97, 98, 99]
    assert head_and_tail(ids, 100) is ids and head_and_tail(ids[:3], 10) == [0, 1, 2]
    assert head_and_tail(ids, 1) == [0]


def test_config_comes_from_env_then_additional_config_and_rejects_typos():
    env = {"LTR_SIDECAR_TARGET": "ranker:1", "LTR_DEADLINE_MS": "50", "LTR_STARVATION_THRESHOLD": "9"}
    cfg = LTRConfig.load({"ltr": {"starvation_threshold": 4, "enabled": "false"}}, environ=env)
    assert (cfg.target, cfg.deadline_ms, cfg.starvation_threshold, cfg.enabled) == ("ranker:1", 50.0, 4, False)
    assert LTRConfig.load(None, environ={}) == LTRConfig()
    with pytest.raises(ValueError, match="unknown"):
        LTRConfig.load({"ltr": {"treshold": 1}}, environ={})
    with pytest.raises(ValueError, match="LTR_DEADLINE_MS"):
        LTRConfig.load(None, environ={"LTR_DEADLINE_MS": "soon"})
    assert LTRConfig.load(None, environ={"LTR_SCORE_WAIT_MS": "25"}).score_wait_ms == 25.0
    for bad in (-1, float("nan"), float("inf"), 60_001):
        with pytest.raises(ValueError, match="score_wait_ms"):
            LTRConfig.load({"ltr": {"score_wait_ms": bad}}, environ={})
    for bad in ("nan", "inf", "0"):
        with pytest.raises(ValueError, match="deadline_ms"):
            LTRConfig.load(None, environ={"LTR_DEADLINE_MS": bad})
