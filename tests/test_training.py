"""Ranker training: the losses, trace reading, and train -> export -> evaluate -> serve on a tiny model.

The pipeline test trains a random-init 2-layer BERT on a tokenizer built here,
on synthetic traces whose output length is set by one word of the prompt, and
proves the pipeline learns: held-out tau well above 0, and the served bundle
ranks a "brief" prompt before an "essay" one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ltr_sidecar.training.traces import read_traces

try:
    import torch
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - CI installs both (make test)
    if os.environ.get("CI"):
        raise
    pytest.skip("torch and transformers (the train extra) are not installed", allow_module_level=True)

from ltr_sidecar.training.losses import list_mle, pairwise_logistic

KINDS = {"brief": 8, "short": 30, "long": 120, "essay": 400}
FILLER = ["please", "write", "about", "the", "river", "city", "music", "garden", "history", "science", "ocean", "market", "winter"]


def test_list_mle_matches_a_hand_computed_value():
    # True order (ascending length) is items 0, 1, 2 with scores 2, 1, 0:
    # [log(e^2 + e^1 + e^0) - 2] + [log(e^1 + e^0) - 1] + [log(e^0) - 0], over 3 items.
    expected = ((math.log(math.e**2 + math.e + 1) - 2) + (math.log(math.e + 1) - 1) + 0.0) / 3
    loss = list_mle(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[5, 10, 20]]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.24029, abs=1e-5)


def test_list_mle_ignores_padding_and_item_order():
    scores, lengths = torch.tensor([[0.5, 2.0, -1.0]]), torch.tensor([[10, 3, 50]])
    base = list_mle(scores, lengths).item()
    padded = list_mle(torch.tensor([[0.5, 2.0, -1.0, 9.0]]), torch.tensor([[10, 3, 50, 0]]), torch.tensor([[True, True, True, False]]))
    shuffled = list_mle(scores[:, [2, 0, 1]], lengths[:, [2, 0, 1]])
    assert padded.item() == pytest.approx(base, abs=1e-6)
    assert shuffled.item() == pytest.approx(base, abs=1e-6)
    # Scoring the shortest highest is the better order: lower loss.
    assert list_mle(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]])) < list_mle(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1, 2, 3]]))


def test_pairwise_loss_counts_only_untied_real_pairs():
    # One untied pair at equal scores: log 2.  The tie and the padded item add nothing.
    loss = pairwise_logistic(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([[1, 2, 2, 0]]), torch.tensor([[True, True, False, False]]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_bad_trace_rows_are_reported_by_line_and_skipped(tmp_path: Path):
    path = tmp_path / "traces.jsonl"
    path.write_bytes(
        b'{"prompt": "hi", "generated": "hello there"}\n'
        b"not json\n"
        b'{"prompt": "", "output_tokens": 3}\n'
        b"\n"
        b'{"prompt": "x", "output_tokens": "3"}\n'
        b'{"generated": "no prompt"}\n'
        b'{"prompt": "ok", "output_tokens": 7}\n'
        b'["a", "list"]\n'
        b'{"prompt": "y"}\n'
        b'{"prompt": "z", "output_tokens": true}\n'
        b'{"prompt": "\xff\xfe"}\n'
    )
    examples, report = read_traces(path)
    assert [(e.prompt, e.output_tokens) for e in examples] == [("hi", None), ("ok", 7)]
    assert report.rows == 10 and report.kept == 2 and report.bad_rows == 8
    assert dict(report.bad_lines) == {
        2: "not JSON (Expecting value)",
        3: "field 'prompt' is empty",
        5: "field 'output_tokens' must be an integer, not str",
        6: "missing field 'prompt'",
        8: "not a JSON object (list)",
        9: "needs field 'generated' or 'output_tokens'",
        10: "field 'output_tokens' must be an integer, not bool",
        11: "not valid UTF-8",
    }
    assert "line 5: field 'output_tokens' must be an integer" in report.summary()


def synthetic_traces(path: Path, rows: int = 240) -> None:
    """Rows whose output length is set by one word of the prompt, with noise; some give text, some counts."""
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        kind = rng.choice(list(KINDS))
        words = rng.sample(FILLER, rng.randint(3, 5))  # prompt length says nothing about output length
        words.insert(rng.randrange(len(words) + 1), kind)
        tokens = max(1, int(KINDS[kind] * rng.uniform(0.6, 1.4)))
        row = {"id": f"row{i}", "prompt": " ".join(words)}
        if i % 4 == 0:
            row["generated"] = " ".join(rng.choices(FILLER, k=tokens))  # counted by the base tokenizer
        else:
            row["output_tokens"] = tokens
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer BERT and a word-level tokenizer trained on the synthetic vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    base = tmp_path_factory.mktemp("tiny-base")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(FILLER + list(KINDS))], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(base / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test encoder\n")
    return base


def test_train_export_evaluate_serve_learns_a_learnable_length_signal(tiny_base: Path, tmp_path: Path, start_sidecar):
    from ltr_client import RankerClient, ScoreItem
    from ltr_sidecar.bundle import load_bundle
    from ltr_sidecar.cli import main

    data = tmp_path / "traces.jsonl"
    synthetic_traces(data)
    bundle = tmp_path / "bundle"
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    # Trained on 16 tokens, shipped to read 14 (6 from a long prompt's start, the rest from its end):
    # the bundle is evaluated as it will be served.
    argv = ["train", "--data", str(data), "--base", str(tiny_base), "--out", str(bundle), "--max-length", "16", "--export-max-length", "14",
            "--head-tokens", "6",
            "--list-size", "32", "--epochs", "8", "--lr", "1e-3", "--head-lr", "1e-2", "--word-lr", "1e-2",
            "--eval-every", "10", "--patience", "0", "--freeze-layers", "1", "--no-progress", "--name", "tiny-ltr",
            "--signing-key", str(tmp_path / "keys" / "ltr-sidecar.key")]
    assert main(argv) == 0

    meta = load_bundle(bundle, trusted_key=tmp_path / "keys" / "ltr-sidecar.pub").metadata  # hashes and signature verified
    assert not (tmp_path / "bundle.work" / "bundle").exists()  # the staged bundle was moved into place
    assert meta["max_length"] == 14 and meta["training"]["config"]["max_length"] == 16
    assert meta["truncation"] == {"head_tokens": 6}
    assert meta["parity"]["max_abs_diff"] <= 1e-3 and meta["parity"]["kendall_tau_b"] >= 0.999
    assert meta["base_model"]["license"] == "apache-2.0"
    split = meta["split"]
    assert split["seed"] == 0 and split["test"] > 20 and split["train"] + split["val"] + split["test"] == 240
    history = meta["training"]["history"]
    assert history and meta["training"]["val_kendall_tau_b"] == pytest.approx(max(h["val_kendall_tau_b"] for h in history), abs=1e-5)
    # Held-out tau well above 0: the word that sets the length was learnt.
    assert meta["evaluation"]["kendall_tau_b"] > 0.4, meta["evaluation"]

    out = tmp_path / "eval.json"
    assert main(["evaluate", str(bundle), "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == split["test"]
    assert result["ranker"]["kendall_tau_b"] == pytest.approx(meta["evaluation"]["kendall_tau_b"], abs=1e-6)
    assert set(result["baselines"]) == {"prompt_length", "tfidf_ridge", "bucket_classifier"}
    assert result["ranker"]["kendall_tau_b"] > result["baselines"]["prompt_length"]["kendall_tau_b"]

    sidecar = start_sidecar(model=bundle)
    with RankerClient(sidecar.target, timeout_s=10) as client:
        assert client.model_info().max_input_tokens == 14
        result = client.score([ScoreItem("b", "please write a brief note about the river"), ScoreItem("e", "please write a essay note about the river")])
    assert not result.fallback and result.model_version == "tiny-ltr@0.1.0"
    assert result.scores["b"] > result.scores["e"]


def test_train_refuses_a_base_folder_without_a_tokenizer(tmp_path: Path, capsys):
    from ltr_sidecar.cli import main

    data = tmp_path / "traces.jsonl"
    synthetic_traces(data, rows=80)
    assert main(["train", "--data", str(data), "--base", str(tmp_path), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_train_refuses_an_export_length_beyond_the_training_length_and_a_head_with_no_tail_left(tiny_base: Path, tmp_path: Path, capsys):
    from ltr_sidecar.cli import main

    data = tmp_path / "traces.jsonl"
    synthetic_traces(data, rows=80)
    argv = ["train", "--data", str(data), "--base", str(tiny_base), "--out", str(tmp_path / "b"), "--max-length", "16",
            "--export-max-length", "17", "--no-progress"]
    assert main(argv) == 2
    assert "--export-max-length 17" in capsys.readouterr().err
    # A head as long as the bundle's length would leave no tail.
    assert main([*argv[:-3], "--export-max-length", "12", "--head-tokens", "12", "--no-progress"]) == 2
    assert "--head-tokens 12" in capsys.readouterr().err


class TrainProcess:
    """`ltr-sidecar train` as a child process; stderr (logs and progress bars) collected as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ltr_sidecar", *argv], stderr=subprocess.PIPE, text=True)
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read(1), ""):  # type: ignore[union-attr]
            self.err += chunk

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.err:
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{self.err}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.err}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


def test_sigterm_during_training_saves_a_checkpoint_and_prints_the_command_that_resumes_it(tiny_base: Path, tmp_path: Path):
    data = tmp_path / "traces.jsonl"
    synthetic_traces(data)
    # Far more steps than the test will run, and no evaluation before the signal.
    argv = ["train", "--data", str(data), "--base", str(tiny_base), "--out", str(tmp_path / "bundle"), "--max-length", "16",
            "--list-size", "32", "--epochs", "1000", "--eval-every", "100000", "--freeze-layers", "1"]
    run = TrainProcess(argv)
    run.wait_for("training: step 0 of 5000")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.err
    checkpoint = tmp_path / "bundle.work" / "checkpoint.pt"
    message = next(line for line in run.err.splitlines() if "interrupted by SIGTERM" in line)
    assert f"checkpoint saved to {checkpoint}; resume with: ltr-sidecar train " in message
    assert checkpoint.is_file() and not (tmp_path / "bundle").exists()
    # The progress bar had no evaluation to show yet, and said so.
    assert "best_val_tau=none yet" in run.err and "-2.0000" not in run.err
    stopped_at = int(message.split(" at step ")[1].split()[0])
    assert stopped_at >= 1  # the step under way when the signal came was finished and saved

    # The printed command, run as printed, continues from that step (and can be interrupted again).
    resume = shlex.split(message.split("resume with: ")[1])
    assert resume[:2] == ["ltr-sidecar", "train"] and resume[-1] == "--resume"
    run = TrainProcess(resume[1:])
    run.wait_for(f"training: step {stopped_at} of 5000")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 128 + signal.SIGINT, run.err
    assert f"resumed from {checkpoint} at step {stopped_at}" in run.err
    again = next(line for line in run.err.splitlines() if "interrupted by SIGINT" in line)
    assert int(again.split(" at step ")[1].split()[0]) > stopped_at


def test_a_bundle_worse_than_every_baseline_is_refused_unless_allowed(tiny_base: Path, tmp_path: Path, capsys):
    from ltr_sidecar.bundle import load_bundle
    from ltr_sidecar.cli import main

    # Output length is the prompt's length: the prompt-length baseline is nearly perfect, and an untrained
    # model (every learning rate 0) cannot keep up with any baseline.
    rng = random.Random(1)
    rows = []
    for i in range(160):
        words = rng.choices(FILLER, k=rng.randint(1, 10))
        rows.append(json.dumps({"id": f"r{i}", "prompt": " ".join(words), "output_tokens": 20 * len(words)}))
    data = tmp_path / "traces.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "bundle"
    argv = ["train", "--data", str(data), "--base", str(tiny_base), "--out", str(out), "--max-length", "16", "--list-size", "32",
            "--epochs", "0.2", "--lr", "0", "--head-lr", "0", "--word-lr", "0", "--freeze-layers", "2", "--quantize", "fp32",
            "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"not writing {out}: its test tau-b" in err and "is below every baseline's (prompt_length 1.0000, tfidf_ridge" in err
    assert "--allow-worse-than-baselines" in err
    assert not out.exists()
    load_bundle(tmp_path / "bundle.work" / "bundle")  # kept, whole, for inspection

    assert main([*argv, "--allow-worse-than-baselines"]) == 0
    assert "WRITING A BUNDLE WORSE THAN EVERY BASELINE" in capsys.readouterr().err
    assert load_bundle(out).metadata["evaluation"]["worse_than_every_baseline"] is True
