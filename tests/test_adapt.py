"""`ltr-sidecar adapt` end to end on a tiny bundle: the written bundle verifies, serves base + adapter over real gRPC,
keeps no prompt text, and is the base unchanged when the trace teaches nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from ltr_client.api import ranker_pb2 as pb
from ltr_sidecar.bundle import load_bundle
from ltr_sidecar.calibration import ADAPTER_FILE, Adapter
from ltr_sidecar.cli import main
from ltr_sidecar.ranker import OnnxRanker
from tools.tiny_bundle import SAMPLE_LINES

# Written into every trace prompt; must appear in no file of a written bundle.
MARKER = "zqxprivatemarker"
WORDS = sorted({w for line in SAMPLE_LINES for w in line.split()})


def served_trace(path: Path, n: int, seed: int, shuffle: bool = False) -> list[dict]:
    """Prompts mixing "brief" and "essay" with other words; the served model answers them the reverse of the tiny
    bundle's bias ("brief" long, "essay" short), and answers past 400 tokens are cut (finish_reason "length")."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        brief, essay = rng.integers(0, 4, size=2)
        words = [*rng.choice(WORDS, size=rng.integers(3, 8)), *["brief"] * brief, *["essay"] * essay]
        rng.shuffle(words)
        length = int(np.exp(4.0 + 0.6 * (brief - essay) + 0.3 * rng.normal())) + 1
        rows.append({"id": f"r{i}", "prompt": f"{MARKER} {' '.join(words)}", "output_tokens": min(length, 400),
                     "finish_reason": "length" if length > 400 else "stop"})
    if shuffle:  # lengths dealt to prompts at random: nothing to learn
        lengths = rng.permutation([(r["output_tokens"], r["finish_reason"]) for r in rows])
        for row, (tokens, finish) in zip(rows, lengths):
            row["output_tokens"], row["finish_reason"] = int(tokens), str(finish)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_adapt_writes_a_verified_bundle_that_serves_base_plus_adapter(tiny_bundle: Path, tmp_path: Path, start_sidecar, capsys) -> None:
    rows = served_trace(tmp_path / "trace.jsonl", 300, seed=0)
    out = tmp_path / "adapted"
    assert main(["adapt", str(tiny_bundle), "--data", str(tmp_path / "trace.jsonl"), "--out", str(out), "--no-progress",
                 "--report", str(tmp_path / "report.json")]) == 0
    assert "base score + adapter" in capsys.readouterr().out

    bundle = load_bundle(out)  # every file's sha256, the adapter's included
    assert ADAPTER_FILE in bundle.metadata["files"]
    base = load_bundle(tiny_bundle)
    assert bundle.model_version != base.model_version and bundle.version.startswith(base.version + "+adapt.")
    provenance = bundle.metadata["adapter"]
    assert provenance["base"]["model_sha256"] == base.model_sha256 and provenance["data"]["rows"] == 300
    assert provenance["fit"]["promoted"] and provenance["fit"]["held_out_candidate_tau_b"] > provenance["fit"]["held_out_base_tau_b"]

    # The served scores are the base model's plus the adapter, computed from the same features.
    prompts = [r["prompt"] for r in rows[:40]]
    adapter = Adapter.from_json(json.loads((out / ADAPTER_FILE).read_text()))
    served = OnnxRanker(out)
    embedding, base_scores, tokens = served.features_ids(served.tokenize(prompts))
    np.testing.assert_allclose(base_scores, OnnxRanker(tiny_bundle).score_texts(prompts), atol=1e-5)
    expected = adapter.apply(embedding, base_scores, tokens)
    np.testing.assert_allclose(served.score_texts(prompts), expected, atol=1e-4)

    # ... over real gRPC too, under the new version.
    sidecar = start_sidecar(model=out)
    resp = sidecar.stub().Score(pb.ScoreRequest(items=[pb.ScoreItem(request_id=str(i), prompt=p) for i, p in enumerate(prompts)]), timeout=10)
    assert resp.model_version == bundle.model_version
    np.testing.assert_allclose([s.score for s in resp.scores], expected, atol=1e-4)

    # The adapter turned the bundle's wrong order for this model into the right one, on prompts it never saw.
    fresh = served_trace(tmp_path / "fresh.jsonl", 300, seed=1)
    lengths = [-r["output_tokens"] for r in fresh]
    base_tau = kendalltau(OnnxRanker(tiny_bundle).score_texts([r["prompt"] for r in fresh]), lengths, variant="b").statistic
    adapted_tau = kendalltau(served.score_texts([r["prompt"] for r in fresh]), lengths, variant="b").statistic
    assert base_tau < 0 < adapted_tau - 0.3

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["promoted"] and report["model_version"] == bundle.model_version
    # No prompt text anywhere in the bundle or the report.
    for file in [*out.iterdir(), tmp_path / "report.json"]:
        assert MARKER.encode() not in file.read_bytes(), file


def test_adapt_ships_the_base_unchanged_when_the_trace_teaches_nothing(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    served_trace(tmp_path / "noise.jsonl", 200, seed=2, shuffle=True)
    out = tmp_path / "same"
    assert main(["adapt", str(tiny_bundle), "--data", str(tmp_path / "noise.jsonl"), "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "not promoted" in said and "base bundle unchanged" in said
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    for file in tiny_bundle.iterdir():
        assert (out / file.name).read_bytes() == file.read_bytes(), file.name
    assert load_bundle(out).model_version == load_bundle(tiny_bundle).model_version


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--data", "{tmp}/missing.jsonl"], "--data"),
        (["--data", "{tmp}/empty.jsonl"], "--data"),
        (["--data", "{tmp}/trace.jsonl", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_adapt_refuses_bad_input_naming_the_flag(tiny_bundle: Path, tmp_path: Path, caplog, args: list[str], named: str) -> None:
    (tmp_path / "empty.jsonl").write_text('{"prompt": "no length"}\n')
    served_trace(tmp_path / "trace.jsonl", 30, seed=3)
    argv = ["adapt", str(tiny_bundle), *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    assert named in caplog.text and not (tmp_path / "out").exists()


def test_adapt_refuses_a_bundle_that_is_not_one_naming_bundle(tmp_path: Path, caplog) -> None:
    served_trace(tmp_path / "trace.jsonl", 30, seed=4)
    assert main(["adapt", str(tmp_path), "--data", str(tmp_path / "trace.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "BUNDLE:" in caplog.text


def test_trace_rows_say_how_they_finished(tmp_path: Path) -> None:
    from ltr_sidecar.training.traces import read_traces

    rows = [{"prompt": "a", "output_tokens": 5, "finish_reason": "stop"}, {"prompt": "b", "output_tokens": 9, "finish_reason": "length"},
            {"prompt": "c", "output_tokens": 3, "censored": True}, {"prompt": "d", "output_tokens": 4},
            {"prompt": "e", "output_tokens": 4, "finish_reason": "weird"}, {"prompt": "f", "output_tokens": 4, "finish_reason": "stop", "censored": True}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, report = read_traces(tmp_path / "t.jsonl")
    assert [e.censored for e in examples] == [False, True, True, False]
    assert [line for line, _ in report.bad_lines] == [5, 6]
    assert "finish_reason" in report.bad_lines[0][1] and "contradicts" in report.bad_lines[1][1]
