"""The simulator's requests: the serving benchmark's ShareGPT trace with the default ranker's scores, or synthetic ones.

The real trace is built by `benchmarks.serving`'s own functions (`load_split`,
`load_trace`, `take`, `decode_prompts`), so the simulated requests are the
ones the real-vLLM harness replays for the same flags and seed. The ranker
scores the prompts as the hook sends them (the engine's cut token ids decoded
back to text) with `ltr_sidecar.ranker.OnnxRanker`. Scoring takes a while on a
CPU, so scores are cached in a file outside the repository (prompts are user
data: the cache holds ShareGPT ids and numbers only).
"""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANKER_CUT, RANKER_TAIL = 128, 32
DEFAULT_CACHE = Path(os.environ.get("LTR_SIM_CACHE", "/work/runs/sim/scores.json"))


@dataclass(frozen=True)
class Requests:
    """Columns of one workload's requests, in submission order."""

    prompt_tokens: np.ndarray  # int: the prompt as the engine gets it (after the cut)
    output_tokens: np.ndarray  # int: what the engine generates (max_tokens with ignore_eos)
    scores: np.ndarray  # float: the ranker's, higher = shorter predicted output

    def __len__(self) -> int:
        return len(self.output_tokens)

    def take(self, start: int, n: int) -> Requests:
        """n requests from `start` on, wrapping around (as `benchmarks.serving.take`)."""
        idx = (start + np.arange(n)) % len(self)
        return Requests(self.prompt_tokens[idx], self.output_tokens[idx], self.scores[idx])


@dataclass(frozen=True)
class TraceConfig:
    """The serving benchmark's trace flags (same names and defaults as `python -m benchmarks.serving`)."""

    seed: int = 0
    length_scale: float = 4.0
    max_output_tokens: int = 256
    max_prompt_tokens: int = 128
    prompt_tail_tokens: int = 32

    def namespace(self) -> Namespace:
        return Namespace(**self.__dict__)


def real_trace(cfg: TraceConfig, cache: Path = DEFAULT_CACHE, progress: bool = True, score: bool = True) -> Requests:
    """Every test-split example in the harness's order, with the default ranker's scores of its cut prompt.

    Scores are cached per (bundle model, prompt cut) in `cache`; only prompts
    missing from it are scored. `score` False: lengths only, scores NaN.
    """
    from ltr_sidecar.bundle import DEFAULT_BUNDLE, load_bundle

    from benchmarks.serving import load_split, load_trace

    bundle = load_bundle(DEFAULT_BUNDLE)
    args = cfg.namespace()
    trace = load_trace(load_split(), DEFAULT_BUNDLE / "tokenizer.json", args)
    if not score:
        nan = np.full(len(trace), math.nan)
        return Requests(np.array([len(r.prompt_ids) for r in trace], dtype=np.int64), np.array([r.max_tokens for r in trace], dtype=np.int64), nan)
    prompts = [r.prompt_ids for r in trace]
    cut_tokens, tail = cfg.max_prompt_tokens, cfg.prompt_tail_tokens
    if cut_tokens > RANKER_CUT:
        # The default ranker reads a long prompt's first 80 and last 32 tokens: the 128-token cut keeping the last 32
        # holds all it reads of a longer (or uncut) prompt, so one score cache serves every longer cut.
        from ltr_sidecar.ranker import cut

        cut_tokens, tail = RANKER_CUT, RANKER_TAIL
        prompts = [tuple(cut(p, RANKER_CUT, RANKER_CUT - RANKER_TAIL)) for p in prompts]
    key = f"{bundle.model_sha256[:16]}/prompt{cut_tokens}-tail{tail}"
    stored: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.exists() else {}
    known = stored.setdefault(key, {})
    missing = [i for i, r in enumerate(trace) if r.sharegpt_id not in known]
    if missing:
        known.update(_score(bundle, [prompts[i] for i in missing], [trace[i].sharegpt_id for i in missing], progress))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(cache)
    return Requests(
        prompt_tokens=np.array([len(r.prompt_ids) for r in trace], dtype=np.int64),
        output_tokens=np.array([r.max_tokens for r in trace], dtype=np.int64),
        scores=np.array([known[r.sharegpt_id] for r in trace], dtype=np.float64),
    )


def _score(bundle: object, prompt_ids: list[tuple[int, ...]], ids: list[str], progress: bool) -> dict[str, float]:
    """The default ranker's scores of the prompts as the hook sends them: engine ids decoded to text."""
    from ltr_sidecar.bundle import DEFAULT_BUNDLE
    from ltr_sidecar.ranker import OnnxRanker
    from tqdm import tqdm

    from benchmarks.serving import decode_prompts

    ranker = OnnxRanker(bundle, intra_op_threads=1)  # type: ignore[arg-type]
    texts = decode_prompts(DEFAULT_BUNDLE / "tokenizer.json", prompt_ids)
    out: dict[str, float] = {}
    batch = 64
    for start in tqdm(range(0, len(texts), batch), desc="scoring prompts", unit="batch", disable=not progress):
        chunk = texts[start : start + batch]
        # An empty decoded prompt is not scored by the sidecar either (the harness skips it): it stays unscored.
        scores = ranker.score_texts([t or " " for t in chunk])
        for j, (t, s) in enumerate(zip(chunk, scores, strict=True)):
            out[ids[start + j]] = float(s) if t else math.nan
    return out


def synthetic_scores(output_tokens: np.ndarray, tau: float, seed: int) -> np.ndarray:
    """Scores whose Kendall tau-b against -output_tokens is about `tau`: -log(length) plus Gaussian noise.

    For a bivariate normal, tau = (2/pi) asin(rho); the noise's scale gives
    that rho against the log lengths. Ties in the lengths pull tau-b a little
    below the target; `kendall_tau` measures what came out.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"--tau: {tau} is outside (0, 1]")
    x = -np.log(output_tokens.astype(np.float64))
    rho = math.sin(math.pi * tau / 2)
    sd = x.std() or 1.0
    noise_sd = 0.0 if rho >= 1 else sd * math.sqrt(1 / rho**2 - 1)
    return x + np.random.default_rng(seed).normal(0.0, noise_sd, len(x))


def kendall_tau(scores: np.ndarray, output_tokens: np.ndarray) -> float:
    """Kendall tau-b of scores (higher = shorter) against the output lengths, as the harness's ranker check."""
    from scipy.stats import kendalltau

    ok = ~np.isnan(scores)
    return float(kendalltau(scores[ok], -output_tokens[ok], variant="b").statistic)
