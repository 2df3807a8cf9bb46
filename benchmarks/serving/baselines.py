"""The bucket classifier of prior work as a baseline policy, and the ranker check (Kendall tau-b on the burst prompts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .trace import TraceRequest, cut_prompt, decode_prompts, engine_tokenizer, generated_length


def fit_bucket(split: Any, tokenizer_json: Path, args: argparse.Namespace) -> tuple[Callable[[Sequence[str]], Any] | None, str]:
    """The bucket classifier fitted on the train split, as prompts -> expected generated length; or None and why not."""
    try:
        from ltr_sidecar.training.baselines import BucketClassifier
    except ImportError as e:
        return None, f"ltr_sidecar.training.baselines.BucketClassifier is not importable ({e})"
    tok = engine_tokenizer(tokenizer_json)
    train = list(split.train)[: args.bucket_train_examples or None]
    # Fitted on the lengths this benchmark generates (scaled and capped), the
    # quantity it has to rank here, so that its buckets split that range.
    lengths = [generated_length(len(e.ids), args) for e in tok.encode_batch([x.response for x in train], add_special_tokens=False)]
    # And on the prompts as the engine holds them (cut, decoded), which is what it is asked to rank.
    prompt_ids = [cut_prompt(e.ids, args) for e in tok.encode_batch([x.prompt for x in train], add_special_tokens=False)]
    prompts = decode_prompts(tokenizer_json, prompt_ids)
    try:
        model = BucketClassifier().fit(prompts, lengths)
    except ImportError as e:
        return None, f"the bucket classifier needs the train extra ({e})"
    return (lambda texts: -model.scores(list(texts))), f"fitted on {len(train)} train examples"


def ranker_check(target: str, texts: list[str], requests: Sequence[TraceRequest], bucket_expected: Sequence[float] | None) -> dict[str, Any]:
    """Kendall tau-b of the ranker's scores (and the bucket baseline's) against the generated lengths of `requests`."""
    from scipy.stats import kendalltau

    from ltr_client import RankerClient, ScoreItem

    with RankerClient(target, timeout_s=600.0) as client:
        scores: dict[str, float] = {}
        for start in range(0, len(texts), 32):
            items = [ScoreItem(f"c{i}", prompt=texts[i]) for i in range(start, min(start + 32, len(texts))) if texts[i]]
            scores.update(client.score(items).scores)
    lengths = [r.max_tokens for r in requests]
    scored = [i for i in range(len(requests)) if f"c{i}" in scores]
    taus = {"ltr": float(kendalltau([scores[f"c{i}"] for i in scored], [-lengths[i] for i in scored], variant="b").statistic)}
    if bucket_expected is not None:
        taus["bucket"] = float(kendalltau([-x for x in bucket_expected], [-x for x in lengths], variant="b").statistic)
    return {"requests": len(requests), "scored": len(scored), "kendall_tau_b": taus}
