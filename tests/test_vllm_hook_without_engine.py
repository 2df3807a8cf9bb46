"""The vLLM hook's parts that need no engine: the ranking policy applied to a queue, rank preemption, the
admission log, cutting long prompts, and the configuration. They import without vLLM, so they always run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest

from ltr_client import ordering
from ltr_client.vllm import LTRConfig
from ltr_client.vllm.ranking import AdmissionLog, RankedTable, RankState
from ltr_client.vllm.scorer import head_and_tail


_CREATED = itertools.count()


@dataclass
class Item:
    """A stand-in for a vLLM request: what the ranking reads (a name for the assertions, priority, arrival, ltr_state)."""

    name: str
    score: float | None = None
    priority: int = 0
    last_run_step: int = 0
    arrival_step: int = 0
    # Like vLLM's: the ranking's tie-break within one arrival step. Creation order.
    arrival_time: float = field(default_factory=lambda: next(_CREATED))

    def __post_init__(self) -> None:
        self.ltr_state = RankState(
            score=float("nan") if self.score is None else self.score, last_run_step=self.last_run_step, arrival_step=self.arrival_step
        )


def names(items: Iterable[Item] | None) -> list[str] | None:
    return None if items is None else [i.name for i in items]


NO_GUARD = ordering.StarvationGuard(0, 0, 0)


def test_unscored_requests_keep_their_fcfs_slots_and_scored_ones_sort_around_them():
    queue = [Item("a", 1.0), Item("b"), Item("c", 3.0), Item("d", 2.0), Item("e")]
    assert RankedTable().reorder([queue], [False], step=1, guard=ordering.StarvationGuard(), max_num_seqs=8)
    assert names(queue) == ["c", "b", "d", "a", "e"]
    unscored = [Item("a"), Item("b")]
    assert not RankedTable().reorder([unscored], [False], 1, ordering.StarvationGuard(), 8), "no scores: FCFS as is"


def test_priority_is_the_primary_key_and_the_guard_promotes_with_the_shared_policy():
    guard = ordering.StarvationGuard(threshold_steps=5, quantum_steps=2)
    queue = [Item("low", -9.0), Item("high", 9.0), Item("urgent-unscored", priority=-1), Item("late", 0.0, last_run_step=6)]
    items = list(queue)
    table = RankedTable()
    # At step 7 the first three have idled 6 steps (promoted: oldest first, after explicit priority), "late" none.
    assert table.reorder([queue], [False], step=7, guard=guard, max_num_seqs=8)
    assert names(queue) == ["urgent-unscored", "low", "high", "late"]
    assert items[0].ltr_state.promoted_steps_left == 2 and items[3].ltr_state.promoted_steps_left == 0
    assert items[0].ltr_state.protected and not items[3].ltr_state.protected
    # Until "late" idles 5 steps (step 12), ranking again cannot change the order.
    assert table.next_step == 12 and not table.needs_rank(11, 0) and table.needs_rank(12, 0)
    assert not table.reorder([queue], [False], 8, guard, 8)


def test_promoted_requests_run_oldest_first_even_after_the_queue_was_reranked():
    guard = ordering.StarvationGuard(threshold_steps=5, quantum_steps=2)
    old, older, fresh = Item("old", 9.0), Item("older", 1.0), Item("fresh", 5.0, last_run_step=6)
    old.arrival_time, older.arrival_time, fresh.arrival_time = 2.0, 1.0, 3.0
    # The queue as the last ranking left it: best score first, not arrival order.
    queue = [old, fresh, older]
    RankedTable().reorder([queue], [False], step=7, guard=guard, max_num_seqs=8)
    assert names(queue) == ["older", "old", "fresh"], "both idled past the threshold: oldest arrival first"


def victims(running: list[Item], waiting: list[Item], max_num_seqs: int) -> list[str]:
    """The running requests the shared decision preempts when running and waiting ones are ranked as one table."""
    table = RankedTable()
    table.reorder([running, waiting], [True, False], step=1, guard=NO_GUARD, max_num_seqs=max_num_seqs)
    assert table.last is not None
    return [table.last.rows[i].name for i in table.last.decision.preempted.tolist()]


def test_better_ranked_waiting_requests_displace_the_worst_running_ones_beyond_the_free_slots():
    def running() -> list[Item]:
        return [Item("good", 5.0), Item("unscored"), Item("bad", -3.0), Item("worse", -4.0)]

    def waiting() -> list[Item]:
        return [Item("best", 9.0), Item("mid", 0.0), Item("meh", -3.5), Item("new")]

    # No free slot: "best" and "mid" take the slots of "bad" and "worse"; "meh" ranks below "good".
    assert victims(running(), waiting(), max_num_seqs=4) == ["bad", "worse"]
    # One free slot goes to "best" without preempting anyone for it.
    assert victims(running(), waiting(), max_num_seqs=5) == ["worse"]
    assert victims([Item("a", 1.0), Item("b", 2.0)], [Item("x"), Item("y")], 2) == [], "unscored requests keep their FCFS slots"
    promoted = Item("promoted", -9.0)
    promoted.ltr_state.promoted_steps_left = 3
    assert victims([promoted], [Item("best", 9.0)], 1) == [], "the starvation band outranks any score"
    promoted.ltr_state.promoted_steps_left, promoted.ltr_state.protected = 0, True
    assert victims([promoted], [Item("best", 9.0)], 1) == [], "once promoted, it keeps its slot"
    assert victims([Item("low", 9.0, priority=1)], [Item("urgent", -9.0, priority=-1)], 1) == ["low"]


def test_a_removal_calls_for_ranking_again_only_when_an_unscored_request_waits_ahead_of_a_scored_one():
    table = RankedTable()
    table.reorder([[Item("a", 1.0), Item("b", 2.0), Item("new")]], [False], 1, NO_GUARD, 8)
    assert not table.fragile, "the unscored request is the latest arrival: removing the head keeps the order"
    late = [Item("a", 1.0), Item("unscored"), Item("b", 9.0), Item("c", 5.0)]
    table.reorder([late], [False], 1, NO_GUARD, 8)
    assert table.fragile and names(late) == ["b", "unscored", "c", "a"]
    late.pop(0)  # "b" is admitted: the slots shift, and a fresh ranking puts "c" ahead of "unscored"
    table.reorder([late], [False], 2, NO_GUARD, 8)
    assert names(late) == ["c", "unscored", "a"]


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
    env = {"LTR_TARGET": "ranker:1", "LTR_DEADLINE_MS": "50", "LTR_STARVATION_THRESHOLD": "9"}
    cfg = LTRConfig.load({"ltr": {"starvation_threshold": 4, "enabled": "false"}}, environ=env)
    assert (cfg.target, cfg.deadline_ms, cfg.starvation_threshold, cfg.enabled) == ("ranker:1", 50.0, 4, False)
    assert LTRConfig.load(None, environ={}) == LTRConfig()
    # The old name still works for a release; the new one wins when both are set.
    assert LTRConfig.load(None, environ={"LTR_SIDECAR_TARGET": "old:1"}).target == "old:1"
    assert LTRConfig.load(None, environ={"LTR_SIDECAR_TARGET": "old:1", "LTR_TARGET": "new:1"}).target == "new:1"
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
