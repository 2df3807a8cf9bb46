"""Calibration: learn the served model's answer lengths on top of the base ranker.

The default ranker learned ChatGPT's lengths; a served model (Llama, Qwen,
SmolLM2, a fine-tune) answers the same prompts at other lengths. From that
model's finished requests (the prompt's features and how many tokens it
answered with) this module fits a light *adapter*:

    score = base_score + x . w + b,    x = [pooled embedding, base_score, log(prompt tokens)]

- Ranking-aware: a pairwise logistic loss over the pairs whose order is known.
- Censoring: a length cut by ``max_tokens`` or an abort is only a lower bound,
  so a pair is used only when its order is certain (:func:`known_order`).
- Shrunk toward the base ranker: ``w`` is an L2-penalised *delta*, so with few
  observations it stays near zero, i.e. near the base ranking. The penalty is
  chosen by cross-validation inside the training part.
- Promoted only if it ranks held-out observations better than the base, with
  a paired bootstrap on the held-out part (:data:`PROMOTE_CONFIDENCE`); else
  the base serves unchanged. That is what keeps it from falling below the
  zero-shot ranking on a small or noisy sample.

Plain numpy and no I/O beyond (de)serialising an adapter as JSON: the offline
``ltr-sidecar adapt`` and an online refit call the same :func:`fit_calibration`
with arrays of features, lengths and censoring flags. Nothing here sees a
prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ADAPTER_FORMAT = "ltr-adapter/1"
ADAPTER_FILE = "adapter.json"
# The name adapt gives the pooled-embedding output it adds to model.onnx.
EMBEDDING_OUTPUT = "pooled_embedding"

# Share of the observations held out to judge a candidate (never used to fit it).
HOLDOUT_FRACTION = 0.3
# A candidate is promoted only if it beats the base on at least this share of
# paired bootstrap resamples of the held-out part: a one-sided test at 1 %.
# With noise labels a candidate wins about half of them, so it is not promoted.
PROMOTE_CONFIDENCE = 0.99
BOOTSTRAP_RESAMPLES = 1000
# Fewer observations than this (or fewer held out) and no candidate is fitted.
MIN_OBSERVATIONS = 20
MIN_HOLDOUT = 10
# L2 penalties tried by the inner cross-validation (on standardised features,
# per mean pair loss). The largest keeps the adapter all but zero.
PENALTIES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
CV_FOLDS = 3
# Above this many known-order pairs, a uniform sample of them is used.
MAX_PAIRS = 200_000


class AdapterError(ValueError):
    """An adapter file is malformed or does not fit the model it is applied to."""


def features(embeddings: np.ndarray, base_scores: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
    """The adapter's inputs, float64 [n, dim + 2]: the pooled embedding, the base score, log(prompt tokens)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    base = np.asarray(base_scores, dtype=np.float64).reshape(-1, 1)
    tokens = np.log(np.maximum(np.asarray(prompt_tokens, dtype=np.float64), 1.0)).reshape(-1, 1)
    if emb.ndim != 2 or len(emb) != len(base) or len(emb) != len(tokens):
        raise ValueError(f"features: embeddings {emb.shape}, base_scores {base.shape[0]} and prompt_tokens {tokens.shape[0]} disagree")
    return np.hstack([emb, base, tokens])


@dataclass(frozen=True)
class Adapter:
    """A fitted delta over the base score; `apply` is all the runtime needs."""

    embedding_weights: np.ndarray  # float64 [dim]
    base_score_weight: float
    log_prompt_tokens_weight: float
    bias: float
    fit: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def dim(self) -> int:
        return int(self.embedding_weights.shape[0])

    def delta(self, embeddings: np.ndarray, base_scores: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
        weights = np.concatenate([self.embedding_weights, [self.base_score_weight, self.log_prompt_tokens_weight]])
        return features(embeddings, base_scores, prompt_tokens) @ weights + self.bias

    def apply(self, embeddings: np.ndarray, base_scores: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
        """Calibrated float32 scores: base + delta (higher = shorter, like the base)."""
        base = np.asarray(base_scores, dtype=np.float64)
        return (base + self.delta(embeddings, base, prompt_tokens)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ADAPTER_FORMAT,
            "score": "base_score + embedding . embedding_weights + base_score * base_score_weight "
            "+ log(max(prompt_tokens, 1)) * log_prompt_tokens_weight + bias",
            "dim": self.dim,
            "embedding_weights": [float(v) for v in self.embedding_weights],
            "base_score_weight": float(self.base_score_weight),
            "log_prompt_tokens_weight": float(self.log_prompt_tokens_weight),
            "bias": float(self.bias),
            "fit": self.fit,
        }

    def digest(self) -> str:
        """A short hash of the weights: names the calibration version."""
        weights = {k: v for k, v in self.to_json().items() if k != "fit"}
        return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_json(cls, data: Any, where: str = ADAPTER_FILE) -> Adapter:
        """Parse and check an adapter; raise AdapterError naming `where` and the field."""
        if not isinstance(data, dict) or data.get("format") != ADAPTER_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise AdapterError(f"{where}: format is {got!r}, expected {ADAPTER_FORMAT!r}")
        try:
            weights = np.asarray(data["embedding_weights"], dtype=np.float64)
            numbers = [float(data[k]) for k in ("base_score_weight", "log_prompt_tokens_weight", "bias")]
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(f"{where}: needs numeric embedding_weights, base_score_weight, log_prompt_tokens_weight, bias ({e})") from e
        if weights.ndim != 1 or weights.size != data.get("dim") or not np.all(np.isfinite(weights)) or not all(map(math.isfinite, numbers)):
            raise AdapterError(f"{where}: embedding_weights must be {data.get('dim')!r} finite numbers, and the other weights finite")
        fit = data.get("fit", {})
        return cls(weights, *numbers, fit=fit if isinstance(fit, dict) else {})


# -- which pairs have a known order --------------------------------------------


def known_order(lengths: np.ndarray, censored: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For each pair (i, j): +1 if i's answer is surely shorter than j's, -1 if surely longer, 0 if unknown.

    An exact length is known; a censored one (cut by max_tokens, aborted) is
    only a lower bound: the answer would have run at least that long, perhaps
    far longer. So an exact i is surely shorter than a censored j only when
    i's length is below j's bound, and two censored lengths never have a known
    order. Equal exact lengths are a tie (0).
    """
    li, lj = lengths[i], lengths[j]
    ci, cj = censored[i], censored[j]
    out = np.zeros(len(i), dtype=np.int8)
    both = ~ci & ~cj
    out[both] = np.sign(lj[both] - li[both]).astype(np.int8)
    i_exact = ~ci & cj
    out[i_exact & (li < lj)] = 1
    j_exact = ci & ~cj
    out[j_exact & (lj < li)] = -1
    return out


def known_pairs(lengths: np.ndarray, censored: np.ndarray, rng: np.random.Generator, max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """(shorter, longer) index arrays over the pairs whose order is known; a uniform sample past max_pairs."""
    n = len(lengths)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        i, j = rng.integers(0, n, size=(2, max_pairs))
        keep = i != j
        i, j = i[keep], j[keep]
    order = known_order(lengths, censored, i, j)
    return np.where(order > 0, i, j)[order != 0], np.where(order > 0, j, i)[order != 0]


# -- the held-out measure -------------------------------------------------------


def _pair_matrices(scores: np.ndarray, lengths: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K[i, j] (known order, +1: i shorter) and S[i, j] = sign(s_i - s_j), both [n, n]."""
    n = len(scores)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    known = known_order(lengths, censored, i.ravel(), j.ravel()).reshape(n, n).astype(np.float64)
    return known, np.sign(scores[:, None] - scores[None, :]).astype(np.float64)


def censored_tau_b(scores: np.ndarray, lengths: np.ndarray, censored: np.ndarray) -> float:
    """Kendall tau-b of scores (higher = shorter) against lengths, counting only pairs of known order.

    (concordant - discordant over the known pairs) / sqrt(known pairs * pairs
    with distinct scores). With nothing censored this is exactly tau-b; when
    every censored length is one cap above all exact ones (max_tokens), it is
    tau-b with the capped answers tied at the cap.
    """
    known, sign = _pair_matrices(np.asarray(scores, dtype=np.float64), np.asarray(lengths), np.asarray(censored, dtype=bool))
    denom = math.sqrt(np.abs(known).sum() * np.abs(sign).sum())
    return float((known * sign).sum() / denom) if denom else 0.0


def paired_bootstrap(
    candidate: np.ndarray, base: np.ndarray, lengths: np.ndarray, censored: np.ndarray, rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> np.ndarray:
    """censored_tau_b(candidate) - censored_tau_b(base) on `resamples` bootstrap resamples of the same items.

    A resample's counts c weigh each pair by c_i c_j, so every tau is a few
    quadratic forms over the pair matrices, computed once.
    """
    lengths, censored = np.asarray(lengths), np.asarray(censored, dtype=bool)
    known, sign_c = _pair_matrices(np.asarray(candidate, dtype=np.float64), lengths, censored)
    _, sign_b = _pair_matrices(np.asarray(base, dtype=np.float64), lengths, censored)
    n = len(lengths)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)

    def form(matrix: np.ndarray) -> np.ndarray:
        return np.einsum("bi,ij,bj->b", counts, matrix, counts)

    n_known = form(np.abs(known))

    def tau(sign: np.ndarray) -> np.ndarray:
        denom = np.sqrt(n_known * form(np.abs(sign)))
        return np.divide(form(known * sign), denom, out=np.zeros(resamples), where=denom > 0)

    return tau(sign_c) - tau(sign_b)


# -- the fit ---------------------------------------------------------------------


def _lbfgs(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, max_iter: int = 300,
           memory: int = 10, tol: float = 1e-7) -> np.ndarray:
    """Minimise a smooth convex function by L-BFGS with a backtracking line search (numpy only: no scipy at serve time)."""
    x = x0.copy()
    f, g = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(steps):
            a = rho * (s @ q)
            q -= a * y
            alphas.append(a)
        if steps:
            s, y, _ = steps[-1]
            q *= (s @ y) / (y @ y)
        else:
            q /= max(1.0, float(np.linalg.norm(g)))
        for (s, y, rho), a in zip(steps, reversed(alphas)):
            q += s * (a - rho * (y @ q))
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            steps.clear()
            direction, slope = -g, -float(g @ g)
        t = 1.0
        while True:
            x_new = x + t * direction
            f_new, g_new = objective(x_new)
            if f_new <= f + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12:
            steps.append((s, y, 1.0 / float(s @ y)))
            del steps[:-memory]
        converged = f - f_new <= tol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return x


def _fit_standardized(z: np.ndarray, base: np.ndarray, short: np.ndarray, long: np.ndarray, penalty: float) -> np.ndarray:
    """w minimising mean softplus(-(s_short - s_long)) + penalty/2 |w|^2, with s = base + z w."""
    n = len(z)
    base_gap = base[short] - base[long]

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        margin = base_gap + s[short] - s[long]
        loss = float(np.mean(np.logaddexp(0.0, -margin))) + 0.5 * penalty * float(w @ w)
        d = -0.5 * (1.0 - np.tanh(margin / 2.0)) / len(margin)  # d loss / d margin = -sigmoid(-margin) / P
        per_item = np.bincount(short, d, minlength=n) - np.bincount(long, d, minlength=n)
        return loss, z.T @ per_item + penalty * w

    return _lbfgs(objective, np.zeros(z.shape[1]))


def fit_adapter(x: np.ndarray, base: np.ndarray, lengths: np.ndarray, censored: np.ndarray, penalty: float,
                rng: np.random.Generator) -> Adapter:
    """The adapter at one penalty, fitted on these observations (no verdict)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature gets no weight (its z is 0)
    z = (x - mean) / scale
    short, long = known_pairs(lengths, censored, rng)
    w = _fit_standardized(z, base, short, long, penalty) if len(short) else np.zeros(x.shape[1])
    raw = w / scale  # z w = x (w / scale) - mean . (w / scale)
    return Adapter(raw[:-2], float(raw[-2]), float(raw[-1]), -float(mean @ raw))


def choose_penalty(x: np.ndarray, base: np.ndarray, lengths: np.ndarray, censored: np.ndarray, rng: np.random.Generator,
                   penalties: tuple[float, ...] = PENALTIES, folds: int = CV_FOLDS) -> tuple[float, dict[str, float]]:
    """The penalty with the best mean held-out censored tau-b over `folds` folds of these observations."""
    fold = rng.permutation(len(x)) % folds
    taus: dict[str, float] = {}
    for penalty in penalties:
        per_fold = []
        for k in range(folds):
            train, test = fold != k, fold == k
            adapter = fit_adapter(x[train], base[train], lengths[train], censored[train], penalty, rng)
            scores = base[test] + x[test] @ _weights(adapter)
            per_fold.append(censored_tau_b(scores, lengths[test], censored[test]))
        taus[str(penalty)] = float(np.mean(per_fold))
    best = max(penalties, key=lambda p: (taus[str(p)], p))  # ties: the larger penalty, nearer the base
    return best, taus


def _weights(adapter: Adapter) -> np.ndarray:
    return np.concatenate([adapter.embedding_weights, [adapter.base_score_weight, adapter.log_prompt_tokens_weight]])


@dataclass(frozen=True)
class Verdict:
    """What a calibration fit found: the adapter to serve (None: serve the base) and why."""

    adapter: Adapter | None
    promoted: bool
    reason: str
    observations: int
    censored: int
    train: int
    held_out: int
    base_tau: float | None = None
    candidate_tau: float | None = None
    confidence: float | None = None
    penalty: float | None = None
    cv_taus: dict[str, float] = field(default_factory=dict)
    # With an incumbent (an online refit): the serving adapter's held-out tau-b, the bar the candidate had to clear.
    incumbent_tau: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "observations": self.observations,
            "censored": self.censored,
            "train": self.train,
            "held_out": self.held_out,
            "held_out_base_tau_b": self.base_tau,
            "held_out_candidate_tau_b": self.candidate_tau,
            "held_out_incumbent_tau_b": self.incumbent_tau,
            "confidence_candidate_better": self.confidence,
            "promote_confidence": PROMOTE_CONFIDENCE,
            "penalty": self.penalty,
            "cv_tau_b_by_penalty": self.cv_taus,
        }


def fit_calibration(
    embeddings: np.ndarray,
    base_scores: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    censored: np.ndarray,
    seed: int = 0,
    holdout_fraction: float = HOLDOUT_FRACTION,
    incumbent: Adapter | None = None,
    max_held_out: int | None = None,
) -> Verdict:
    """Fit an adapter on one part of the observations and judge it against the base on the rest.

    Arrays are per finished request: the pooled embedding [n, dim], the base
    score, the prompt tokens the ranker read, the output tokens, and whether
    that count is censored (a lower bound). The candidate is promoted only if
    its held-out censored tau-b beats the base's on at least
    PROMOTE_CONFIDENCE of paired bootstrap resamples; the verdict says which.

    `incumbent` (an online refit): the adapter serving now. The candidate must
    then beat it, not the base, the same way. `max_held_out` caps the held-out
    part (the bootstrap's cost grows with its square).
    """
    lengths = np.asarray(output_tokens, dtype=np.float64)
    cens = np.asarray(censored, dtype=bool)
    base = np.asarray(base_scores, dtype=np.float64)
    x = features(embeddings, base, prompt_tokens)
    n = len(x)
    if not (len(lengths) == len(cens) == n):
        raise ValueError(f"fit_calibration: {n} feature rows but {len(lengths)} output_tokens and {len(cens)} censored flags")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), not {holdout_fraction}")
    rng = np.random.default_rng(seed)
    held = int(round(n * holdout_fraction))
    if max_held_out is not None:
        held = min(held, max_held_out)
    counts = {"observations": n, "censored": int(cens.sum()), "train": n - held, "held_out": held}
    if n < MIN_OBSERVATIONS or held < MIN_HOLDOUT:
        return Verdict(None, False, f"too few observations ({n}; at least {MIN_OBSERVATIONS}, {MIN_HOLDOUT} of them held out)", **counts)
    order = rng.permutation(n)
    test, train = order[:held], order[held:]
    penalty, cv_taus = choose_penalty(x[train], base[train], lengths[train], cens[train], rng)
    adapter = fit_adapter(x[train], base[train], lengths[train], cens[train], penalty, rng)
    candidate = base[test] + x[test] @ _weights(adapter) + adapter.bias
    base_tau = censored_tau_b(base[test], lengths[test], cens[test])
    candidate_tau = censored_tau_b(candidate, lengths[test], cens[test])
    bar, bar_tau, bar_name = base[test], base_tau, "the base's"
    incumbent_tau = None
    if incumbent is not None:
        bar = incumbent.apply(np.asarray(embeddings)[test], base[test], np.asarray(prompt_tokens)[test]).astype(np.float64)
        bar_tau = incumbent_tau = censored_tau_b(bar, lengths[test], cens[test])
        bar_name = "the serving calibration's"
    confidence = float(np.mean(paired_bootstrap(candidate, bar, lengths[test], cens[test], rng) > 0))
    promoted = candidate_tau > bar_tau and confidence >= PROMOTE_CONFIDENCE
    if promoted:
        reason = f"held-out tau-b {candidate_tau:.3f} beats {bar_name} {bar_tau:.3f} on {confidence:.1%} of bootstrap resamples"
    else:
        reason = (f"not promoted: held-out tau-b {candidate_tau:.3f} vs {bar_name} {bar_tau:.3f}, better on {confidence:.1%} "
                  f"of bootstrap resamples (needs {PROMOTE_CONFIDENCE:.0%}); {'the serving calibration stays' if incumbent else 'the base serves unchanged'}")
    verdict = Verdict(None, promoted, reason, **counts, base_tau=base_tau, candidate_tau=candidate_tau, confidence=confidence,
                      penalty=penalty, cv_taus=cv_taus, incumbent_tau=incumbent_tau)
    if promoted:
        adapter = Adapter(adapter.embedding_weights, adapter.base_score_weight, adapter.log_prompt_tokens_weight, adapter.bias,
                          fit=verdict.as_dict())
        verdict = Verdict(adapter, **{k: v for k, v in verdict.__dict__.items() if k != "adapter"})
    return verdict


# -- the runtime side: a bundle that carries an adapter ----------------------------


@dataclass(frozen=True)
class BundleAdapter:
    """ranker.json "adapter": the adapter file, and the model output that feeds it."""

    adapter: Adapter
    embedding_output: str


def load_adapter(bundle_path: Any, metadata: dict[str, Any]) -> BundleAdapter | None:
    """The adapter a bundle carries (ranker.json "adapter"), or None; raise AdapterError naming the file or field.

    The file must be listed in ranker.json "files", so `load_bundle` has already
    checked its sha256 before this reads it.
    """
    section = metadata.get("adapter")
    if section is None:
        return None
    where = f"{bundle_path}/ranker.json"
    if not isinstance(section, dict) or not isinstance(section.get("file"), str) or not isinstance(section.get("embedding_output"), str):
        raise AdapterError(f"{where}: 'adapter' must name its 'file' and the model's 'embedding_output'")
    name = section["file"]
    if name not in metadata.get("files", {}):
        raise AdapterError(f"{where}: adapter file {name!r} is not listed (with its sha256) in 'files'")
    path = f"{bundle_path}/{name}"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: cannot read the adapter: {e}") from e
    return BundleAdapter(Adapter.from_json(data, path), section["embedding_output"])
