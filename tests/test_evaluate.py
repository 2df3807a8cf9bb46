"""`ltr-sidecar evaluate` reports tau-b with its sample size and interval, and warns when the sample is too small to mean anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltr_sidecar.cli import main
from ltr_sidecar.training.metrics import kendall_tau_ci95


def traces(path: Path, rows: int) -> Path:
    """Rows the tiny bundle ranks well: 'brief' prompts (scored highest) mostly have the short answers; every 7th row does not."""
    lines = []
    for i in range(rows):
        brief = i % 2 == 0
        short = brief != (i % 7 == 6)
        lines.append(json.dumps({"id": f"r{i}", "prompt": f"{'brief' if brief else 'essay'} question {i}", "output_tokens": 10 + i if short else 500 + i}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_on_two_rows_warns_that_its_tau_is_not_a_measurement(tiny_bundle: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval.json"
    data = traces(tmp_path / "t.jsonl", 2)
    assert main(["evaluate", str(tiny_bundle), "--data", str(data), "--split", "all", "--no-baselines", "--no-progress",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["prompts"] == 2 and result["ranker"]["kendall_tau_b"] == pytest.approx(1.0)
    assert result["ranker"]["kendall_tau_b_ci95"] is None
    assert "only 2 prompts" in result["warning"]
    assert "only 2 prompts: tau-b 1.0000 is not a measurement" in captured.err  # logged
    assert "WARNING: only 2 prompts" in captured.out  # and in the report itself


def test_evaluate_on_enough_rows_reports_the_interval_without_a_warning(tiny_bundle: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval.json"
    data = traces(tmp_path / "t.jsonl", 120)
    assert main(["evaluate", str(tiny_bundle), "--data", str(data), "--split", "all", "--no-baselines", "--no-progress",
                 "--out", str(out)]) == 0
    report = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "warning" not in result and "WARNING" not in report
    low, high = result["ranker"]["kendall_tau_b_ci95"]
    assert low < result["ranker"]["kendall_tau_b"] <= high
    assert "120 prompts" in report and f"[{low:.3f}, {high:.3f}]" in report


def test_the_tau_interval_narrows_with_the_sample_and_is_undefined_below_ten():
    assert kendall_tau_ci95(0.45, 9) is None
    widths = [high - low for low, high in (kendall_tau_ci95(0.45, n) for n in (20, 100, 2000))]  # type: ignore[misc]
    assert widths[0] > widths[1] > widths[2] > 0
    low, high = kendall_tau_ci95(0.45, 2299)  # type: ignore[misc]
    assert low == pytest.approx(0.428, abs=0.003) and high == pytest.approx(0.471, abs=0.003)
