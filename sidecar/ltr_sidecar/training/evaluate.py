"""Evaluate a ranker bundle on held-out rows, beside the baselines, in one run.

The bundle is scored through :class:`ltr_sidecar.ranker.OnnxRanker`, the very
runtime the sidecar serves with (its tokenizer, truncation and batching), so
the figures are those of the served model.  The split defaults to the one
recorded in the bundle's ranker.json, so ``test`` is the bundle's own
held-out test split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..bundle import load_bundle
from ..ranker import OnnxRanker
from .baselines import BucketClassifier, TfidfRidge, prompt_length_scores
from .dataset import SHAREGPT, label_examples, load_source, split_source
from .config import TrainConfig
from .metrics import SMALL_SAMPLE, kendall_tau_ci95, rank_metrics
from .sharegpt import Example, Split

log = logging.getLogger(__name__)


def split_settings(meta: dict[str, Any]) -> tuple[int, float, float]:
    """(seed, val_fraction, test_fraction) recorded in a bundle, else training's defaults."""
    split, default = meta.get("split", {}), TrainConfig()
    return (int(split.get("seed", default.seed)), float(split.get("val_fraction", default.val_fraction)),
            float(split.get("test_fraction", default.test_fraction)))


def small_sample_warning(n: int, tau: float) -> str:
    """'' for n >= SMALL_SAMPLE, else why this tau-b cannot be trusted."""
    if n >= SMALL_SAMPLE:
        return ""
    interval = kendall_tau_ci95(tau, n)
    spread = f"its 95% interval is [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "no interval is meaningful"
    return (f"only {n} prompts: tau-b {tau:.4f} is not a measurement ({spread}); "
            f"evaluate at least {SMALL_SAMPLE} to compare bundles")


def score_bundle(ranker: OnnxRanker, prompts: Sequence[str], batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, float]:
    """Scores for prompts in arrival-order batches, and the prompts/s it ran at (tokenizing included)."""
    from tqdm import tqdm

    scores = np.zeros(len(prompts), dtype=np.float32)
    starts = range(0, len(prompts), batch_size)
    t0 = time.perf_counter()
    for start in tqdm(starts, desc="score", unit=" batch", disable=not progress):
        scores[start : start + batch_size] = ranker.score_texts(prompts[start : start + batch_size])
    return scores, len(prompts) / max(time.perf_counter() - t0, 1e-9)


def fit_baselines(train: Sequence[Example], val: Sequence[Example], rows: Sequence[Example], tokenizer_path: Path) -> dict[str, dict[str, Any]]:
    """Each baseline fitted on train (val picks ridge alpha) and scored on rows."""
    tokens = [e.output_tokens for e in rows]
    counter = Tokenizer.from_file(str(tokenizer_path))
    counter.no_truncation()
    counter.no_padding()
    prompt_tokens = [len(e.ids) for e in counter.encode_batch([e.prompt for e in rows])]
    out: dict[str, dict[str, Any]] = {"prompt_length": rank_metrics(prompt_length_scores(prompt_tokens), tokens)}
    train_prompts, train_tokens = [e.prompt for e in train], [e.output_tokens for e in train]
    ridge = TfidfRidge().fit(train_prompts, train_tokens, [e.prompt for e in val], [e.output_tokens for e in val])
    out["tfidf_ridge"] = {**rank_metrics(ridge.scores([e.prompt for e in rows]), tokens), "alpha": ridge.alpha}
    bucket = BucketClassifier().fit(train_prompts, train_tokens)
    out["bucket_classifier"] = {
        **rank_metrics(bucket.scores([e.prompt for e in rows]), tokens),
        "bucket_width_tokens": round(bucket.width, 1),
        "train_per_bucket": bucket.class_counts,
    }
    return out


def evaluate_bundle(
    bundle_path: str | Path,
    data: str = SHAREGPT,
    split: str = "test",
    baselines: bool = True,
    baseline_data: str | None = None,
    label_tokenizer: str | Path | None = None,
    batch_size: int = 32,
    limit: int = 0,
    progress: bool = True,
    max_length: int = 0,
) -> dict[str, Any]:
    """Kendall tau-b and Spearman of a bundle on `split` of `data` (``test``, ``val`` or ``all``), with baselines.

    Baselines are fitted on the train split of `baseline_data` (default: `data`,
    or ShareGPT when `split` is ``all``, i.e. a foreign evaluation set).
    """
    bundle = load_bundle(bundle_path)
    seed, val_fraction, test_fraction = split_settings(bundle.metadata)
    tokenizer_path = Path(label_tokenizer) if label_tokenizer else bundle.tokenizer_path
    source = load_source(data)
    parts: Split = split_source(source, seed, val_fraction, test_fraction)
    rows = {"test": parts.test, "val": parts.val, "all": tuple(source.examples)}[split]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{data}: the {split} split is empty")
    counted = sum(1 for e in rows if e.output_tokens is not None)  # traces that carry their own counts
    rows = label_examples(rows, tokenizer_path)
    tokens = [e.output_tokens for e in rows]
    ranker = OnnxRanker(bundle, max_length=max_length)
    prompts = [e.prompt for e in rows]
    scores, first = score_bundle(ranker, prompts, batch_size, progress)
    # Best of two passes: the one least disturbed by other work on the machine.
    throughput = max(first, score_bundle(ranker, prompts, batch_size)[1])
    result: dict[str, Any] = {
        "bundle": bundle.model_version,
        "data": source.info.get("name", data),
        "split": split,
        "split_settings": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction},
        "prompts": len(rows),
        "label": (
            "output_tokens recorded in the trace (the serving model's own tokenizer)"
            if counted == len(rows)
            else f"output tokens of {tokenizer_path.name} ({'bundle tokenizer' if not label_tokenizer else label_tokenizer})"
            + (f"; {counted} rows carried their own output_tokens" if counted else "")
        ),
        "median_output_tokens": float(np.median(tokens)),
        "ranker": _with_interval(rank_metrics(scores, tokens), len(rows)),
        "throughput_prompts_per_s": round(throughput, 1),
        "throughput_setup": f"OnnxRanker.score_texts, batches of {batch_size} in split order, tokenizing included, best of 2 passes, "
        f"{ranker.provider}, max_length {ranker.max_length}",
    }
    if baselines:
        base_source = source if baseline_data is None and split != "all" else load_source(baseline_data or SHAREGPT)
        base_split = parts if base_source is source else split_source(base_source, seed, val_fraction, test_fraction)
        train = label_examples(base_split.train, tokenizer_path)
        val = label_examples(base_split.val, tokenizer_path)
        log.info("fitting baselines on %d train rows", len(train))
        result["baselines"] = fit_baselines(train, val, rows, tokenizer_path)
        result["baselines_fitted_on"] = f"{base_source.info.get('name', base_source.name)} train split ({len(train)} rows)"
        result["margin_over_bucket_classifier"] = (
            result["ranker"]["kendall_tau_b"] - result["baselines"]["bucket_classifier"]["kendall_tau_b"]
        )
    warning = small_sample_warning(len(rows), result["ranker"]["kendall_tau_b"])
    if warning:
        log.warning("%s", warning)
        result["warning"] = warning
    return result


def _with_interval(metrics: dict[str, Any], n: int) -> dict[str, Any]:
    interval = kendall_tau_ci95(metrics["kendall_tau_b"], n)
    return {**metrics, "kendall_tau_b_ci95": [round(v, 4) for v in interval] if interval else None}


def format_report(result: dict[str, Any]) -> str:
    """A small table of the ranker and its baselines."""
    lines = [
        f"{result['bundle']} on {result['data']} ({result['split']}, {result['prompts']} prompts; label: {result['label']})",
        f"{'ranker':<22} {'kendall tau-b':>14} {'95% interval':>16} {'spearman':>9}",
        f"{'this bundle':<22} {result['ranker']['kendall_tau_b']:>14.4f} {_interval_text(result['ranker']):>16} "
        f"{result['ranker']['spearman']:>9.4f}",
    ]
    for name, figures in result.get("baselines", {}).items():
        lines.append(f"{name:<22} {figures['kendall_tau_b']:>14.4f} {'':>16} {figures['spearman']:>9.4f}")
    if "margin_over_bucket_classifier" in result:
        lines.append(f"margin over the bucket classifier: {result['margin_over_bucket_classifier']:+.4f} tau-b")
    lines.append(f"throughput: {result['throughput_prompts_per_s']} prompts/s ({result['throughput_setup']})")
    if result.get("warning"):
        lines.append(f"WARNING: {result['warning']}")
    return "\n".join(lines)


def _interval_text(figures: dict[str, Any]) -> str:
    interval = figures.get("kendall_tau_b_ci95")
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "n/a"
