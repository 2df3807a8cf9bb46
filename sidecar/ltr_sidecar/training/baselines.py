"""Baseline rankers that a learned ranker must beat, fitted on the same train split.

- prompt length: longer prompt -> longer answer (no fitting);
- TF-IDF + ridge: regression of log output length on word 1-2-gram TF-IDF;
- the bucket classifier of prior work (Zheng et al., NeurIPS 2023, "Response
  Length Perception and Sequence Scheduling"): output lengths cut into 10
  equal-width classes, a classifier over them, and the prompt scored by its
  expected length.  Here the classifier is multinomial logistic regression on
  the same TF-IDF features, so it differs from TF-IDF + ridge only in
  treating length as classes.

Every scorer returns higher = shorter predicted output, like the sidecar.
scikit-learn is imported lazily: it is in the ``train`` extra only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import kendall_tau_b

BUCKETS = 10


def _tfidf():  # type: ignore[no-untyped-def]
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), max_features=200_000, dtype=np.float32)


def prompt_length_scores(prompt_tokens: Sequence[int]) -> np.ndarray:
    return -np.asarray(prompt_tokens, dtype=np.float64)


class TfidfRidge:
    """Ridge regression of -log(1 + output tokens) on TF-IDF; alpha chosen on val tau-b."""

    def __init__(self, alphas: Sequence[float] = (0.3, 1.0, 3.0, 10.0)) -> None:
        self.alphas = tuple(alphas)
        self.alpha: float | None = None

    def fit(self, prompts: Sequence[str], tokens: Sequence[int], val_prompts: Sequence[str], val_tokens: Sequence[int]) -> TfidfRidge:
        from sklearn.linear_model import Ridge

        self.vectorizer = _tfidf()
        x = self.vectorizer.fit_transform(prompts)
        xv = self.vectorizer.transform(val_prompts)
        y = -np.log1p(np.asarray(tokens, dtype=np.float64))
        fits = {a: Ridge(alpha=a).fit(x, y) for a in self.alphas}
        taus = {a: kendall_tau_b(m.predict(xv), val_tokens) for a, m in fits.items()}
        self.alpha = max(taus, key=lambda a: taus[a])
        self.model = fits[self.alpha]
        return self

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        return self.model.predict(self.vectorizer.transform(prompts))


class BucketClassifier:
    """10 equal-width output-length classes over [0, p99 of train outputs]; score = -expected length."""

    def __init__(self, buckets: int = BUCKETS, c: float = 1.0, upper_quantile: float = 0.99) -> None:
        self.buckets = buckets
        self.c = c
        self.upper_quantile = upper_quantile

    def fit(self, prompts: Sequence[str], tokens: Sequence[int]) -> BucketClassifier:
        from sklearn.linear_model import LogisticRegression

        t = np.asarray(tokens, dtype=np.float64)
        self.width = max(float(np.quantile(t, self.upper_quantile)), 1.0) / self.buckets
        classes = np.minimum((t / self.width).astype(int), self.buckets - 1)
        self.vectorizer = _tfidf()
        self.model = LogisticRegression(C=self.c, max_iter=1000).fit(self.vectorizer.fit_transform(prompts), classes)
        # Expected length from class midpoints; classes absent in train get no probability.
        self.midpoints = (self.model.classes_ + 0.5) * self.width
        self.class_counts = np.bincount(classes, minlength=self.buckets).tolist()
        return self

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        proba = self.model.predict_proba(self.vectorizer.transform(prompts))
        return -(proba @ self.midpoints)
