"""The load test (`python -m benchmarks.load`): a short run end to end against a tiny bundle, and the loopback-only rule.

Speed is never asserted: the point is that the tool runs, reports every
figure, and fails no call.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load.cli import main
from benchmarks.load.prompts import PromptStream, load_prompts, synthetic_prompts
from benchmarks.load.target import BenchError, parse_loopback_target
from tools.tiny_bundle import build_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bench") / "b")


def test_bench_runs_and_reports_every_figure(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = ["--model", str(bundle), "--requests", "50", "--duration", "5", "--concurrency", "1,4"]
    argv += ["--candidates", "256", "--nextbatch-calls", "50", "--memory-calls", "200", "--quiet", "--out", str(out)]
    assert main(argv) == 0

    report = json.loads(out.read_text())
    figures = report["figures"]
    for name in ("score_saturation_ratio", "score_c1_p50_overhead_ms", "nextbatch_256_p99_ms", "nextbatch_256_messages_p99_ms", "rss_ratio"):
        assert name in figures
    for name in ("score_saturation_ratio", "nextbatch_256_p99_ms", "nextbatch_256_messages_p99_ms", "rss_ratio"):
        assert isinstance(figures[name], float) and figures[name] > 0 and math.isfinite(figures[name])
    # An overhead can in principle be negative on a noisy machine; it only has to be a number.
    assert math.isfinite(figures["score_c1_p50_overhead_ms"])

    assert [level["concurrency"] for level in report["score"]] == [1, 4]
    for level in report["score"]:
        assert level["errors"] == {}
        assert level["calls"] == 50
        assert level["items_per_s"] > 0
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["cached_items"] == 0  # every prompt was new to the server
    assert set(report["nextbatch"]) == {"columns", "messages"}
    for form in report["nextbatch"].values():
        assert form["errors"] == {} and form["calls"] == 50
    # The columns form of the same candidates is the compact one.
    assert report["nextbatch"]["columns"]["request_bytes"] < report["nextbatch"]["messages"]["request_bytes"]
    assert report["memory"]["errors"] == {} and report["memory"]["rss_first_mib"] > 0
    for mode in ("single", "batch"):
        assert report["in_process"][mode]["items_per_s"] > 0
    assert report["model"]["version"] == "tiny-test-ranker@32x1-seed0"
    assert {"python", "onnxruntime", "grpcio"} <= set(report["versions"])
    assert report["machine"]["cpu_count"] >= 1
    assert report["settings"]["max_batch_size"] == 32
    assert report["total_seconds"] > 0


@pytest.mark.parametrize("target", ["10.0.0.1:50051", "example.com:50051", "0.0.0.0:50051", "[2001:db8::1]:50051", "192.168.1.2:1"])
def test_non_loopback_target_is_refused(bundle: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(bundle), "--target", target, "--quiet"]) == 2
    assert "not loopback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "expected"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("127.8.9.10:1", ("127.8.9.10", 1)), ("[::1]:7", ("::1", 7)), ("localhost:9", ("localhost", 9))],
)
def test_loopback_targets_are_accepted(target: str, expected: tuple[str, int]) -> None:
    assert parse_loopback_target(target) == expected


@pytest.mark.parametrize("target", ["127.0.0.1", "::1:50051", "127.0.0.1:0", "127.0.0.1:70000"])
def test_malformed_targets_are_refused(target: str) -> None:
    with pytest.raises(BenchError):
        parse_loopback_target(target)


def test_prompts_are_deterministic_varied_and_never_repeat() -> None:
    prompts = synthetic_prompts(400, seed=3)
    assert prompts == synthetic_prompts(400, seed=3)
    assert len(set(prompts)) > 350
    lengths = sorted(len(p.split()) for p in prompts)
    assert lengths[0] < 15 and lengths[-1] > 150
    stream = PromptStream(prompts[:2])
    taken = stream.take(3) + stream.take(3)
    assert len({p for _, p in taken}) == 6 and len({r for r, _ in taken}) == 6


def test_prompt_file_text_and_jsonl(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(text) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b", "id": 2}\n')
    assert load_prompts(jsonl) == ["a", "b"]
    jsonl.write_text('{"text": "a"}\n')
    with pytest.raises(BenchError):
        load_prompts(jsonl)


def test_the_load_test_runs_as_a_module_from_the_repository_root() -> None:
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "benchmarks.load", "--help"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m benchmarks.load") and "--target HOST:PORT" in result.stdout
