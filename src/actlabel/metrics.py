"""Metrics for ACT: how good the critic is, what the review budget bought, and what errors remain.

Pure functions over arrays (arrays in, floats or small dataclasses out), on NumPy and, for AUROC
and isotonic calibration, scikit-learn (imported when first used: `status` never pays for it).  Definitions follow
PAPER.md "Metrics"; formulas are in each docstring and derived in docs/statistics.md.

* critic quality: :func:`error_detection_auroc`, :func:`expected_calibration_error`,
  :func:`reliability_diagram`, calibration by :func:`fit_calibrator` (isotonic / Platt) and
  :func:`ece_before_after`;
* budget value: :func:`annotation_quality_gain` (AQG), :func:`annotation_budget_saving` (ABS),
  :func:`budget_curve`, :func:`random_budget_curve`, :func:`oracle_budget_curve`;
* what is left: :func:`residual_error_estimate`, a prediction-powered, design-unbiased estimate of
  the number of wrong labels among the unreviewed items, with a confidence interval, and
  :func:`residual_error_estimate_over_rounds`, the same from every review round's draw;
* :func:`downstream_gap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np

from actlabel.logistic import logit, sigmoid, two_sided_z
from actlabel.validate import bool_array, prob_array

# ----------------------------------------------------------------------------------------------
# validation helpers


def _weights(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    w = np.asarray(sample_weight, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"sample_weight must be finite and >= 0; got {w[i].item()!r} at index {i}")
    return w


# ----------------------------------------------------------------------------------------------
# critic quality


def error_detection_auroc(error_prob: np.ndarray, is_error: np.ndarray) -> float:
    """AUROC of ``error_prob`` as a detector of machine errors (m_i != true label).

    P(e_error > e_correct) + 0.5 P(tie), by scikit-learn's ``roc_auc_score`` (the area under the
    ROC curve equals this Mann-Whitney form).  NaN when only one class is present, where
    scikit-learn would raise.
    """
    from sklearn.metrics import roc_auc_score

    e = np.asarray(error_prob, dtype=float)
    if e.ndim != 1 or (~np.isfinite(e)).any():
        raise ValueError("error_prob must be a 1-D array of finite numbers")
    y = bool_array(is_error, "is_error", e.size)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float(roc_auc_score(y, e))


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin calibration table; empty bins have NaN means and zero counts."""

    bin_edges: np.ndarray
    bin_centers: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray
    #: sum of sample weights per bin (equals ``counts`` without weights)
    weights: np.ndarray


def reliability_diagram(
    prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10, *, sample_weight: np.ndarray | None = None
) -> ReliabilityDiagram:
    """Equal-width bins on [0, 1] (bin b = [b/n_bins, (b+1)/n_bins), the last one closed).

    Per bin: mean predicted probability, observed frequency of ``outcome``, number of items.
    ``sample_weight`` (e.g. 1/pi on reviewed items) makes the means weighted, so the diagram
    estimates the whole population's calibration from a non-uniform sample.
    """
    p = prob_array(prob, "prob")
    y = bool_array(outcome, "outcome", p.size).astype(float)
    w = _weights(sample_weight, p.size)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number >= 1, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    wsum = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=w * p, minlength=n_bins) / wsum
        freq = np.bincount(b, weights=w * y, minlength=n_bins) / wsum
    empty = wsum == 0
    mean_p[empty] = np.nan
    freq[empty] = np.nan
    return ReliabilityDiagram(
        bin_edges=edges,
        bin_centers=(edges[:-1] + edges[1:]) / 2.0,
        mean_predicted=mean_p,
        observed_frequency=freq,
        counts=counts,
        weights=wsum,
    )


def expected_calibration_error(
    prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10, *, sample_weight: np.ndarray | None = None
) -> float:
    """ECE = sum_b (W_b / W) |mean predicted_b - observed frequency_b| over equal-width bins.

    W_b is the (weighted) number of items in bin b.  NaN for empty input.
    """
    rd = reliability_diagram(prob, outcome, n_bins, sample_weight=sample_weight)
    total = rd.weights.sum()
    if total <= 0:
        return float("nan")
    full = rd.weights > 0
    gaps = np.abs(rd.mean_predicted[full] - rd.observed_frequency[full])
    return float((rd.weights[full] / total * gaps).sum())


# ----------------------------------------------------------------------------------------------
# calibration


class _CalibratorBase:
    """fit / predict of a calibrator: the inputs checked once here (`_calibration_data`: items
    with a positive weight), the map itself in `_fit` / `_predict` of each method."""

    #: the learned attribute that says the calibrator is fitted
    _fitted_attr = ""

    def fit(
        self, error_prob: np.ndarray, outcome: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> Self:
        self._fit(*_calibration_data(error_prob, outcome, sample_weight))
        return self

    def predict(self, error_prob: np.ndarray) -> np.ndarray:
        if not hasattr(self, self._fitted_attr):
            raise ValueError(f"{type(self).__name__} is not fitted yet: call fit first")
        return self._predict(prob_array(error_prob, "error_prob"))

    __call__ = predict

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class IsotonicCalibrator(_CalibratorBase):
    """Monotone (non-decreasing) map from error_prob to P(error): scikit-learn's
    ``IsotonicRegression`` (pool-adjacent-violators).

    PAV minimises sum_i w_i (y_i - f(x_i))^2 over non-decreasing f.  Prediction interpolates
    linearly between the fitted points and is constant beyond the fitted range.  Learned state:
    ``x_thresholds_``, ``y_thresholds_``.
    """

    def __init__(self, y_min: float = 0.0, y_max: float = 1.0) -> None:
        self.y_min = y_min
        self.y_max = y_max

    _fitted_attr = "x_thresholds_"

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(y_min=self.y_min, y_max=self.y_max, out_of_bounds="clip").fit(
            x, y.astype(float), sample_weight=w
        )
        self.x_thresholds_ = np.asarray(fitted.X_thresholds_, dtype=float)
        self.y_thresholds_ = np.asarray(fitted.y_thresholds_, dtype=float)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.x_thresholds_, self.y_thresholds_)


def _calibration_data(
    error_prob: np.ndarray, outcome: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(error_prob, outcome as bool, weight) of the items with a positive weight; ValueError if none."""
    x = prob_array(error_prob, "error_prob")
    y = bool_array(outcome, "outcome", x.size)
    w = _weights(sample_weight, x.size)
    keep = w > 0
    if not keep.any():
        raise ValueError("cannot fit a calibrator on zero items (or all weights zero)")
    return x[keep], y[keep], w[keep]


class PlattCalibrator(_CalibratorBase):
    """Logistic recalibration: P(error) = sigmoid(a * logit(e) + b).

    On the logit of the critic's probability (identity at a = 1, b = 0), fitted by Newton's method
    on the weighted log-loss with Platt's smoothed targets t+ = (N+ + 1)/(N+ + 2),
    t- = 1/(N- + 2) (which keeps the fit finite on separable data) and a small ridge
    ``reg/2 * ((a - 1)^2 + b^2)`` pulling towards "trust the critic as is".
    Learned state: ``coef_`` (a), ``intercept_`` (b), ``n_iter_``.

    Not scikit-learn's ``LogisticRegression``: that one penalises towards a = 0 and cannot be
    told the prior a = 1, so where the reviewed error_probs barely vary (all alike, say) it
    would flatten the critic instead of trusting it. Elsewhere both agree to 1e-6
    (tests/test_metrics.py).
    """

    def __init__(self, reg: float = 1e-6, max_iter: int = 100, tol: float = 1e-10, eps: float = 1e-6) -> None:
        self.reg = reg
        self.max_iter = max_iter
        self.tol = tol
        self.eps = eps

    _fitted_attr = "coef_"

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        s = logit(x, self.eps)
        n_pos, n_neg = float(w[y].sum()), float(w[~y].sum())
        t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        z = np.stack([s, np.ones_like(s)], axis=1)
        theta = np.array([1.0, 0.0])
        prior = np.array([1.0, 0.0])

        def objective(th: np.ndarray) -> float:
            f = z @ th
            # log(1 + exp(f)) - t f, computed stably
            return float(
                (w * (np.logaddexp(0.0, f) - t * f)).sum() + 0.5 * self.reg * ((th - prior) ** 2).sum()
            )

        obj = objective(theta)
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            p = sigmoid(z @ theta)
            grad = z.T @ (w * (p - t)) + self.reg * (theta - prior)
            hess = (z * (w * p * (1 - p))[:, None]).T @ z + self.reg * np.eye(2)
            step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
            # Backtracking keeps Newton monotone when the curvature is tiny (near-separable data).
            size = 1.0
            while size > 1e-8:
                cand = theta - size * step
                cand_obj = objective(cand)
                if cand_obj <= obj:
                    break
                size /= 2.0
            else:
                break
            done = abs(obj - cand_obj) <= self.tol * max(1.0, abs(obj))
            theta, obj = cand, cand_obj
            if done:
                break
        self.coef_ = float(theta[0])
        self.intercept_ = float(theta[1])
        self.n_iter_ = n_iter

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(self.coef_ * logit(x, self.eps) + self.intercept_)


Calibrator = IsotonicCalibrator | PlattCalibrator
CalibrationMethod = Literal["isotonic", "platt"]


def _make_calibrator(method: str) -> Calibrator:
    if method == "isotonic":
        return IsotonicCalibrator()
    if method == "platt":
        return PlattCalibrator()
    raise ValueError(f"unknown calibration method {method!r}; choose 'isotonic' or 'platt'")


def fit_calibrator(
    error_prob: np.ndarray,
    outcome: np.ndarray,
    method: CalibrationMethod = "isotonic",
    *,
    sample_weight: np.ndarray | None = None,
) -> Calibrator:
    """Fit a calibrator mapping the critic's error_prob to P(machine label wrong).

    Fit on reviewed items (outcome = human label != machine label).  Those were chosen mostly
    because e was high; pass ``sample_weight = 1 / review_prob`` (with a uniform share in the
    design) to calibrate for the whole population rather than for the reviewed sample.
    """
    return _make_calibrator(method).fit(error_prob, outcome, sample_weight)


@dataclass(frozen=True)
class CalibrationReport:
    """ECE of the raw error probabilities and of cross-fitted calibrated ones."""

    ece_before: float
    ece_after: float
    method: str
    n_folds: int
    calibrated: np.ndarray


def ece_before_after(
    error_prob: np.ndarray,
    outcome: np.ndarray,
    method: CalibrationMethod = "isotonic",
    *,
    n_bins: int = 10,
    n_folds: int = 5,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
) -> CalibrationReport:
    """ECE before and after calibration, the "after" cross-fitted so it is not optimistic.

    Items are split into ``n_folds`` random folds; each fold is calibrated by a calibrator fitted
    on the other folds, and the ECE is computed on the pooled out-of-fold predictions.
    ``n_folds = 1`` fits and evaluates on the same items (in-sample: optimistic, shown as such).
    """
    e = prob_array(error_prob, "error_prob")
    y = bool_array(outcome, "outcome", e.size)
    w = _weights(sample_weight, e.size)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 1:
        raise ValueError(f"n_folds must be a whole number >= 1, got {n_folds!r}")
    if e.size < max(n_folds, 1):
        raise ValueError(f"need at least {n_folds} items for {n_folds} folds, got {e.size}")
    before = expected_calibration_error(e, y, n_bins, sample_weight=w)
    if n_folds == 1:
        calibrated = _make_calibrator(method).fit(e, y, w).predict(e)
    else:
        folds = np.random.default_rng(seed).permutation(e.size) % n_folds
        calibrated = np.empty(e.size)
        for k in range(n_folds):
            test = folds == k
            cal = _make_calibrator(method).fit(e[~test], y[~test], w[~test])
            calibrated[test] = cal.predict(e[test])
    after = expected_calibration_error(calibrated, y, n_bins, sample_weight=w)
    return CalibrationReport(
        ece_before=before, ece_after=after, method=method, n_folds=int(n_folds), calibrated=calibrated
    )


# ----------------------------------------------------------------------------------------------
# what the budget bought


@dataclass(frozen=True)
class QualityGain:
    """AQG(B) and friends for one review outcome."""

    n_items: int
    budget: int
    n_errors: int
    errors_fixed: int
    errors_introduced: int
    machine_accuracy: float
    final_accuracy: float
    #: final_accuracy - machine_accuracy
    aqg: float
    #: errors_fixed / min(budget, n_errors); NaN when that minimum is 0
    efficiency: float


def annotation_quality_gain(
    machine_correct: np.ndarray, reviewed_mask: np.ndarray, human_correct: np.ndarray | None = None
) -> QualityGain:
    """AQG(B) = accuracy of the final labels - accuracy of the machine labels.

    Final label: the human label where reviewed, else the machine label.  Humans are taken as
    always right unless ``human_correct`` says otherwise.  B = number reviewed.
    efficiency = errors fixed / min(B, errors): 1 means an oracle critic would have done no better.
    """
    mc = bool_array(machine_correct, "machine_correct")
    n = mc.size
    r = bool_array(reviewed_mask, "reviewed_mask", n)
    hc = np.ones(n, dtype=bool) if human_correct is None else bool_array(human_correct, "human_correct", n)
    if n == 0:
        raise ValueError("annotation_quality_gain needs at least one item")
    final = np.where(r, hc, mc)
    budget = int(r.sum())
    n_errors = int((~mc).sum())
    fixed = int((r & ~mc & hc).sum())
    introduced = int((r & mc & ~hc).sum())
    denom = min(budget, n_errors)
    return QualityGain(
        n_items=n,
        budget=budget,
        n_errors=n_errors,
        errors_fixed=fixed,
        errors_introduced=introduced,
        machine_accuracy=float(mc.mean()),
        final_accuracy=float(final.mean()),
        aqg=float(final.mean() - mc.mean()),
        efficiency=fixed / denom if denom > 0 else float("nan"),
    )


def annotation_budget_saving(n_fixed: int, budget: int, n_errors: int, n_items: int) -> float:
    """ABS(B) = 1 - B / B_random, with B_random = n_fixed * N / n_errors.

    B_random is the number of uniformly random reviews that fix ``n_fixed`` errors in expectation
    (each random review finds an error with probability n_errors / N).  Positive: the critic
    saved that share of the budget; negative: it did worse than random.  NaN when nothing was
    fixed (B_random = 0).
    """
    for name, v in (("n_fixed", n_fixed), ("budget", budget), ("n_errors", n_errors), ("n_items", n_items)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    if n_items == 0:
        raise ValueError("n_items must be > 0")
    if n_errors > n_items or budget > n_items:
        raise ValueError(f"n_errors ({n_errors}) and budget ({budget}) cannot exceed n_items ({n_items})")
    if n_fixed > min(budget, n_errors):
        raise ValueError(f"n_fixed ({n_fixed}) cannot exceed min(budget, n_errors) = {min(budget, n_errors)}")
    if n_fixed == 0:
        return float("nan")
    b_random = n_fixed * n_items / n_errors
    return 1.0 - budget / b_random


@dataclass(frozen=True)
class BudgetCurve:
    """Label accuracy after reviewing the first B items of a ranking, for several B."""

    budgets: np.ndarray
    errors_fixed: np.ndarray
    accuracy: np.ndarray
    machine_accuracy: float


def _check_budgets(budgets: np.ndarray, n: int) -> np.ndarray:
    b = np.atleast_1d(np.asarray(budgets))
    if b.ndim != 1:
        raise ValueError(f"budgets must be a 1-D array, got shape {b.shape}")
    bf = b.astype(float)
    bad = ~np.isfinite(bf) | (bf < 0) | (bf > n) | (bf != np.round(bf))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"budgets must be whole numbers in [0, {n}]; got {b[i].item()!r} at index {i}")
    return bf.astype(int)


def _curve(fixed: np.ndarray, budgets: np.ndarray, n: int, n_errors: int) -> BudgetCurve:
    return BudgetCurve(
        budgets=budgets,
        errors_fixed=fixed.astype(float),
        accuracy=(n - n_errors + fixed) / n,
        machine_accuracy=(n - n_errors) / n,
    )


def budget_curve(error_prob: np.ndarray, is_error: np.ndarray, budgets: np.ndarray) -> BudgetCurve:
    """Review the top-B items by error_prob: errors fixed and final accuracy, per budget.

    accuracy(B) = (N - errors + fixed(B)) / N.  Ties in error_prob at the cut are resolved in
    expectation over a random tie-break: of a tied group of size g holding k errors, taking j
    items fixes j * k / g errors on average.
    """
    e = prob_array(error_prob, "error_prob")
    y = bool_array(is_error, "is_error", e.size)
    n = e.size
    if n == 0:
        raise ValueError("budget_curve needs at least one item")
    b = _check_budgets(budgets, n)
    order = np.argsort(-e, kind="mergesort")
    es, ys = e[order], y[order]
    starts = np.flatnonzero(np.r_[True, es[1:] != es[:-1]])
    sizes = np.diff(np.r_[starts, n])
    errs = np.add.reduceat(ys.astype(float), starts)
    cum_n = np.r_[0, np.cumsum(sizes)]
    cum_err = np.r_[0.0, np.cumsum(errs)]
    g = np.searchsorted(cum_n, b, side="right") - 1  # group where the cut falls
    g = np.minimum(g, sizes.size - 1)
    partial = (b - cum_n[g]) * errs[g] / sizes[g]
    fixed = cum_err[g] + partial
    return _curve(fixed, b, n, int(y.sum()))


def _reference_curve_inputs(
    is_error: np.ndarray, budgets: np.ndarray, name: str
) -> tuple[np.ndarray, int, int]:
    """(budgets checked, N, errors) for a curve that needs no critic; ValueError naming `name`."""
    y = bool_array(is_error, "is_error")
    if y.size == 0:
        raise ValueError(f"{name} needs at least one item")
    return _check_budgets(budgets, y.size), y.size, int(y.sum())


def random_budget_curve(is_error: np.ndarray, budgets: np.ndarray) -> BudgetCurve:
    """Expected curve for B uniformly random reviews: fixed(B) = B * errors / N (closed form)."""
    b, n, k = _reference_curve_inputs(is_error, budgets, "random_budget_curve")
    return _curve(b * k / n, b, n, k)


def oracle_budget_curve(is_error: np.ndarray, budgets: np.ndarray) -> BudgetCurve:
    """Curve of a perfect critic: fixed(B) = min(B, errors)."""
    b, n, k = _reference_curve_inputs(is_error, budgets, "oracle_budget_curve")
    return _curve(np.minimum(b, k).astype(float), b, n, k)


# ----------------------------------------------------------------------------------------------
# what is left: residual errors among unreviewed items


@dataclass(frozen=True)
class ResidualErrorEstimate:
    """How many of the unreviewed machine labels are wrong, with a confidence interval."""

    #: estimated number of wrong machine labels among unreviewed items: the design-unbiased T_hat,
    #: not clipped (it can fall below 0 by chance when few errors are left; the interval never
    #: does).  NaN if not identifiable.
    estimate: float
    lower: float
    upper: float
    std_error: float
    confidence: float
    n_unreviewed: int
    n_reviewed: int
    errors_found: int
    #: estimate of all machine errors (found + residual)
    total_errors_estimate: float
    #: sum of error_prob over unreviewed items: right only if error_prob is calibrated
    model_estimate: float
    identifiable: bool
    note: str
    #: T_hat (the same as ``estimate`` since the estimate is no longer clipped)
    raw_estimate: float = float("nan")
    #: the lam used in T_hat (power tuning, see ``lam="auto"``)
    lam: float = 1.0
    #: reviews counted as found errors but kept out of the Horvitz-Thompson part (never selected)
    n_out_of_design: int = 0
    #: uniform reviews of unreviewed items (one new round) that would about halve the interval
    uniform_reviews_to_halve: int | None = None

    @property
    def rate(self) -> float:
        """Estimated error rate among the unreviewed items."""
        return self.estimate / self.n_unreviewed if self.n_unreviewed else float("nan")


def _cross_fitted_platt(
    e: np.ndarray, y: np.ndarray, design: np.ndarray, pi: np.ndarray, seed: int
) -> np.ndarray:
    """Platt-recalibrated e: 2-fold cross-fitted on the design's reviews, full fit elsewhere."""
    idx = np.flatnonzero(design)
    w = 1.0 / pi[idx]
    out = PlattCalibrator().fit(e[idx], y[idx].astype(bool), w).predict(e)
    fold = np.random.default_rng(seed).permutation(idx.size) % 2
    for k in (0, 1):
        train, test = idx[fold != k], idx[fold == k]
        yt = y[train].astype(bool)
        if test.size and yt.any() and not yt.all():
            cal = PlattCalibrator().fit(e[train], yt, w[fold != k])
            out[test] = cal.predict(e[test])
    return np.clip(out, 0.0, 1.0)


def tuned_lambda(
    is_error: np.ndarray, reviewed: np.ndarray, review_prob: np.ndarray, error_prob: np.ndarray
) -> float:
    """Power tuning for the residual estimate: lam* = sum c y e / sum c e^2, c = (1 - pi)/pi.

    It minimises the variance sum_i c_i (y_i - lam e_i)^2 of T_hat; both sums are estimated by
    Horvitz-Thompson over the reviewed items (weight 1/pi) and lam* is clipped to [0, 1].  A critic
    that overstates the error rate gets lam* < 1 (it is shrunk, as calibration would); a useless
    one lam* near 0 (T_hat becomes the plain Horvitz-Thompson count).
    """
    d = np.asarray(reviewed, dtype=bool)
    pi, e = np.asarray(review_prob, dtype=float)[d], np.asarray(error_prob, dtype=float)[d]
    y = np.asarray(is_error, dtype=float)
    y = y[d] if y.shape == d.shape else y
    keep = pi < 1.0
    if not keep.any():
        return 1.0
    w = (1.0 - pi[keep]) / pi[keep] ** 2
    den = float((w * e[keep] ** 2).sum())
    return 1.0 if den <= 0 else float(np.clip((w * y[keep] * e[keep]).sum() / den, 0.0, 1.0))


def _few_errors_note(errors: int, items: int) -> str:
    """The warning when the low-pi reviews, which stand for the unreviewed items, hold few errors."""
    if errors >= 5:
        return ""
    return (
        f"; only {errors} errors among the {items} items reviewed with review_prob < 0.5, which stand"
        " for the unreviewed ones: the interval is rough, raise the uniform share or the budget"
    )


def _pseudo_count_variance(p_star: float, e_bar: float, lam: float, z: float) -> float:
    """The adjusted interval's Agresti-Coull-style term: z^2/2 pseudo-errors and z^2/2 pseudo-correct
    items drawn at p*, (z^2/2) (1 - p*)/p*^2 [(1 - lam e_bar)^2 + (lam e_bar)^2]; 0 at p* = 1."""
    if p_star >= 1.0:
        return 0.0
    return z * z / 2.0 * (1.0 - p_star) / p_star**2 * ((1.0 - lam * e_bar) ** 2 + (lam * e_bar) ** 2)


def _calibrated_sq_error(e: np.ndarray, lam: float) -> np.ndarray:
    """E(y - lam e)^2 when y ~ Bernoulli(e): e - 2 lam e^2 + lam^2 e^2."""
    return e - 2.0 * lam * e**2 + (lam * e) ** 2


def residual_error_estimate(
    is_error: np.ndarray,
    reviewed: np.ndarray,
    review_prob: np.ndarray,
    error_prob: np.ndarray,
    *,
    confidence: float = 0.95,
    lam: float | Literal["auto"] = 1.0,
    interval: Literal["adjusted", "wald"] = "adjusted",
    out_of_design: np.ndarray | None = None,
    calibrate: bool = False,
    seed: int = 0,
) -> ResidualErrorEstimate:
    """Prediction-powered estimate of the number of wrong labels among the unreviewed items.

    With y_i = 1 if machine label i is wrong (known where d_i = 1), e_i the critic's error
    probability (the prediction) and pi_i the review probability (the design):

        Y_hat  = lam * sum_i e_i + sum_i d_i (y_i - lam e_i) / pi_i        (all errors, unbiased)
        T_hat  = Y_hat - sum_i d_i y_i
               = lam * sum_{unreviewed} e_i + sum_{reviewed} [ (y_i - lam e_i)(1/pi_i - 1) + (1 - lam) e_i ]

    E[T_hat - T] = E[Y_hat - Y] = 0 where T = sum_i (1 - d_i) y_i, whatever the rule, provided
    every unreviewed item had pi_i > 0.  The error T_hat - T equals Y_hat - Y, whose variance
    under Poisson sampling is sum_i (1 - pi_i)/pi_i (y_i - lam e_i)^2, estimated unbiasedly by

        V_hat = sum_i d_i (1 - pi_i) / pi_i^2 (y_i - lam e_i)^2

    (for the pivotal design of actlabel.select the design variance is at most the Poisson one).
    ``estimate`` is T_hat itself, unclipped: clipping at 0 biased it upward by 12-120% under
    threshold + a small uniform share (docs/statistics.md section 5).

    Intervals T_hat -+ z sqrt(V), clipped to [0, N_unreviewed]: ``interval="wald"``: V = V_hat;
    ``interval="adjusted"`` (default):

        V = max( V_hat + (z^2/2) (1 - p*)/p*^2 [(1 - lam e_bar)^2 + (lam e_bar)^2],
                 sum_i (1 - pi_i)/pi_i (e_i - 2 lam e_i^2 + lam^2 e_i^2) )

    where p* and e_bar are the means of pi and e over the unreviewed items: Agresti-Coull-style
    pseudo-counts, and the design variance if e were calibrated (V_hat is small exactly when the
    sample missed the rare, heavily weighted errors).  Its half-width is 0.9-1.2 times 1.96 times
    the estimator's true standard deviation in bench/bench_residual_coverage.py: the interval is
    about as narrow as T_hat allows, so a narrower one needs a better prediction (``calibrate``)
    or more uniform reviews (``uniform_reviews_to_halve``).

    ``calibrate=True`` replaces e by a Platt recalibration fitted on the design's reviews
    (weights 1/pi), cross-fitted: each reviewed item's e comes from a fit on the other half of the
    reviews, so its own label never enters its prediction; unreviewed items use the fit on all of
    them.  A pessimistic or overconfident critic then becomes a sharper control variate and the
    calibrated-critic variance floor stops overstating the variance.  The estimate is unbiased up
    to the O(1/n) effect of two fitted parameters.

    ``lam="auto"`` picks lam by :func:`tuned_lambda` (power tuning; the estimate is then unbiased
    only asymptotically, as in PPI++).

    ``out_of_design`` marks reviewed items that the design never selected (imported from Label
    Studio / Argilla, or reviewed outside the queue): their human label is known, so they count as
    found errors and leave the unreviewed set, but they stay out of the Horvitz-Thompson part (they
    enter Y_hat as if unsampled).  Then E[T_hat] = E[T] exactly whenever the outside reviews were
    chosen independently of the design's random draw, however they depend on the labels.

    ``is_error`` has length N (values where not reviewed are ignored, NaN/-1 allowed) or one entry
    per reviewed item, in item order.  If some unreviewed item has pi_i = 0 (threshold rule with no
    uniform share) the number is not identifiable from the reviews: the result has
    ``identifiable=False``, a NaN estimate, the trivial interval [0, N_unreviewed] and a note.
    Reviews must be complete: an item selected but skipped by the reviewer counts as unreviewed,
    which is only valid if skipping is unrelated to the label being wrong.
    """
    e = prob_array(error_prob, "error_prob")
    n = e.size
    d = bool_array(reviewed, "reviewed", n)
    pi = prob_array(review_prob, "review_prob")
    if pi.size != n:
        raise ValueError(f"review_prob must have length {n}, got {pi.size}")
    if interval not in ("adjusted", "wald"):
        raise ValueError(f"interval must be 'adjusted' or 'wald', got {interval!r}")
    z = two_sided_z(confidence)
    raw = np.asarray(is_error, dtype=float)
    n_rev = int(d.sum())
    if raw.shape == (n,):
        y_rev = raw[d]
    elif raw.shape == (n_rev,):
        y_rev = raw
    else:
        raise ValueError(
            f"is_error must have length {n} (all items) or {n_rev} (reviewed items), got {raw.shape}"
        )
    ok = np.isin(y_rev, (0.0, 1.0))
    if not ok.all():
        i = int(np.flatnonzero(d)[np.flatnonzero(~ok)[0]])
        raise ValueError(f"is_error must be 0/1 on reviewed items; got {y_rev[~ok][0].item()!r} at item {i}")
    ood = np.zeros(n, dtype=bool) if out_of_design is None else bool_array(out_of_design, "out_of_design", n)
    ood &= d
    pi = pi.copy()
    # an outside review of an item the design could never draw (pi = 0): the HT sample cannot stand
    # for it, so it stands for itself (pi = 1, exact)
    exact = ood & (pi <= 0)
    pi[exact] = 1.0
    ood &= ~exact
    design = d & ~ood  # reviews the design drew: the Horvitz-Thompson sample
    bad = design & (pi <= 0)
    if bad.any():
        raise ValueError(f"item {int(np.flatnonzero(bad)[0])} is reviewed but has review_prob 0")
    y_full = np.zeros(n)
    y_full[d] = y_rev
    if calibrate and int(design.sum()) >= 4 and 0 < int(y_full[design].sum()) < int(design.sum()):
        e = _cross_fitted_platt(e, y_full, design, pi, seed)
    if lam == "auto":
        lam = tuned_lambda(y_full, design, pi, e)
    lam = float(lam)
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    unrev = ~d
    n_u = int(unrev.sum())
    found = int(y_rev.sum())
    model = float(e[unrev].sum())
    if (unrev & (pi <= 0)).any():
        k = int((unrev & (pi <= 0)).sum())
        return ResidualErrorEstimate(
            estimate=float("nan"),
            lower=0.0,
            upper=float(n_u),
            std_error=float("nan"),
            confidence=float(confidence),
            n_unreviewed=n_u,
            n_reviewed=n_rev,
            errors_found=found,
            total_errors_estimate=float("nan"),
            model_estimate=model,
            identifiable=False,
            note=(
                f"not identifiable: {k} unreviewed items could never have been reviewed (review_prob 0); "
                "select with a uniform share (e.g. --uniform 0.05) to estimate the errors left"
            ),
            lam=lam,
            n_out_of_design=int(ood.sum()),
        )
    p_r, e_r, y_r = pi[design], e[design], y_full[design]
    resid = y_r - lam * e_r
    y_hat = lam * float(e.sum()) + float((resid / p_r).sum())
    t_hat = y_hat - found
    v_hat = float(((1.0 - p_r) / p_r**2 * resid**2).sum())
    # population weights c_i = (1 - pi)/pi of the design variance; out-of-design items with
    # pi = 0 were never drawable and add nothing
    pos = pi > 0
    c = np.where(pos, (1.0 - pi) / np.where(pos, pi, 1.0), 0.0)
    var = v_hat
    if interval == "adjusted" and n_u > 0:
        # (1) Agresti-Coull-style pseudo-counts at the mean pi of the unreviewed items;
        # (2) never less than the design variance a calibrated critic implies.
        p_star = float(pi[unrev].mean())
        e_bar = float(e[unrev].mean())
        var += _pseudo_count_variance(p_star, e_bar, lam, z)
        g = _calibrated_sq_error(e[pos], lam)
        var = max(var, float((c[pos] * g).sum()))
    low = p_r < 0.5
    return _identified_estimate(
        f"prediction-powered Horvitz-Thompson estimate, {interval} interval",
        t_hat=t_hat,
        var=var,
        z=z,
        confidence=confidence,
        e_unrev=e[unrev],
        n_reviewed=n_rev,
        found=found,
        lam=lam,
        n_out_of_design=int(ood.sum()),
        errors_low=int(y_r[low].sum()),
        sampled_low=int(low.sum()),
        adjusted=interval == "adjusted",
    )


@dataclass(frozen=True)
class ReviewRound:
    """One selection round as the residual estimate needs it (docs/statistics.md section 5a).

    ``population``: the items the round could draw (not drawn by an earlier round); ``drawn``:
    the ones it drew; ``prob``: each population item's probability of being drawn in this round
    given everything before (the round's own inclusion probability, not the cumulative one)."""

    population: np.ndarray
    drawn: np.ndarray
    prob: np.ndarray


def _predicted_variance(e: np.ndarray, pi: np.ndarray, unreviewed: np.ndarray, lam: float, z: float) -> float:
    """One round's variance as its design alone predicts it: sum (1 - pi)/pi E(y - lam e)^2 at a
    calibrated e, plus the adjusted interval's pseudo-count term at the unreviewed items' mean pi.

    Neither depends on which items the draw hit, so weights built from them do not favour the
    rounds whose sample happened to miss the errors (their V_hat is small too)."""
    pos = pi > 0
    c = (1.0 - pi[pos]) / pi[pos]
    var = float((c * _calibrated_sq_error(e[pos], lam)).sum())
    if unreviewed.any():
        p_star, e_bar = float(pi[unreviewed].mean()), float(e[unreviewed].mean())
        if p_star > 0.0:
            var += _pseudo_count_variance(p_star, e_bar, lam, z)
    return var


def residual_error_estimate_over_rounds(
    is_error: np.ndarray,
    reviewed: np.ndarray,
    error_prob: np.ndarray,
    rounds: list[ReviewRound],
    *,
    confidence: float = 0.95,
    lam: float | Literal["auto"] = 1.0,
    interval: Literal["adjusted", "wald"] = "adjusted",
    calibrate: bool = False,
    seed: int = 0,
) -> ResidualErrorEstimate:
    """The residual estimate from every round's draw, not only the last one's.

    Round r drew S_r from the items U_{r-1} no earlier round drew, with probabilities p_{r,i}.
    Its own estimate, :func:`residual_error_estimate` on U_{r-1} with the reviews of later rounds
    (and outside ones) counted as found but not reweighted,

        T_r = lam sum_{U_{r-1}} e + sum_{S_r} (y - lam e)/p_r - (errors found in U_{r-1}),

    has T_r - T = Y_hat_r - Y(U_{r-1}), which has mean 0 given the history before round r: every
    round is an unbiased estimate of the same T, and the errors of different rounds are
    uncorrelated (martingale differences).  The combination T = sum_r w_r T_r with weights
    w_r proportional to 1 / (round r's design variance at a calibrated e) has variance
    sum_r w_r^2 V_r, V_r each round's own (adjusted) variance.  The sequential weights of the ACT
    loss use the last round alone, where a threshold round's uniform share is a few items drawn
    at p ~ 0.004 (5% of a 45-item round over 500 items); the uniform pilot, 30 items at p = 0.05,
    then carries most of the information and the interval shrinks several-fold (docs/benchmarks.md).

    Rounds whose draw left some unreviewed item at p = 0 cannot estimate T and are skipped; with
    none left the result is :func:`residual_error_estimate` on the last round (not identifiable).
    """
    e = prob_array(error_prob, "error_prob")
    n = e.size
    d = bool_array(reviewed, "reviewed", n)
    y = np.asarray(is_error, dtype=float)
    if y.shape != (n,):
        raise ValueError(f"is_error must have length {n} (all items), got {y.shape}")
    if not rounds:
        raise ValueError("residual_error_estimate_over_rounds needs at least one round")
    z = two_sided_z(confidence)
    per_round: list[tuple[ResidualErrorEstimate, float]] = []
    drawn_any = np.zeros(n, dtype=bool)
    sampled_low = errors_low = 0  # reviews at p < 0.5 in the rounds used, and the errors among them
    last = None
    for r in rounds:
        pop = bool_array(r.population, "population", n)
        drawn = bool_array(r.drawn, "drawn", n) & pop
        drawn_any |= drawn
        prob = np.asarray(r.prob, dtype=float)
        if prob.shape != (n,):
            raise ValueError(f"a round's prob must have length {n}, got {prob.shape}")
        pi = np.where(pop, np.nan_to_num(prob, nan=0.0), 0.0)
        # a population item with p = 0 that a later round reviewed: exactly known, it stands for itself
        pi = np.where(pop & d & ~drawn & (pi <= 0), 1.0, pi)
        est = residual_error_estimate(
            y[pop], d[pop], np.clip(pi[pop], 0.0, 1.0), e[pop],
            confidence=confidence, lam=lam, interval=interval, out_of_design=(d & ~drawn)[pop],
            calibrate=calibrate, seed=seed,
        )  # fmt: skip
        last = est
        if est.identifiable:
            low = drawn & d & (pi < 0.5)
            sampled_low += int(low.sum())
            errors_low += int((y[low] == 1).sum())
            per_round.append((est, _predicted_variance(e[pop], pi[pop], ~d[pop], est.lam, z)))
    assert last is not None
    if not per_round:
        return last
    exact = [i for i, (_, v) in enumerate(per_round) if v <= 0.0]
    if exact:  # a round that drew every item it could: its estimate is exact
        w = np.zeros(len(per_round))
        w[exact[0]] = 1.0
    else:
        w = np.array([1.0 / v for _, v in per_round])
        w /= w.sum()
    t_hat = float(sum(wi * est.estimate for wi, (est, _) in zip(w, per_round, strict=True)))
    var = float(sum(wi**2 * est.std_error**2 for wi, (est, _) in zip(w, per_round, strict=True)))
    main = per_round[int(np.argmax(w))][0]
    shares = ", ".join(f"{wi:.0%}" for wi in w)
    return _identified_estimate(
        f"prediction-powered Horvitz-Thompson estimate over {len(per_round)} rounds (weights {shares}), "
        f"{interval} interval",
        t_hat=t_hat,
        var=var,
        z=z,
        confidence=confidence,
        e_unrev=e[~d],
        n_reviewed=int(d.sum()),
        found=int(y[d].sum()),
        lam=main.lam,
        n_out_of_design=int((d & ~drawn_any).sum()),
        errors_low=errors_low,
        sampled_low=sampled_low,
        adjusted=interval == "adjusted",
        combined=True,
    )


def _identified_estimate(
    note: str,
    *,
    t_hat: float,
    var: float,
    z: float,
    confidence: float,
    e_unrev: np.ndarray,
    n_reviewed: int,
    found: int,
    lam: float,
    n_out_of_design: int,
    errors_low: int,
    sampled_low: int,
    adjusted: bool,
    combined: bool = False,
) -> ResidualErrorEstimate:
    """An identifiable estimate: its interval t_hat +- z sqrt(var) clipped to [0, unreviewed items],
    the note's common tail (lam, reviews outside the selection, few errors among the draws with
    review_prob < 0.5) and how many uniform reviews would halve the interval."""
    n_u = int(e_unrev.size)
    se = math.sqrt(var)
    if lam != 1.0:
        note += f", lam {lam:.2f}"
    if n_out_of_design:
        note += f"; {n_out_of_design} reviews outside the selection counted as found, not reweighted"
    note += _few_errors_note(errors_low, sampled_low)
    return ResidualErrorEstimate(
        estimate=t_hat,
        lower=min(max(t_hat - z * se, 0.0), float(n_u)),
        upper=min(max(t_hat + z * se, 0.0), float(n_u)),
        std_error=se,
        confidence=float(confidence),
        n_unreviewed=n_u,
        n_reviewed=n_reviewed,
        errors_found=found,
        total_errors_estimate=t_hat + found,
        model_estimate=float(e_unrev.sum()),
        identifiable=True,
        note=note,
        raw_estimate=t_hat,
        lam=lam,
        n_out_of_design=n_out_of_design,
        uniform_reviews_to_halve=_reviews_to_halve(
            var,
            float(_calibrated_sq_error(e_unrev, lam).sum()),
            n_u,
            z,
            float(e_unrev.mean()) if n_u else 0.0,
            lam,
            adjusted,
            combined=combined,
        ),
    )


def _reviews_to_halve(
    var_now: float,
    g: float,
    n_u: int,
    z: float,
    e_bar: float,
    lam: float,
    adjusted: bool,
    *,
    combined: bool = False,
) -> int | None:
    """Smallest m whose new uniform round has V(m) <= var_now / 4 (None: nothing to halve); with
    ``combined`` the new round joins the earlier ones (inverse-variance weights) instead of
    replacing them, so V(m) <= var_now / 3 is enough: 1 / (1/V + 1/V(m)) <= V / 4.

    V(m) = (N_u/m - 1) G (Horvitz-Thompson over the new round alone, G = sum_{unreviewed}
    E(y - lam e)^2 at the current e), plus, for the adjusted interval, its pseudo-count term at
    p = m / N_u: (z^2/2) (1 - p)/p^2 [(1 - lam e_bar)^2 + (lam e_bar)^2].
    """
    if n_u == 0 or var_now <= 0:
        return None

    def v(m: int) -> float:
        p = m / n_u
        return (1.0 / p - 1.0) * g + (_pseudo_count_variance(p, e_bar, lam, z) if adjusted else 0.0)

    target = var_now / (3.0 if combined else 4.0)
    if v(n_u) > target:
        return n_u
    lo, hi = 0, n_u  # v decreases in m: v(hi) <= target < v(lo) (v(0) = inf)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def uniform_reviews_to_halve_width(estimate: ResidualErrorEstimate) -> int | None:
    """How many more uniform reviews would about halve the residual-error interval.

    A new round of m reviews drawn uniformly from the N_u unreviewed items replaces the current
    Horvitz-Thompson sample (sequential weights, docs/statistics.md section 4); its variance is
    (N_u/m - 1) G with G = sum_{unreviewed} E(y_i - lam e_i)^2 at the current e, plus the adjusted
    interval's pseudo-count term at p = m/N_u.  The half-width scales with the standard error, so
    halving it needs a quarter of the variance: the smallest such m (N_u if even reviewing
    everything would not).  None when there is nothing to halve.
    """
    return estimate.uniform_reviews_to_halve


def downstream_gap(acc_act: float, acc_human: float) -> float:
    """acc_human - acc_act: test accuracy lost by training with ACT instead of full human labels.

    Positive when ACT is worse (the paper reports under 2 points on 5 of 6 datasets).
    """
    for name, v in (("acc_act", acc_act), ("acc_human", acc_human)):
        if not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0) or isinstance(v, bool):
            raise ValueError(f"{name} must be an accuracy in [0, 1], got {v!r}")
    return float(acc_human) - float(acc_act)


# ----------------------------------------------------------------------------------------------
# multi-label agreement (multilabel.py stores the sets; these take 0/1 matrices)


@dataclass(frozen=True)
class SetAgreement:
    """Agreement of predicted label sets with reference sets over n items and L labels.

    exact_match: share of items whose whole set is right; hamming: share of (item, label)
    decisions that are wrong; f1[l]: F1 of label l (NaN where label l is in neither set anywhere);
    micro_f1 / macro_f1 over labels (macro skips NaN)."""

    n: int
    exact_match: float
    hamming: float
    f1: list[float]
    micro_f1: float
    macro_f1: float


def set_agreement(predicted: np.ndarray, reference: np.ndarray) -> SetAgreement:
    """Exact-set match, Hamming loss and per-label F1 = 2 TP / (2 TP + FP + FN)."""
    p = np.asarray(predicted, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if p.shape != r.shape or p.ndim != 2:
        raise ValueError(f"predicted and reference must be (n, L) of one shape, got {p.shape} and {r.shape}")
    n = p.shape[0]
    if n == 0:
        nan = float("nan")
        return SetAgreement(0, nan, nan, [nan] * p.shape[1], nan, nan)
    tp = (p & r).sum(axis=0)
    wrong = (p ^ r).sum(axis=0)
    denom = 2 * tp + wrong
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    micro_denom = 2 * tp.sum() + wrong.sum()
    return SetAgreement(
        n=n,
        exact_match=float((p == r).all(axis=1).mean()),
        hamming=float((p ^ r).mean()),
        f1=[float(v) for v in f1],
        micro_f1=float(2 * tp.sum() / micro_denom) if micro_denom else float("nan"),
        macro_f1=float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
    )


def per_label_auroc(label_error_probs: np.ndarray, label_wrong: np.ndarray) -> list[float | None]:
    """AUROC of each label's error probability against whether that label's decision was wrong
    (None where a label's decisions are all right or all wrong: AUROC is undefined)."""
    e = np.asarray(label_error_probs, dtype=float)
    y = np.asarray(label_wrong, dtype=bool)
    out: list[float | None] = []
    for j in range(e.shape[1]):
        yj = y[:, j]
        out.append(float(error_detection_auroc(e[:, j], yj)) if 0 < yj.sum() < yj.size else None)
    return out
