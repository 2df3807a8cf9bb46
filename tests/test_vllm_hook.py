"""The vLLM scheduler hook (ltr_client.vllm) on a real vLLM engine, on CPU.

One tiny Llama (benchmarks/tiny_llama.py: random weights, a word-level
tokenizer over the test's words) serves every test. The engine is started
once with `scheduler_cls="ltr_client.vllm.LTRScheduler"`; each test then
installs a fresh scheduler (stock FCFS or the hook, with the test's own
sidecar) on the idle engine, so FCFS and the hook are compared on the same
engine and weights without paying for a second engine start. Progress is
counted in engine steps, not seconds, so the assertions do not depend on the
machine's speed.

Without vllm the module is skipped locally, but fails under CI (env CI set),
so that a missing install cannot pass as a skip. The hook's parts that need
no vLLM are tested in test_vllm_hook_without_engine.py, which always runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.tiny_llama import build_tiny_llama, set_vllm_env, word_level_tokenizer

# Before vLLM's import, which reads them: in-process engine core (so that the
# test can reach the scheduler), no CPU pinning, 1 GiB of KV cache, no hub.
set_vllm_env()

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise RuntimeError(f"vllm must be installed in CI to test the scheduler hook: {e}") from e
    pytest.skip(f"vllm is not installed ({e})", allow_module_level=True)

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

from ltr_client import ordering  # noqa: E402
from ltr_client.vllm import LTRAsyncScheduler, LTRRequestQueue, LTRScheduler  # noqa: E402
from ltr_client.api import ranker_pb2 as pb  # noqa: E402
from ltr_client.vllm.ranking import STATE_ATTR, AdmissionLog, RankedTable  # noqa: E402
from tests.test_vllm_hook_without_engine import Item, names  # noqa: E402

# Prompts the tiny ranker (conftest.WORD_BIAS) scores far apart: "brief"
# ranks shortest, "essay" longest. Words outside the LLM tokenizer's
# vocabulary would decode to [UNK] and lose their bias.
BRIEF = ["brief brief answer", "brief answer please", "one word brief reply", "brief brief brief"]
ESSAY = ["essay essay about rome", "write an essay on history", "long essay essay please", "essay on the history of rome"]
VOCAB = sorted({w for p in BRIEF + ESSAY for w in p.split()} | {"the", "a", "of", "question", "explain", "detail"})

MAX_NUM_SEQS = 2
SHORT_TOKENS, LONG_TOKENS = 4, 16
# Arrival order alternates long, short: FCFS makes every short request wait
# behind a long one.
MIXED = [
    (f"long{i}", ESSAY[i // 2], LONG_TOKENS) if i % 2 == 0 else (f"short{i}", BRIEF[i // 2], SHORT_TOKENS) for i in range(8)
]


# --------------------------------------------------------------------------
# Engine fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and a word-level tokenizer trained on VOCAB."""
    path = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_llama(path, word_level_tokenizer(VOCAB), hidden_size=128, num_layers=2, max_position_embeddings=256)


# The scheduler class vLLM built when the engine started.
LOADED: list[type] = []


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> Iterator[LLM]:
    engine = LLM(
        model=str(model_dir),
        scheduler_cls="ltr_client.vllm.LTRScheduler",  # the --scheduler-cls path, resolved by vLLM
        additional_config={"ltr": {"enabled": False}},
        max_num_seqs=MAX_NUM_SEQS,
        max_model_len=256,
        block_size=32,  # the smallest the CPU backend takes: small blocks, so that the preemption test runs out of KV cache quickly
        dtype="float32",  # so that rounding differences between batch shapes cannot flip a greedy token
        enforce_eager=True,
        enable_prefix_caching=False,  # every run computes every token: outputs comparable across runs
        seed=0,
    )
    LOADED.append(type(core(engine).scheduler))  # what vLLM built from scheduler_cls
    yield engine
    core(engine).scheduler.shutdown()


def core(engine: LLM) -> Any:
    """The in-process EngineCore (VLLM_ENABLE_V1_MULTIPROCESSING=0), which owns the scheduler."""
    return engine.llm_engine.engine_core.engine_core


def stock(engine: LLM) -> type[Scheduler]:
    """vLLM's own scheduler class for this engine: AsyncScheduler when async scheduling is on (GPUs), else Scheduler."""
    return AsyncScheduler if core(engine).vllm_config.scheduler_config.async_scheduling else Scheduler


def install(engine: LLM, cls: type[Scheduler], num_blocks: int | None = None, **ltr: object) -> Scheduler:
    """Replace the idle engine's scheduler with a new `cls`, configured by `additional_config["ltr"] = ltr`.

    `LTRScheduler` picks its async variant itself; pass `stock(engine)` for vLLM's own.
    """
    engine_core = core(engine)
    old = engine_core.scheduler
    assert not old.has_unfinished_requests()
    old.vllm_config.additional_config["ltr"] = dict(ltr)
    kv_cache_config = old.kv_cache_config
    if num_blocks is not None:
        # A smaller logical pool over the same KV tensors: block ids stay in range.
        kv_cache_config = dataclasses.replace(kv_cache_config, num_blocks=num_blocks)
    new = cls(
        vllm_config=old.vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=old.structured_output_manager,
        block_size=old.block_size,
        hash_block_size=old.hash_block_size,
        include_finished_set=old.finished_req_ids_dict is not None,
        log_stats=old.log_stats,
    )
    # Finished requests the workers have not been told about yet: the next step tells them.
    new.finished_req_ids = old.finished_req_ids
    old.shutdown()
    engine_core.scheduler = new
    return new


@dataclass(frozen=True)
class Done:
    step: int  # the engine step in which the request finished
    token_ids: tuple[int, ...]


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)


def submit(engine: LLM, requests: list[tuple[str, str, int]]) -> None:
    for request_id, prompt, max_tokens in requests:
        engine.llm_engine.add_request(request_id, prompt, params(max_tokens))


def drive(engine: LLM, on_step: Callable[[int, dict[str, Done]], None] | None = None, max_steps: int = 400) -> dict[str, Done]:
    """Step the engine until it is idle; `on_step(step, done)` runs before each step."""
    done: dict[str, Done] = {}
    step = 0
    while engine.llm_engine.has_unfinished_requests():
        step += 1
        assert step <= max_steps, "the engine did not finish"
        if on_step is not None:
            on_step(step, done)
        for out in engine.llm_engine.step():
            if out.finished:
                done[out.request_id] = Done(step, tuple(out.outputs[0].token_ids))
    return done


def mean_step(done: dict[str, Done], prefix: str) -> float:
    steps = [d.step for rid, d in done.items() if rid.startswith(prefix)]
    return sum(steps) / len(steps)


def ltr_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("ltr_client") and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def fcfs(llm: LLM) -> dict[str, Done]:
    """The reference: stock vLLM FCFS on MIXED."""
    install(llm, stock(llm))
    submit(llm, MIXED)
    return drive(llm)


# --------------------------------------------------------------------------
# The waiting queue (a subclass of vLLM's), without an engine
# --------------------------------------------------------------------------


def ranker(queue: LTRRequestQueue, guard: ordering.StarvationGuard, log: AdmissionLog | None = None) -> Callable[[int], bool]:
    """What the scheduler does at the start of each step: rank the queue's table if its order can have changed."""

    def rank(step: int) -> bool:
        if not queue.table.needs_rank(step, log.total if log is not None else 0):
            return False
        return queue.table.reorder([queue], [False], step, guard, MAX_NUM_SEQS, log)

    return rank


def test_the_queue_reranks_on_new_scores_prepends_and_due_promotions_only():
    guard = ordering.StarvationGuard(threshold_steps=4, quantum_steps=1)
    a, b, c = Item("a", 1.0), Item("b", 2.0), Item("c")
    queue = LTRRequestQueue([a, b, c])
    rank = ranker(queue, guard)
    assert rank(1) and names(queue) == ["b", "a", "c"]
    c.ltr_state.score = 3.0
    assert not rank(2), "nothing said the order changed: no work"
    queue.invalidate()  # what the scheduler does when scores arrive
    assert rank(2) and names(queue) == ["c", "b", "a"]
    queue.pop_request()  # every request is scored: the rest stays ranked
    assert not queue.table.stale
    queue.prepend_request(Item("p", 0.0, last_run_step=2))  # a preempted request returns at the front
    assert rank(3) and names(queue) == ["b", "a", "p"]
    # "a" has idled since step 0: at step 5 the guard promotes it, with no other trigger.
    b.ltr_state.last_run_step = 3
    assert not rank(4)
    assert rank(5) and names(queue) == ["a", "b", "p"]
    assert a.ltr_state.promoted_steps_left == 1 and b.ltr_state.promoted_steps_left == 0


def test_the_queue_promotes_a_request_overtaken_by_k_later_arrivals_and_reranks_only_when_one_can_be_due():
    guard = ordering.StarvationGuard(threshold_steps=0, quantum_steps=1, max_overtakes=2)
    log = AdmissionLog()
    long, mid = Item("long", -5.0, arrival_step=0), Item("mid", 0.0, arrival_step=1)
    queue = LTRRequestQueue([long, mid])
    rank = ranker(queue, guard, log)
    assert rank(1) and names(queue) == ["mid", "long"]
    log.record(2)  # one later arrival admitted: long 1 overtake, mid 1
    assert not rank(2), "no one can have reached 2 overtakes yet"
    log.record(3)
    assert rank(3) and names(queue) == ["long", "mid"], "both due: oldest first"
    assert long.ltr_state.protected and long.ltr_state.promoted_steps_left == 1
    # A preempted request's count restarts from its overtake_base.
    fresh = Item("fresh", -5.0, arrival_step=0)
    fresh.ltr_state.overtake_base = 2
    RankedTable().reorder([[fresh]], [False], 4, guard, 1, log)
    assert not fresh.ltr_state.protected, "2 admissions of later arrivals, but both before it was preempted"


# --------------------------------------------------------------------------
# The hook in vLLM
# --------------------------------------------------------------------------


def test_scheduler_cls_loads_the_hook_and_async_scheduling_gets_the_async_variant(llm: LLM, fcfs: dict[str, Done], start_sidecar):
    scheduler_config = core(llm).vllm_config.scheduler_config
    # The engine was started with scheduler_cls="ltr_client.vllm.LTRScheduler", resolved by vLLM.
    assert LOADED == [LTRAsyncScheduler if scheduler_config.async_scheduling else LTRScheduler]
    # vLLM's CPU platform forces async scheduling off; flip the flag to get the
    # class vLLM builds on GPUs. It still steps through the synchronous loop
    # here, which exercises AsyncScheduler's bookkeeping under the hook's overrides.
    was = scheduler_config.async_scheduling
    scheduler_config.async_scheduling = True
    try:
        scheduler = install(llm, LTRScheduler, target=start_sidecar().target)
    finally:
        scheduler_config.async_scheduling = was
    assert type(scheduler) is LTRAsyncScheduler and isinstance(scheduler, AsyncScheduler)
    assert type(scheduler).mro().index(LTRScheduler) < type(scheduler).mro().index(AsyncScheduler)
    submit(llm, MIXED)
    assert scheduler.scorer.wait_idle(30)
    done = drive(llm)
    assert {r: d.token_ids for r, d in done.items()} == {r: d.token_ids for r, d in fcfs.items()}
    assert mean_step(done, "short") <= 0.5 * mean_step(fcfs, "short")


def test_short_requests_finish_first_with_the_hook(llm: LLM, fcfs: dict[str, Done], start_sidecar):
    sidecar = start_sidecar()
    scheduler = install(llm, LTRScheduler, target=sidecar.target)
    submit(llm, MIXED)
    # The step never waits for scores; the test does, so that it measures the
    # order and not a race between the sidecar and the first step.
    assert scheduler.scorer.wait_idle(30)
    ltr = drive(llm)

    assert set(ltr) == set(fcfs)
    short_ltr, short_fcfs = mean_step(ltr, "short"), mean_step(fcfs, "short")
    assert short_ltr <= 0.5 * short_fcfs, (short_ltr, short_fcfs)
    assert max(d.step for r, d in ltr.items() if r.startswith("short")) < min(d.step for r, d in ltr.items() if r.startswith("long"))
    # Same engine steps overall (the work is the same), and the order changes no output.
    assert max(d.step for d in ltr.values()) == max(d.step for d in fcfs.values())
    assert {r: d.token_ids for r, d in ltr.items()} == {r: d.token_ids for r, d in fcfs.items()}


def test_long_requests_admitted_before_their_scores_give_their_slots_to_short_ones(llm: LLM, fcfs: dict[str, Done], start_sidecar):
    def run(preempt: bool) -> tuple[dict[str, Done], int]:
        scheduler = install(llm, LTRScheduler, target=start_sidecar().target, preempt=preempt)

        def scores_after_the_first_step(step: int, done: dict[str, Done]) -> None:
            if step == 2:  # step 1 admitted long0 and short1 unscored, first come first served
                assert scheduler.scorer.wait_idle(30)

        submit(llm, MIXED)
        return drive(llm, scores_after_the_first_step), scheduler.ltr_preemptions

    kept, none = run(preempt=False)
    preempted, count = run(preempt=True)
    assert none == 0 and count >= 1
    # long0 kept its slot without preemption: every short request but short1 waited for it.
    assert mean_step(preempted, "short") < mean_step(kept, "short"), (mean_step(preempted, "short"), mean_step(kept, "short"))
    assert max(d.step for r, d in preempted.items() if r.startswith("short")) < min(d.step for r, d in preempted.items() if r.startswith("long"))
    assert {r: d.token_ids for r, d in preempted.items()} == {r: d.token_ids for r, d in fcfs.items()}, "recomputed, not changed"


def test_with_score_wait_a_burst_is_ranked_before_its_first_admission(llm: LLM, fcfs: dict[str, Done], start_sidecar):
    scheduler = install(llm, LTRScheduler, target=start_sidecar().target, score_wait_ms=30_000)
    submit(llm, MIXED)
    done = drive(llm)  # the test does not wait for scores: the hook does

    # Even the first admissions were ranked: no long request ran before every short one finished.
    assert max(d.step for r, d in done.items() if r.startswith("short")) < min(d.step for r, d in done.items() if r.startswith("long"))
    assert scheduler.ltr_score_waits == 1, "one burst of arrivals, one wait"
    assert {r: d.token_ids for r, d in done.items()} == {r: d.token_ids for r, d in fcfs.items()}


def test_score_wait_never_waits_when_every_waiting_request_gets_a_slot(llm: LLM, start_sidecar):
    scheduler = install(llm, LTRScheduler, target=start_sidecar().target, score_wait_ms=30_000)
    submit(llm, MIXED[:MAX_NUM_SEQS])  # a slot for each: the order decides nothing
    done = drive(llm)
    assert len(done) == MAX_NUM_SEQS and scheduler.ltr_score_waits == 0


def test_score_wait_with_a_dead_sidecar_ends_when_the_calls_fail_and_gives_fcfs(llm: LLM, fcfs: dict[str, Done], start_sidecar):
    sidecar = start_sidecar()
    sidecar.stop()
    scheduler = install(llm, LTRScheduler, target=sidecar.target, breaker_failures=1, deadline_ms=100, score_wait_ms=60_000)
    submit(llm, MIXED)
    done = drive(llm)
    assert done == fcfs
    # Refused connections fail at once, so the wait ends with them, long before score_wait_ms.
    assert scheduler.ltr_score_waits == 1 and scheduler.ltr_score_wait_s < 30, scheduler.ltr_score_wait_s


def test_a_score_wait_that_runs_out_goes_on_unranked_counts_the_timeout_and_warns_once(llm: LLM, fcfs: dict[str, Done], start_sidecar, caplog):
    # A real sidecar that holds each batch 1.5 s for more prompts: slower than the 50 ms the step may wait.
    sidecar = start_sidecar(max_batch_size=len(MIXED) + 1, max_delay_ms=1500)
    scheduler = install(llm, LTRScheduler, target=sidecar.target, deadline_ms=10_000, score_wait_ms=50)
    with caplog.at_level(logging.WARNING, logger="ltr_client.vllm.scheduler"):
        submit(llm, MIXED)
        done = drive(llm)
    assert scheduler.ltr_score_waits == 1 and scheduler.ltr_score_wait_timeouts == 1
    assert scheduler.ltr_score_wait_s < 1.0, "the step went on after score_wait_ms, not after the sidecar's 1.5 s"
    assert {r: d.token_ids for r, d in done.items()} == {r: d.token_ids for r, d in fcfs.items()}, "nothing lost or changed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "score_wait_ms" in r.getMessage()]
    assert len(warnings) == 1 and "went on without them" in warnings[0], warnings


@pytest.mark.parametrize("preempt", [False, True], ids=["vllm-preemption-only", "rank-preemption"])
def test_the_starvation_guard_bounds_a_long_request_under_a_stream_of_short_ones(llm: LLM, start_sidecar, preempt: bool):
    n, m, short_tokens = 6, 2, 3
    sidecar = start_sidecar()
    # Once promoted, the long request keeps its slot to the end either way:
    # with rank preemption it is protected from it after its m steps.
    scheduler = install(llm, LTRScheduler, target=sidecar.target, starvation_threshold=n, starvation_quantum=m, preempt=preempt)
    submit(llm, [("long", ESSAY[0], LONG_TOKENS), ("short-0", BRIEF[0], short_tokens), ("short-1", BRIEF[1], short_tokens)])
    assert scheduler.scorer.wait_idle(30)
    shorts = [2]

    def stream(step: int, done: dict[str, Done]) -> None:
        # Keep at least two short requests queued for as long as the long one
        # is unfinished: without the guard it would never be picked.
        if "long" in done:
            return
        waiting = sum(1 for r in scheduler.waiting if not r.request_id.startswith("long"))
        for _ in range(max(0, MAX_NUM_SEQS - waiting)):
            submit(llm, [(f"short-{shorts[0]}", BRIEF[shorts[0] % len(BRIEF)], short_tokens)])
            shorts[0] += 1
        assert scheduler.scorer.wait_idle(30)

    done = drive(llm, stream)
    # Promoted after N idle steps, the long request heads the queue and takes
    # the first slot a short request frees (at most short_tokens steps later;
    # with rank preemption, at once), then runs to completion. M only
    # protects it as a KV-pressure victim, which this KV-rich run never needs.
    bound = n + 1 + short_tokens + LONG_TOKENS
    assert done["long"].step <= bound, (done["long"].step, bound)
    first_step = done["long"].step - LONG_TOKENS + 1
    assert first_step > n, "until promoted, the long request yielded to every short one (LTR, not FCFS)"
    overtook = [r for r, d in done.items() if r.startswith("short") and d.step < done["long"].step and int(r[6:]) >= 2]
    assert len(overtook) >= 2, "short requests that arrived after it ran first"
    assert len(done) == shorts[0] + 1


@pytest.mark.parametrize("preempt", [False, True], ids=["vllm-preemption-only", "rank-preemption"])
def test_the_overtake_guard_starts_a_long_request_after_k_later_arrivals_have_started(llm: LLM, start_sidecar, preempt: bool):
    k, short_tokens = 5, 3
    scheduler = install(
        llm, LTRScheduler, target=start_sidecar().target, starvation_threshold=0, starvation_overtakes=k, preempt=preempt
    )
    submit(llm, [("long", ESSAY[0], LONG_TOKENS), ("short-0", BRIEF[0], short_tokens), ("short-1", BRIEF[1], short_tokens)])
    assert scheduler.scorer.wait_idle(30)
    shorts, started, arrived = [2], {}, {"short-0": 0, "short-1": 0}

    def stream(step: int, done: dict[str, Done]) -> None:
        for r in scheduler.running:
            # The engine adds a suffix to each request id; it ran in the previous step.
            started.setdefault(r.request_id.rsplit("-", 1)[0], step - 1)
        if "long" in started:
            return
        waiting = sum(1 for r in scheduler.waiting if not r.request_id.startswith("long"))
        for _ in range(max(0, MAX_NUM_SEQS - waiting)):
            submit(llm, [(f"short-{shorts[0]}", BRIEF[shorts[0] % len(BRIEF)], short_tokens)])
            arrived[f"short-{shorts[0]}"] = step - 1  # the engine steps done so far
            shorts[0] += 1
        assert scheduler.scorer.wait_idle(30)

    done = drive(llm, stream)
    # Short requests that arrived in a later step than the long one overtake it
    # when they start first; those of its own step (before the first one) do not.
    # The guard promotes it at the first step that begins with k overtakes; the
    # step in which the k-th started may have started one more (2 slots).
    assert any(arrived[r] == 0 and s < started["long"] for r, s in started.items() if r != "long"), "same-step arrivals went first"
    overtook = sorted(r for r, s in started.items() if r != "long" and arrived[r] > 0 and s < started["long"])
    assert k <= len(overtook) <= k + MAX_NUM_SEQS - 1, (overtook, started)
    assert set(done) == {"long"} | {f"short-{i}" for i in range(shorts[0])}


def test_the_hook_on_vllm_decides_every_step_as_next_batch_does_for_the_same_candidates(llm: LLM, start_sidecar):
    """The one policy: the hook's admissions and rank preemptions, step by step, are NextBatch's for the same table.

    The test keeps NextBatch's view of the engine itself: every live request
    with its score (as the hook got it from the sidecar), whether it runs, its
    arrival step and the counters NextBatch returned last step. Arrivals come
    in bursts and a stream, with rank preemption, both guard triggers and
    explicit priorities, so that promotions, protection and same-step
    arrivals all occur.
    """
    guard = pb.StarvationGuard(threshold_steps=4, quantum_steps=2, max_overtakes=3)
    sidecar = start_sidecar()
    scheduler = install(
        llm, LTRScheduler, target=sidecar.target, preempt=True,
        starvation_threshold=guard.threshold_steps, starvation_quantum=guard.quantum_steps, starvation_overtakes=guard.max_overtakes,
    )  # fmt: skip
    # Engine steps done -> arrivals (id, prompt, tokens to generate, priority).
    arrivals = {
        0: [("e0", ESSAY[0], 10, 0), ("e1", ESSAY[1], 10, 0), ("b0", BRIEF[0], 3, 0)],
        2: [("b1", BRIEF[1], 3, 0)],
        3: [("b2", BRIEF[2], 3, 0), ("e2", ESSAY[2], 8, 0), ("b3", BRIEF[3], 2, 0)],
        5: [("b4", BRIEF[0], 3, 0)],
        6: [("u0", ESSAY[3], 4, -1)],
        8: [("b5", BRIEF[1], 2, 0), ("b6", BRIEF[2], 2, 0)],
        11: [("b7", BRIEF[3], 3, 0)],
    }
    live: dict[str, dict[str, Any]] = {}  # NextBatch's view, in arrival order
    ran: list[set[str]] = []
    preempted_for_rank: list[str] = []
    schedule, preempt = scheduler.schedule, scheduler._preempt_request

    def record_schedule(*args: Any, **kwargs: Any) -> Any:
        output = schedule(*args, **kwargs)
        ran.append({r.rsplit("-", 1)[0] for r in output.num_scheduled_tokens})
        return output

    def record_preemption(request: Any, *args: Any, **kwargs: Any) -> None:
        preempted_for_rank.append(request.request_id.rsplit("-", 1)[0])
        preempt(request, *args, **kwargs)

    scheduler.schedule, scheduler._preempt_request = record_schedule, record_preemption
    stub = sidecar.stub()
    steps_done, preemptions, promotions = 0, 0, 0
    while live or steps_done <= max(arrivals):
        assert steps_done < 300, "the engine did not finish"
        for rid, prompt, tokens, priority in arrivals.get(steps_done, []):
            llm.llm_engine.add_request(rid, prompt, params(tokens), priority=priority)
            live[rid] = {"left": tokens, "priority": priority, "arrival": steps_done, "running": False, "counters": (0, 0, False, 0)}
        assert live and scheduler.scorer.wait_idle(30)
        scheduler._apply_scores()  # what the step does first; here so that the test can read them
        scores = {r.request_id.rsplit("-", 1)[0]: getattr(r, STATE_ATTR).score for r in scheduler.requests.values()}
        ids = list(live)
        idle, promoted, protected, overtakes = (list(c) for c in zip(*(live[i]["counters"] for i in ids), strict=True))
        resp = stub.NextBatch(
            pb.NextBatchRequest(
                columns=pb.CandidateColumns(
                    request_ids=ids, scores=[scores[i] for i in ids], running=[live[i]["running"] for i in ids],
                    priorities=[live[i]["priority"] for i in ids], idle_steps=idle, promoted_steps_left=promoted,
                    protected=protected, overtakes=overtakes, arrival_steps=[live[i]["arrival"] for i in ids],
                ),
                budget=pb.Budget(max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=4096),
                guard=guard,
            ),
            timeout=10,
        )  # fmt: skip
        assert not any(math.isnan(s) for s in resp.scores), "every score arrived before the step"
        expected_run = {ids[i] for i in resp.order[: resp.num_scheduled]}
        expected_preempted = [ids[i] for i in resp.preempted]
        del preempted_for_rank[:]
        llm.llm_engine.step()
        steps_done += 1
        hook, next_batch = (sorted(ran[-1]), sorted(preempted_for_rank)), (sorted(expected_run), sorted(expected_preempted))
        assert hook == next_batch, f"step {steps_done}: (ran, preempted for rank) by the hook != by NextBatch"
        preemptions += len(expected_preempted)
        promotions += sum(1 for k, i in enumerate(ids) if resp.promoted_steps_left[k] > live[i]["counters"][1])
        for k, i in enumerate(ids):
            live[i]["counters"] = (resp.idle_steps[k], resp.promoted_steps_left[k], resp.protected[k], resp.overtakes[k])
            live[i]["running"] = i in expected_run
            if i in expected_run:
                live[i]["left"] -= 1
                if live[i]["left"] == 0:
                    del live[i]
    assert not llm.llm_engine.has_unfinished_requests()
    assert preemptions >= 2 and promotions >= 2, (preemptions, promotions)


def test_a_sidecar_stopped_before_the_run_gives_exactly_fcfs_a_warning_and_a_count_of_unscored_requests(
    llm: LLM, fcfs: dict[str, Done], start_sidecar, caplog
):
    sidecar = start_sidecar()
    sidecar.stop()
    scheduler = install(llm, LTRScheduler, target=sidecar.target, breaker_failures=1, deadline_ms=100)
    with caplog.at_level(logging.WARNING, logger="ltr_client"):
        submit(llm, MIXED)
        done = drive(llm)  # no waiting for scores: steps must not wait either
        assert scheduler.scorer.wait_idle(30)
    assert done == fcfs, "same completion step and same tokens for every request"
    # Two lines, however many requests: the sidecar is down, and these requests ran unranked.
    warnings = ltr_warnings(caplog)
    assert len(warnings) == 2 and "unavailable" in warnings[0] and "without a score" in warnings[1], warnings
    # Every request is accounted for: given up on, or admitted (FCFS) before its retry was due.
    stats = scheduler.scorer.stats
    assert scheduler.ltr_unscored == stats.unscored and stats.unscored + stats.skipped == len(MIXED), stats
    assert stats.unscored >= len(MIXED) - 2 and stats.scored == 0, stats


def test_a_sidecar_stopped_during_the_run_loses_nothing_and_changes_no_output(llm: LLM, fcfs: dict[str, Done], start_sidecar, caplog):
    sidecar = start_sidecar()
    scheduler = install(llm, LTRScheduler, target=sidecar.target, breaker_failures=1, deadline_ms=100)
    late = [(f"late-{rid}", prompt, tokens) for rid, prompt, tokens in MIXED[:4]]

    def stop_midway(step: int, done: dict[str, Done]) -> None:
        if step == 4:
            sidecar.stop()
            submit(llm, late)  # these can no longer be scored

    with caplog.at_level(logging.WARNING, logger="ltr_client"):
        submit(llm, MIXED)
        assert scheduler.scorer.wait_idle(30)
        done = drive(llm, stop_midway)
        assert scheduler.scorer.wait_idle(30)
    assert set(done) == set(fcfs) | {rid for rid, _, _ in late}
    for rid, d in done.items():
        assert d.token_ids == fcfs[rid.removeprefix("late-")].token_ids, rid
    assert mean_step(done, "short") < mean_step(fcfs, "short"), "scores from before the outage still count"
    warnings = ltr_warnings(caplog)
    assert len(warnings) == 2 and "unavailable" in warnings[0] and "without a score" in warnings[1], warnings
    stats = scheduler.scorer.stats
    assert stats.scored == len(MIXED) and scheduler.ltr_unscored == stats.unscored, stats
    assert stats.unscored + stats.skipped == len(late) and stats.unscored >= 1, stats


def test_kv_cache_pressure_preempts_the_lowest_ranked_running_request(llm: LLM, start_sidecar):
    sidecar = start_sidecar()
    # 3 usable blocks of 32 tokens (block 0 is vLLM's null block): the two
    # 30-token prompts fit, but not both second blocks.
    scheduler = install(llm, LTRScheduler, num_blocks=4, target=sidecar.target)
    preempted: list[str] = []
    original = scheduler._preempt_request

    def record(request, *args, **kwargs):
        preempted.append(request.request_id)
        return original(request, *args, **kwargs)

    scheduler._preempt_request = record
    # The long-predicted request arrives first: FCFS would preempt the other one (running[-1]).
    submit(llm, [("essay", " ".join(["essay"] * 30), 12), ("brief", " ".join(["brief"] * 29), 12)])
    assert scheduler.scorer.wait_idle(30)
    done = drive(llm)
    assert set(done) == {"essay", "brief"}
    assert preempted and all(rid.startswith("essay") for rid in preempted), preempted
    assert done["brief"].step < done["essay"].step
