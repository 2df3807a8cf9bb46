"""Rank agreement between scores (higher = shorter predicted) and true output lengths."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def kendall_tau_b(scores: Sequence[float] | np.ndarray, output_tokens: Sequence[int] | np.ndarray) -> float:
    """Kendall tau-b (scipy) of scores against -output_tokens; tau-b because lengths tie often."""
    from scipy.stats import kendalltau

    return float(kendalltau(np.asarray(scores), -np.asarray(output_tokens, dtype=np.float64), variant="b").statistic)


def spearman(scores: Sequence[float] | np.ndarray, output_tokens: Sequence[int] | np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(scores), -np.asarray(output_tokens, dtype=np.float64)).statistic)


def rank_metrics(scores: Sequence[float] | np.ndarray, output_tokens: Sequence[int] | np.ndarray) -> dict[str, float]:
    return {"kendall_tau_b": kendall_tau_b(scores, output_tokens), "spearman": spearman(scores, output_tokens)}


# Below this many prompts a tau-b is too noisy to tell bundles apart (its 95% interval is wider than +-0.13).
SMALL_SAMPLE = 100


def kendall_tau_ci95(tau: float, n: int) -> tuple[float, float] | None:
    """An approximate 95% interval for Kendall's tau over n prompts; None below 10, where none means anything.

    Fieller, Hartley and Pearson (1957): atanh(tau) is close to normal with variance 0.437 / (n - 4).
    """
    if n < 10 or not math.isfinite(tau):
        return None
    z = math.atanh(max(-0.999999, min(0.999999, tau)))
    half = 1.96 * math.sqrt(0.437 / (n - 4))
    return min(tau, math.tanh(z - half)), max(tau, math.tanh(z + half))  # the clipping must not exclude tau = +-1
