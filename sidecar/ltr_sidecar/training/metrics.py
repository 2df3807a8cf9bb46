"""Rank agreement between scores (higher = shorter predicted) and true output lengths."""

from __future__ import annotations

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
