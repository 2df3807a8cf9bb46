"""The calibration core on synthetic data: it learns a served model's order, treats censored lengths as lower bounds,
refuses noise, and its adapters survive JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import kendalltau

from ltr_sidecar.calibration import (
    Adapter,
    AdapterError,
    censored_tau_b,
    fit_adapter,
    fit_calibration,
    features,
    known_order,
)

DIM = 24


def served_world(n: int, seed: int, reversal: float = 1.5) -> dict[str, np.ndarray]:
    """Prompts whose base score follows embedding dim 0, and a served model whose lengths partly reverse it.

    The base ranker says dim 0 high = short. The served model answers long
    where dim 0 is high (`reversal`) and short where dim 1 is high; about a
    third of its answers reach a 300-token cap (censored).
    """
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, DIM))
    base = emb[:, 0] + 0.2 * rng.normal(size=n)
    log_length = 4.5 + 0.5 * (reversal * emb[:, 0] - 1.0 * emb[:, 1]) + 0.3 * rng.normal(size=n)
    true = np.exp(log_length).round().astype(np.int64) + 1
    return {"emb": emb, "base": base, "tokens": rng.integers(5, 120, size=n), "true": true,
            "lengths": np.minimum(true, 300), "censored": true > 300}


def tau_b(scores: np.ndarray, lengths: np.ndarray) -> float:
    return float(kendalltau(scores, -lengths, variant="b").statistic)


def test_adapter_beats_the_base_where_the_served_model_reverses_part_of_its_order() -> None:
    train, fresh = served_world(400, seed=1), served_world(2000, seed=2)
    verdict = fit_calibration(train["emb"], train["base"], train["tokens"], train["lengths"], train["censored"])
    assert verdict.promoted, verdict.reason
    assert verdict.adapter is not None and verdict.candidate_tau > verdict.base_tau + 0.3
    calibrated = verdict.adapter.apply(fresh["emb"], fresh["base"], fresh["tokens"])
    # On prompts it never saw, against the served model's true (uncapped) lengths.
    assert tau_b(fresh["base"], fresh["true"]) < 0
    assert tau_b(calibrated, fresh["true"]) > 0.5


def test_censored_lengths_count_as_lower_bounds_so_aborted_long_answers_do_not_look_short() -> None:
    """Prompts with dim 1 high get very long answers, but users abort most of them early (a lower bound of 5-30 tokens).

    Taken as exact, those bounds teach the fit that dim 1 means *short*; taken
    as lower bounds, the only known pairs say those answers outlast the short
    ones below their bound, which is the truth.
    """
    rng = np.random.default_rng(3)

    def world(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        emb = rng.normal(size=(n, DIM))
        long_kind = emb[:, 1] > 0.5
        true = np.where(long_kind, rng.integers(800, 1000, size=n), np.exp(3.0 + 0.6 * emb[:, 0]).round() + 1).astype(np.int64)
        aborted = long_kind & (rng.random(n) < 0.95)
        observed = np.where(aborted, rng.integers(5, 30, size=n), true)
        return emb, np.zeros(n), true, observed, aborted

    emb, base, _, observed, aborted = world(600)
    x = features(emb, base, np.full(len(emb), 50))
    aware = fit_adapter(x, base, observed, aborted, 0.01, np.random.default_rng(0))
    naive = fit_adapter(x, base, observed, np.zeros_like(aborted), 0.01, np.random.default_rng(0))
    f_emb, f_base, f_true, _, _ = world(2000)
    aware_tau = tau_b(aware.apply(f_emb, f_base, np.full(2000, 50)), f_true)
    naive_tau = tau_b(naive.apply(f_emb, f_base, np.full(2000, 50)), f_true)
    assert aware_tau > 0.4
    assert aware_tau > naive_tau + 0.2, (aware_tau, naive_tau)
    # The fitted weights say it directly: dim 1 (long answers) lowers the score (= longer) only when censoring is respected.
    assert aware.embedding_weights[1] < 0 < naive.embedding_weights[1]


@pytest.mark.parametrize("n", [50, 200, 600])
def test_noise_labels_are_never_promoted(n: int) -> None:
    for seed in range(6):
        world = served_world(n, seed=100 + seed)
        # The served model's lengths (and their censoring) dealt to the prompts at random.
        shuffle = np.random.default_rng(seed).permutation(n)
        verdict = fit_calibration(world["emb"], world["base"], world["tokens"], world["lengths"][shuffle], world["censored"][shuffle], seed=seed)
        assert not verdict.promoted and verdict.adapter is None, verdict.reason
        assert "the base serves unchanged" in verdict.reason or "too few" in verdict.reason


def test_too_few_observations_fit_nothing() -> None:
    world = served_world(15, seed=4)
    verdict = fit_calibration(world["emb"], world["base"], world["tokens"], world["lengths"], world["censored"])
    assert not verdict.promoted and verdict.adapter is None and "too few" in verdict.reason


def test_known_order_uses_a_censored_length_only_as_a_lower_bound() -> None:
    lengths = np.array([10, 20, 15, 15, 30])
    censored = np.array([False, False, True, False, True])
    i, j = np.array([0, 1, 0, 1, 2, 3, 2]), np.array([1, 0, 2, 2, 4, 3, 3])
    # exact<exact, exact>exact, exact 10 < bound 15, exact 20 vs bound 15 (unknown), two bounds (unknown),
    # a tie, bound 15 vs exact 15 (the censored one ran at least 15: not surely longer... nor shorter).
    assert known_order(lengths, censored, i, j).tolist() == [1, -1, 1, 0, 0, 0, 0]


def test_censored_tau_b_is_kendall_tau_b_when_nothing_is_censored_or_all_are_cut_at_one_cap() -> None:
    rng = np.random.default_rng(5)
    scores, lengths = rng.normal(size=80), rng.integers(1, 40, size=80)
    assert censored_tau_b(scores, lengths, np.zeros(80, bool)) == pytest.approx(tau_b(scores, lengths))
    capped = np.minimum(lengths, 25)
    assert censored_tau_b(scores, capped, capped == 25) == pytest.approx(tau_b(scores, capped))


def test_an_adapter_survives_json_and_a_malformed_one_is_refused_by_field() -> None:
    world = served_world(300, seed=6)
    adapter = fit_calibration(world["emb"], world["base"], world["tokens"], world["lengths"], world["censored"]).adapter
    assert adapter is not None
    again = Adapter.from_json(json.loads(json.dumps(adapter.to_json())))
    np.testing.assert_allclose(again.apply(world["emb"], world["base"], world["tokens"]), adapter.apply(world["emb"], world["base"], world["tokens"]))
    assert again.digest() == adapter.digest() and again.fit["promoted"] is True
    broken = {**adapter.to_json(), "embedding_weights": [1.0, "x"]}
    with pytest.raises(AdapterError, match="adapter.json: needs numeric"):
        Adapter.from_json(broken)
    with pytest.raises(AdapterError, match="finite"):
        Adapter.from_json({**adapter.to_json(), "bias": float("nan")})
    with pytest.raises(AdapterError, match="format"):
        Adapter.from_json({**adapter.to_json(), "format": "other"})
