"""Critic quality, budget value and residual errors (actlabel.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actlabel.metrics import (
    IsotonicCalibrator,
    PlattCalibrator,
    annotation_budget_saving,
    annotation_quality_gain,
    budget_curve,
    downstream_gap,
    ece_before_after,
    error_detection_auroc,
    expected_calibration_error,
    fit_calibrator,
    oracle_budget_curve,
    random_budget_curve,
    reliability_diagram,
    residual_error_estimate,
)
from actlabel.select import select

# ---------------------------------------------------------------------------------------------
# AUROC, ECE, reliability


def _pairwise_auroc(e: np.ndarray, y: np.ndarray) -> float:
    pos, neg = e[y], e[~y]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    e = rng.integers(0, 5, 300) / 4.0  # heavy ties
    y = rng.random(300) < 0.2 + 0.5 * e
    assert error_detection_auroc(e, y) == pytest.approx(_pairwise_auroc(e, y), abs=1e-12)
    assert error_detection_auroc(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 1, 0])) == 1.0
    assert error_detection_auroc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert error_detection_auroc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 0])) == 0.5
    assert math.isnan(error_detection_auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def _mann_whitney_auroc(e: np.ndarray, y: np.ndarray) -> float:
    """The rank form actlabel computed AUROC with before it used scikit-learn."""
    order = np.argsort(e, kind="mergesort")
    xs = e[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    ranks = np.empty(e.size)
    ranks[order] = np.repeat((bounds[:-1] + bounds[1:] + 1) / 2.0, np.diff(bounds))
    n1 = int(y.sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * (y.size - n1)))


def test_auroc_gives_the_figures_of_the_rank_form_and_nan_for_one_class() -> None:
    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(2, 2000))
        e = rng.integers(0, 20, n) / 19.0 if trial % 2 else rng.random(n)
        y = rng.random(n) < 0.1 + 0.6 * e
        if 0 < y.sum() < n:
            assert error_detection_auroc(e, y) == pytest.approx(_mann_whitney_auroc(e, y), abs=1e-9)
    assert math.isnan(error_detection_auroc(np.array([0.3, 0.7]), np.array([0, 0])))
    assert math.isnan(error_detection_auroc(np.array([0.5]), np.array([1])))


def test_ece_hand_example_and_reliability_table() -> None:
    prob = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    outcome = np.array([0, 1, 0, 1, 1])
    rd = reliability_diagram(prob, outcome, n_bins=10)
    assert rd.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    np.testing.assert_allclose(rd.bin_centers[[0, 9]], [0.05, 0.95])
    assert rd.mean_predicted[1] == pytest.approx(0.135)
    assert rd.observed_frequency[1] == pytest.approx(0.5)
    assert math.isnan(rd.mean_predicted[2]) and math.isnan(rd.observed_frequency[2])
    # |0.05 - 0| * 1/5 + |0.135 - 0.5| * 2/5 + |0.975 - 1| * 2/5
    expected = 0.05 / 5 + 0.365 * 2 / 5 + 0.025 * 2 / 5
    assert expected_calibration_error(prob, outcome, 10) == pytest.approx(expected)


def test_ece_is_small_for_a_calibrated_forecaster_and_weights_count() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(50_000)
    y = rng.random(50_000) < p
    assert expected_calibration_error(p, y) < 0.01
    assert expected_calibration_error(p, y < 0.5) > 0.3  # anti-correlated outcome
    w = np.where(p > 0.5, 3.0, 1.0)
    rd = reliability_diagram(p, y, 4, sample_weight=w)
    np.testing.assert_allclose(rd.weights[2:], rd.counts[2:] * 3.0)


def test_metric_validation() -> None:
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\]; got -0.1 at index 1"):
        expected_calibration_error(np.array([0.2, -0.1]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"outcome must have shape \(2,\), got \(3,\)"):
        expected_calibration_error(np.array([0.2, 0.1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="is_error must be boolean or 0/1; got 2 at index 0"):
        error_detection_auroc(np.array([0.2, 0.1]), np.array([2, 1]))


# ---------------------------------------------------------------------------------------------
# calibration


def test_isotonic_pool_adjacent_violators_hand_example() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0, 1, 0, 1, 1, 0])
    cal = IsotonicCalibrator().fit(x, y)
    # blocks: {0.1} -> 0, {0.2, 0.3} -> 1/2, {0.4, 0.5, 0.6} -> 2/3
    np.testing.assert_allclose(cal.predict(x), [0, 0.5, 0.5, 2 / 3, 2 / 3, 2 / 3])
    assert cal.predict(np.array([0.0]))[0] == 0.0 and cal.predict(np.array([1.0]))[0] == pytest.approx(2 / 3)
    assert cal.predict(np.array([0.35]))[0] == pytest.approx((0.5 + 2 / 3) / 2)  # linear between blocks
    weighted = IsotonicCalibrator().fit(x, y, sample_weight=np.array([1, 1, 3, 1, 1, 1]))
    assert weighted.predict(np.array([0.2]))[0] == pytest.approx(0.25)  # (1 + 0 * 3) / 4


def test_isotonic_matches_sklearn_when_available() -> None:
    isotonic = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(2)
    x = rng.random(400)
    y = rng.random(400) < x**2
    ours = IsotonicCalibrator().fit(x, y).predict(np.linspace(0, 1, 101))
    ref = (
        isotonic.IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        .fit(x, y)
        .predict(np.linspace(0, 1, 101))
    )
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_platt_recovers_a_logistic_recalibration() -> None:
    rng = np.random.default_rng(3)
    e = rng.uniform(0.02, 0.98, 40_000)
    logit = np.log(e / (1 - e))
    y = rng.random(e.size) < 1 / (1 + np.exp(-(2.0 * logit - 1.0)))
    cal = fit_calibrator(e, y, "platt")
    assert isinstance(cal, PlattCalibrator)
    assert cal.coef_ == pytest.approx(2.0, abs=0.08)
    assert cal.intercept_ == pytest.approx(-1.0, abs=0.08)
    # separable data stays finite thanks to Platt's smoothed targets
    sep = PlattCalibrator().fit(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert math.isfinite(sep.coef_) and sep.predict(np.array([0.9]))[0] < 1.0


def test_platt_agrees_with_sklearn_logistic_regression_on_platts_targets() -> None:
    from sklearn.linear_model import LogisticRegression

    from actlabel.logistic import logit, sigmoid

    rng = np.random.default_rng(6)
    e = rng.random(3000)
    y = rng.random(e.size) < sigmoid(1.5 * logit(e) - 0.5)
    w = rng.random(e.size) + 0.2
    ours = PlattCalibrator().fit(e, y, sample_weight=w)
    # Platt's smoothed targets as two weighted rows per item, one of each class
    n_pos, n_neg = w[y].sum(), w[~y].sum()
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    s = logit(e, ours.eps)
    ref = LogisticRegression(C=1 / ours.reg, tol=1e-12, max_iter=1000).fit(
        np.r_[s, s][:, None],
        np.r_[np.ones(e.size), np.zeros(e.size)],
        sample_weight=np.r_[w * t, w * (1 - t)],
    )
    grid = np.linspace(0.01, 0.99, 99)
    expected = sigmoid(ref.coef_[0, 0] * logit(grid, ours.eps) + ref.intercept_[0])
    np.testing.assert_allclose(ours.predict(grid), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_lowers_cross_fitted_ece(method: str) -> None:
    rng = np.random.default_rng(4)
    e = rng.random(6000)
    y = rng.random(6000) < e**3  # the critic overstates the error probability
    rep = ece_before_after(e, y, method, n_folds=5, seed=0)
    assert rep.ece_before > 0.15
    assert rep.ece_after < 0.04
    assert rep.calibrated.shape == e.shape
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator(e, y, "beta")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not fitted"):
        IsotonicCalibrator().predict(e)


# ---------------------------------------------------------------------------------------------
# AQG, ABS, budget curves


def test_annotation_quality_gain() -> None:
    machine_correct = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 1], dtype=bool)
    reviewed = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    q = annotation_quality_gain(machine_correct, reviewed)
    assert (q.n_errors, q.errors_fixed, q.budget) == (3, 2, 3)
    assert q.machine_accuracy == pytest.approx(0.7)
    assert q.final_accuracy == pytest.approx(0.9)
    assert q.aqg == pytest.approx(0.2)
    assert q.efficiency == pytest.approx(2 / 3)
    human_correct = np.array([1, 0, 1, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
    q = annotation_quality_gain(machine_correct, reviewed, human_correct)
    assert (q.errors_fixed, q.errors_introduced) == (1, 1)
    assert q.final_accuracy == pytest.approx(0.7)  # item 1 broken, item 3 still wrong
    assert math.isnan(annotation_quality_gain(np.ones(4, dtype=bool), np.ones(4, dtype=bool)).efficiency)


def test_annotation_budget_saving() -> None:
    # 100 errors in 1000 items: random review fixes 0.1 error per item, so 80 fixes need 800
    assert annotation_budget_saving(80, 100, 100, 1000) == pytest.approx(1 - 100 / 800)
    assert annotation_budget_saving(10, 100, 100, 1000) == pytest.approx(0.0)  # as good as random
    assert annotation_budget_saving(5, 100, 100, 1000) < 0  # worse than random
    assert math.isnan(annotation_budget_saving(0, 100, 100, 1000))
    with pytest.raises(ValueError, match="cannot exceed min"):
        annotation_budget_saving(120, 100, 200, 1000)


def test_budget_curves() -> None:
    e = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.1])
    y = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    curve = budget_curve(e, y, [0, 1, 2, 3, 4, 5, 6])
    # the tied group {1, 2, 3} holds 1 error: each slot taken from it fixes 1/3 on average
    np.testing.assert_allclose(curve.errors_fixed, [0, 1, 1 + 1 / 3, 1 + 2 / 3, 2, 3, 3])
    np.testing.assert_allclose(curve.accuracy, (3 + curve.errors_fixed) / 6)
    assert curve.machine_accuracy == 0.5
    np.testing.assert_allclose(random_budget_curve(y, [0, 2, 6]).errors_fixed, [0, 1, 3])
    np.testing.assert_allclose(oracle_budget_curve(y, [0, 2, 6]).errors_fixed, [0, 2, 3])
    assert np.all(
        budget_curve(y.astype(float), y, range(7)).errors_fixed
        == oracle_budget_curve(y, range(7)).errors_fixed
    )
    with pytest.raises(ValueError, match=r"budgets must be whole numbers in \[0, 6\]; got 7 at index 1"):
        budget_curve(e, y, [1, 7])


def test_budget_curve_tie_expectation_matches_random_tie_breaks() -> None:
    rng = np.random.default_rng(5)
    e = rng.integers(0, 4, 40) / 3
    y = rng.random(40) < 0.3 + 0.4 * e
    fixed = np.mean([y[np.argsort(-e + 1e-9 * rng.random(40))[:17]].sum() for _ in range(20000)])
    assert budget_curve(e, y, [17]).errors_fixed[0] == pytest.approx(fixed, abs=0.05)


def test_downstream_gap() -> None:
    assert downstream_gap(0.8795, 0.8866) == pytest.approx(0.0071)
    with pytest.raises(ValueError, match="acc_act must be an accuracy"):
        downstream_gap(87.95, 0.88)


# ---------------------------------------------------------------------------------------------
# residual errors


def test_residual_estimate_hand_example() -> None:
    e = np.array([0.9, 0.8, 0.2, 0.1, 0.1, 0.3])
    reviewed = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    pi = np.array([1.0, 0.9, 0.25, 0.25, 0.25, 0.2])
    is_error = np.array([1, 0, 1, -1, -1, -1])
    res = residual_error_estimate(is_error, reviewed, pi, e, interval="wald")
    # sum_unreviewed e + sum_reviewed (y - e)(1/pi - 1) = 0.5 + 0 - 0.8/9 + 0.8 * 3
    t_hat = 0.5 - 0.8 / 9 + 2.4
    var = 0.1 / 0.81 * 0.64 + 0.75 / 0.0625 * 0.64
    assert res.estimate == pytest.approx(t_hat) and res.raw_estimate == pytest.approx(t_hat)
    assert res.std_error == pytest.approx(math.sqrt(var))
    assert (res.errors_found, res.n_reviewed, res.n_unreviewed) == (2, 3, 3)
    assert res.total_errors_estimate == pytest.approx(t_hat + 2)
    assert res.model_estimate == pytest.approx(0.5)
    assert res.lower == 0.0 and res.upper == 3.0  # clipped to [0, N_unreviewed]
    same = residual_error_estimate(np.array([1, 0, 1]), reviewed, pi, e, interval="wald")
    assert same.estimate == res.estimate  # is_error given for reviewed items only
    adjusted = residual_error_estimate(is_error, reviewed, pi, e)
    p_star, e_bar, z2 = 0.7 / 3, 0.5 / 3, 1.959963984540054**2
    pseudo = z2 / 2 * (1 - p_star) / p_star**2 * ((1 - e_bar) ** 2 + e_bar**2)
    design = float(((1 - pi) / pi * e * (1 - e)).sum())
    assert adjusted.std_error == pytest.approx(math.sqrt(max(var + pseudo, design)))


def test_residual_estimate_not_identifiable_without_uniform_share() -> None:
    rng = np.random.default_rng(6)
    e = rng.random(100)
    res = select(e, 20, rule="threshold", seed=0)
    out = residual_error_estimate(np.where(res.selected, 1, -1), res.selected, res.review_prob, e)
    assert not out.identifiable
    assert math.isnan(out.estimate)
    assert (out.lower, out.upper) == (0.0, 80.0)
    assert "--uniform" in out.note
    assert out.model_estimate == pytest.approx(e[~res.selected].sum())


def test_residual_estimate_validation() -> None:
    e = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="is_error must be 0/1 on reviewed items; got 0.5 at item 0"):
        residual_error_estimate(np.array([0.5, -1]), np.array([1, 0]), np.array([0.5, 0.5]), e)
    with pytest.raises(ValueError, match="is_error must have length 2"):
        residual_error_estimate(np.array([1, 0, 1]), np.array([1, 0]), np.array([0.5, 0.5]), e)
    with pytest.raises(ValueError, match="item 0 is reviewed but has review_prob 0"):
        residual_error_estimate(np.array([1, -1]), np.array([1, 0]), np.array([0.0, 0.5]), e)


def _simulate(rng: np.random.Generator, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    e = rng.beta(0.6, 0.6 * (1 - rate) / rate, n)  # calibrated critic: P(error | e) = e
    return rng.random(n) < e, e


def test_residual_estimate_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    diffs = []
    for r in range(400):
        y, e = _simulate(rng, 600, 0.3)
        sel = select(e / 2, 200, rule="threshold", uniform=0.3, seed=r)  # an overconfident critic
        d = sel.selected
        res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e / 2, interval="wald")
        diffs.append(res.raw_estimate - (y & ~d).sum())
    diffs = np.array(diffs)
    assert abs(diffs.mean()) <= 4 * diffs.std() / math.sqrt(diffs.size)
    assert diffs.std() > 3  # the estimate is random: the test is not vacuous


@pytest.mark.parametrize(
    ("critic", "uniform", "rate"),
    [("pessimistic", 0.05, 0.15), ("overconfident", 0.2, 0.3)],
)
def test_residual_interval_coverage_by_simulation(critic: str, uniform: float, rate: float) -> None:
    """300 simulated projects of 2000 items, nominal 95%: coverage must land in [0.90, 0.99]."""
    rng = np.random.default_rng(8)
    hits = {"adjusted": 0, "wald": 0}
    reps = 300
    for r in range(reps):
        if critic == "pessimistic":  # good ranking, probabilities too high on correct labels
            y = rng.random(2000) < rate
            e = np.where(y, rng.beta(4, 2, 2000), rng.beta(1, 6, 2000))
        else:  # reports half the calibrated probability
            y, e = _simulate(rng, 2000, rate)
            e = e / 2
        sel = select(e, int(1.2 * rate * 2000), rule="threshold", uniform=uniform, seed=r)
        d = sel.selected
        left = int((y & ~d).sum())
        for method in hits:
            res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e, interval=method)
            hits[method] += res.lower <= left <= res.upper
    # Upper bound 0.99 and "Wald < 0.85 with the pessimistic critic" encoded the systematic
    # design's hidden variance (issue 12 item 7: V_hat 2.4x below the design variance); with the
    # pivotal design V_hat is right there and the adjusted interval is conservative (1.00).
    assert 0.90 <= hits["adjusted"] / reps <= 1.0, hits
    if critic == "pessimistic":
        assert hits["wald"] / reps >= 0.88, hits
