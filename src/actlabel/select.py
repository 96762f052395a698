"""Stage 3 of ACT: choose which machine labels a human reviews, under a hard budget.

Every function here is pure (arrays in, arrays out, no I/O) and takes an explicit seed.
The math, with derivations, is in ``docs/statistics.md``; the short version:

* A *rule* turns the critic's error probabilities ``e`` and a budget ``B`` into inclusion
  probabilities ``pi`` with ``sum(pi) = B``:

  - ``threshold``:   pi_i = 1 for the B items with the largest e_i (ties broken at random by the
    seed), else 0.  tau = the B-th largest e_i.
  - ``exponential``: pi_i = 1 / (1 + exp(-beta * (e_i - alpha))), alpha solved (Newton, bisection fallback) so
    that sum_i pi_i = B.
  - ``normalized``:  pi_i = min(1, c * e_i), c chosen so that sum_i pi_i = B (mass clipped at 1 is
    redistributed to the other items until nothing more is clipped).

* A uniform share ``u`` in [0, 1) is mixed in: pi_i = (1 - u) * pi_rule_i + u * B / N.  With
  u > 0 every item has pi_i > 0, which is what makes the ACT loss unbiased and the residual-error
  estimate (``metrics.residual_error_estimate``) identifiable.

* The reviewed indicators d are drawn by the *pivotal method over a random permutation*
  (Deville and Tille 1998): a fixed-size design whose first-order inclusion probabilities are
  exactly pi_i, which never selects more than B items (the budget is hard), and whose variance
  for Horvitz-Thompson sums is at most the Poisson formula.  Systematic sampling over a random
  permutation (``design="systematic"``, the default before) has the same pi but, under threshold +
  a small uniform share, a sample count in the low-probability part 6x as variable as Poisson
  (docs/statistics.md section 2).

* ``select_round`` adds a round of review among items not yet reviewed; the returned
  ``review_prob`` is the sequential Horvitz-Thompson probability (1 for items reviewed in earlier
  rounds, the round's conditional probability for the others), which keeps the ACT loss unbiased
  even though the new round depends on what earlier rounds found.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from actlabel.logistic import sigmoid, two_sided_z
from actlabel.validate import bool_array, prob_array

Rule = Literal["threshold", "exponential", "normalized"]
Design = Literal["pivotal", "systematic"]
DESIGNS: tuple[str, ...] = ("pivotal", "systematic")
RULES: tuple[str, ...] = ("threshold", "exponential", "normalized")

#: Default slope of the exponential rule on the probability scale.  With beta = 20 an item 0.15
#: above alpha is chosen with probability 0.95 and one 0.15 below with 0.05: close to the
#: threshold rule (which the paper found best) but smooth, so near-threshold items keep a chance.
DEFAULT_BETA = 20.0
#: fractional units per step of the pivotal sampler's Python loop
PIVOTAL_CHUNK = 65536

SeedLike = int | np.random.Generator | None


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of a selection: who is reviewed, and with which probability.

    ``selected[i]`` is d_i (chosen for human review, cumulative over rounds) and ``review_prob[i]``
    is the pi_i to put in the ACT loss weight d_i / pi_i, exactly as used by the sampler.
    """

    selected: np.ndarray
    review_prob: np.ndarray
    rule: str
    budget: int
    uniform: float
    seed: int | None
    #: Items chosen by *this* call (equals ``selected`` for a single-round selection).
    newly_selected: np.ndarray = field(repr=False)
    #: threshold rule: tau, the B-th largest error probability among the candidates.
    threshold: float | None = None
    #: exponential rule: the solved location alpha and the slope beta.
    alpha: float | None = None
    beta: float | None = None
    #: normalized rule: the final multiplier c in pi = min(1, c * e).
    scale: float | None = None
    #: 0 for a single selection; for ``select_round`` the number of items reviewed before this round.
    n_previously_reviewed: int = 0

    @property
    def n_selected(self) -> int:
        """Number of items chosen by this call (never more than ``budget``)."""
        return int(self.newly_selected.sum())


@dataclass(frozen=True)
class BudgetRecommendation:
    """Budget advice from a uniform pilot: see :func:`recommend_budget`."""

    error_rate: float
    lower: float
    upper: float
    confidence: float
    pilot_errors: int
    pilot_size: int
    n_items: int
    #: items outside the pilot, the ones the budget is for
    n_remaining: int
    #: N_remaining * error_rate: the expected number of machine errors left after the pilot
    expected_errors: float
    #: ceil(N_remaining * upper): the recommended number of reviews
    budget: int
    explanation: str


# ----------------------------------------------------------------------------------------------
# validation helpers (one-line messages that name the problem)


def _check_budget(budget: int, n: int, what: str = "items") -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        else:
            raise ValueError(f"budget must be a whole number of items, got {budget!r}")
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} {what}")
    return budget


def _check_uniform(uniform: float) -> float:
    u = float(uniform)
    if not (0.0 <= u < 1.0):
        raise ValueError(f"uniform share must be in [0, 1), got {uniform!r}")
    return u


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _seed_value(seed: SeedLike) -> int | None:
    return int(seed) if isinstance(seed, int | np.integer) else None


# ----------------------------------------------------------------------------------------------
# rules: error probabilities -> inclusion probabilities


def _threshold_probs(e: np.ndarray, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """pi_i = 1 for the top-B items by e (random tie-break), else 0; returns (pi, tau)."""
    n = e.size
    pi = np.zeros(n)
    if budget == 0:
        return pi, None
    # Sort by (-e, random key): a random permutation first, then a stable sort, so that items
    # tied on e at the boundary are taken in random order.  Given this tie-break the selected
    # set is fixed, so pi in {0, 1} is the exact conditional inclusion probability; the
    # tie-break is an auxiliary randomisation and unbiasedness conditional on it implies
    # unbiasedness overall.
    perm = rng.permutation(n)
    # That order's top B without sorting all N: tau is the B-th largest e, every item above it is
    # in, and the tied ones are taken in permutation order (what the stable sort did). A sort of N
    # held three more arrays of N; this holds masks of a byte an item and a partitioned copy.
    tau = float(np.partition(e, n - budget)[n - budget])
    above = e > tau
    pi[above] = 1.0
    ties = np.flatnonzero((e == tau)[perm])[: budget - int(above.sum())]
    pi[perm[ties]] = 1.0
    return pi, tau


def _exponential_probs(e: np.ndarray, budget: int, beta: float) -> tuple[np.ndarray, float]:
    """pi_i = sigmoid(beta * (e_i - alpha)) with sum pi = B; alpha by safeguarded Newton."""
    n = e.size
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    if budget == 0:
        return np.zeros(n), math.inf
    if budget == n:
        return np.ones(n), -math.inf
    # S(alpha) = sum_i sigmoid(beta (e_i - alpha)) decreases strictly from N to 0; bracket it
    # wide enough that the sigmoid saturates (exp(-60) ~ 1e-26) at both ends, then safeguarded
    # Newton (S'(alpha) = -beta sum pi (1 - pi)): a few passes over the data instead of ~50
    # bisection steps, falling back to bisection whenever Newton leaves the bracket.
    lo = float(e.min()) - 60.0 / beta
    hi = float(e.max()) + 60.0 / beta
    alpha = float(np.sort(e)[n - budget])  # the threshold rule's tau: a good first guess
    for _ in range(200):
        pi = sigmoid(beta * (e - alpha))
        total = float(pi.sum())
        if total > budget:
            lo = alpha
        else:
            hi = alpha
            if budget - total < 1e-9:
                # S(alpha) <= B, within 1e-9 items: the sampler never has more than B points
                return pi, alpha
        slope = beta * float((pi * (1.0 - pi)).sum())
        step = alpha + (total - budget) / slope if slope > 0 else math.nan
        alpha = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-13 * max(1.0, abs(hi)):
            break
    return sigmoid(beta * (e - hi)), hi


def _normalized_probs(e: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """pi_i = min(1, c e_i) with sum pi = B, redistributing clipped mass; returns (pi, c)."""
    n = e.size
    pi = np.zeros(n)
    if budget == 0:
        return pi, 0.0
    capped = np.zeros(n, dtype=bool)
    while True:
        free = ~capped
        left = budget - int(capped.sum())
        if left == 0:
            pi[capped] = 1.0
            return pi, math.inf if capped.all() else 1.0 / float(e[capped].min())
        mass = float(e[free].sum())
        if mass <= 0.0:
            # The remaining items all have e = 0: nothing ranks them, so spread the leftover
            # budget evenly over them (the rule is otherwise undefined there).
            pi[free] = left / int(free.sum())
            pi[capped] = 1.0
            return pi, math.inf
        c = left / mass
        newly = free & (c * e >= 1.0)
        if not newly.any():
            pi[free] = c * e[free]
            pi[capped] = 1.0
            return pi, c
        capped |= newly


def inclusion_probabilities(
    error_prob: np.ndarray,
    budget: int,
    *,
    rule: Rule = "threshold",
    uniform: float = 0.0,
    beta: float = DEFAULT_BETA,
    seed: SeedLike = 0,
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Inclusion probabilities pi of a rule, with the uniform share mixed in.

    pi_i = (1 - u) * pi_rule_i + u * B / N, so sum_i pi_i = B and, for u > 0, pi_i >= u B / N > 0.
    ``seed`` only matters for the threshold rule (random tie-break at the boundary).
    Returns ``(pi, params)`` where params holds ``threshold`` / ``alpha`` / ``beta`` / ``scale``.
    """
    e = prob_array(error_prob, "error_prob")
    n = e.size
    budget = _check_budget(budget, n)
    u = _check_uniform(uniform)
    params: dict[str, float | None] = {"threshold": None, "alpha": None, "beta": None, "scale": None}
    if rule == "threshold":
        pi_rule, params["threshold"] = _threshold_probs(e, budget, _rng(seed))
    elif rule == "exponential":
        pi_rule, params["alpha"] = _exponential_probs(e, budget, float(beta))
        params["beta"] = float(beta)
    elif rule == "normalized":
        pi_rule, params["scale"] = _normalized_probs(e, budget)
    else:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(RULES)}")
    if n == 0:
        return pi_rule, params
    # in place (pi_rule is this call's own array): the same arithmetic without two more arrays of N
    if u > 0:
        pi_rule *= 1.0 - u
        pi_rule += u * budget / n
    return np.clip(pi_rule, 0.0, 1.0, out=pi_rule), params


# ----------------------------------------------------------------------------------------------
# sampling designs: inclusion probabilities -> reviewed indicators


def sample_systematic(
    review_prob: np.ndarray, seed: SeedLike = 0, *, max_size: int | None = None
) -> np.ndarray:
    """Fixed-size sample with first-order inclusion probabilities exactly ``review_prob``.

    Systematic PPS sampling over a random permutation: put the units in random order, lay them
    end to end as intervals of length pi_i on [0, T) with T = sum pi, draw U ~ Uniform[0, 1) and
    select the units whose interval contains one of the points U, U + 1, U + 2, ... < T.
    Because every pi_i <= 1, a unit is hit at most once, and it is hit with probability exactly
    pi_i (the points are a grid of step 1 with a uniform offset).  The sample size is floor(T) or
    ceil(T); it is exactly B when T = B is a whole number, and never more than ``max_size`` (the
    hard budget; default ceil(T)).  Units with pi_i = 1 are taken with certainty and units with
    pi_i = 0 never, without relying on floating-point interval ends.  The random order makes
    every pair of units jointly selectable, but under threshold + a small uniform share the grid
    drifts slowly through runs of near-certain units, so the low-probability units hit are
    positively correlated: their count varied 6x as much as under Poisson sampling
    (docs/statistics.md section 2).  Kept for comparison; :func:`select` uses the pivotal design.
    """
    pi = prob_array(review_prob, "review_prob")
    rng = _rng(seed)
    certain = pi >= 1.0
    chosen = certain.copy()
    random_units = np.flatnonzero((pi > 0.0) & ~certain)
    total = float(pi[random_units].sum())
    cap = math.ceil(total - 1e-9) if max_size is None else max(0, int(max_size) - int(certain.sum()))
    if random_units.size and cap > 0:
        order = rng.permutation(random_units)
        ends = np.cumsum(pi[order])
        start = rng.random()
        points = start + np.arange(cap)
        points = points[points < ends[-1]]
        hit = np.searchsorted(ends, points, side="right")
        chosen[order[hit[hit < order.size]]] = True
    return chosen


def sample_pivotal(review_prob: np.ndarray, seed: SeedLike = 0, *, max_size: int | None = None) -> np.ndarray:
    """Fixed-size sample with first-order inclusion probabilities exactly ``review_prob``.

    Sequential pivotal method (Deville and Tille 1998) over a random permutation: two units with
    fractional probabilities a and b meet; if a + b < 1 one of them (chosen with probability
    proportional to its share) takes a + b and the other is dropped; otherwise one of them is
    selected and the other keeps a + b - 1 (the first is selected with probability
    (1 - b)/(2 - a - b)).  Each step keeps every unit's expected final indicator equal to its
    current probability, so P(d_i = 1) = pi_i exactly; the sample size is floor(T) or ceil(T),
    T = sum pi, and never more than ``max_size`` (default ceil(T)).  Because each step couples
    only two units and the order is random, the design is close to the maximum-entropy
    (conditional Poisson) design: Horvitz-Thompson variances at most the Poisson formula
    (docs/statistics.md section 2).  O(N) in a Python loop over the fractional units (0.3 s for
    a million items).
    """
    pi = prob_array(review_prob, "review_prob")
    rng = _rng(seed)
    chosen = pi >= 1.0
    order = rng.permutation(np.flatnonzero((pi > 0.0) & (pi < 1.0)))
    picked: list[int] = []
    a, pa = -1, 0.0
    # The loop reads Python floats (far faster than NumPy scalars) a chunk at a time: all of them
    # at once were two lists of 32 bytes an item. The draws come off the generator in the same
    # order as one call for every unit, then one for the last, so the sample is the same.
    for start in range(0, order.size, PIVOTAL_CHUNK):
        probs = pi[order[start : start + PIVOTAL_CHUNK]].tolist()
        draws = rng.random(len(probs)).tolist()
        for j, pb in enumerate(probs):
            k = start + j
            if a < 0:
                a, pa = k, pb
                continue
            total = pa + pb
            if total < 1.0:
                if draws[j] * total < pb:
                    a = k
                pa = total
            else:
                rest = total - 1.0
                if draws[j] * (2.0 - total) < 1.0 - pb:
                    picked.append(a)
                    a = k
                else:
                    picked.append(k)
                pa = rest
            if pa <= 1e-12:
                a, pa = -1, 0.0
    last_draw = float(rng.random())
    # the last fractional unit: total mass is B up to rounding, so pa is ~0 or ~1 when sum pi = B
    cap = math.ceil(float(pi[order].sum()) - 1e-9) if max_size is None else int(max_size) - int(chosen.sum())
    if a >= 0 and len(picked) < cap and last_draw < pa:
        picked.append(a)
    if picked:
        chosen[order[np.asarray(picked[: max(cap, 0)], dtype=int)]] = True
    return chosen


def _sample(pi: np.ndarray, rng: np.random.Generator, max_size: int, design: str) -> np.ndarray:
    if design == "pivotal":
        return sample_pivotal(pi, rng, max_size=max_size)
    if design == "systematic":
        return sample_systematic(pi, rng, max_size=max_size)
    raise ValueError(f"unknown sampling design {design!r}; choose one of {', '.join(DESIGNS)}")


def sample_poisson(review_prob: np.ndarray, seed: SeedLike = 0) -> np.ndarray:
    """Independent Bernoulli(pi_i) draws (Poisson sampling).

    Exact inclusion probabilities and the textbook variance formulas, but a random sample size:
    the budget is *not* hard, which is why :func:`select` uses :func:`sample_pivotal`.
    Provided for simulations and for checking variance formulas.
    """
    pi = prob_array(review_prob, "review_prob", any_shape=True)
    return _rng(seed).random(pi.shape) < pi


# ----------------------------------------------------------------------------------------------
# public selection entry points


def select(
    error_prob: np.ndarray,
    budget: int,
    *,
    rule: Rule = "threshold",
    uniform: float = 0.0,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    design: Design = "pivotal",
) -> SelectionResult:
    """Choose at most ``budget`` items for human review.

    pi = (1 - u) * pi_rule(e, B) + u * B / N (see :func:`inclusion_probabilities`), then
    d ~ the pivotal design with inclusion probabilities pi (see :func:`sample_pivotal`;
    ``design="systematic"`` for :func:`sample_systematic`): P(d_i = 1) = pi_i exactly and
    sum_i d_i <= B always.
    """
    rng = np.random.default_rng(seed)
    pi, params = inclusion_probabilities(error_prob, budget, rule=rule, uniform=uniform, beta=beta, seed=rng)
    chosen = _sample(pi, rng, int(budget), design)
    return SelectionResult(
        selected=chosen,
        review_prob=pi,
        rule=rule,
        budget=int(budget),
        uniform=float(uniform),
        seed=int(seed),
        newly_selected=chosen.copy(),
        **params,
    )


def select_round(
    error_prob: np.ndarray,
    already_reviewed: np.ndarray,
    prior_review_prob: np.ndarray | None,
    added_budget: int,
    *,
    rule: Rule = "threshold",
    uniform: float = 0.0,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    design: Design = "pivotal",
) -> SelectionResult:
    """Add a round of review: choose up to ``added_budget`` items among those not yet reviewed.

    The rule and the uniform share are applied to the R = N - (already reviewed) remaining items
    with budget B_r; ``error_prob`` may be updated since the last round (e.g. a re-calibrated or
    re-trained critic), the design may depend on anything learned so far.

    Returned ``review_prob`` (sequential Horvitz-Thompson, see docs/statistics.md):

    * 1 for items reviewed in earlier rounds: their human label is known, they stand for
      themselves;
    * p_i = P(chosen in this round | everything before), for the remaining items.

    Then for any fixed per-item quantity f, E[sum_i f_i d_i / pi_i | history] = sum_i f_i (the
    reviewed items are exact, the round's HT sum is conditionally unbiased for the remainder),
    hence unconditionally unbiased by the tower property, whatever rule produced the history.
    This needs p_i > 0 for every remaining item, i.e. ``uniform > 0`` (or the exponential rule).
    The naive pi_prev + (1 - pi_prev) * p_i is *not* an inclusion probability when this round
    depends on the previous round's outcome, and is not used.

    ``prior_review_prob`` is returned unchanged (with ``selected = already_reviewed``) when
    ``added_budget`` is 0, so that an empty round does not discard the previous round's
    weights; otherwise it is only checked for shape.
    """
    e = prob_array(error_prob, "error_prob")
    n = e.size
    reviewed = bool_array(already_reviewed, "already_reviewed", n)
    remaining = np.flatnonzero(~reviewed)
    added_budget = _check_budget(added_budget, remaining.size, "items not yet reviewed")
    prior = None
    if prior_review_prob is not None:
        prior = np.asarray(prior_review_prob, dtype=float)
        if prior.shape != (n,):
            raise ValueError(f"prior_review_prob must have shape ({n},), got {prior.shape}")
    common = {
        "rule": rule,
        "budget": added_budget,
        "uniform": float(uniform),
        "seed": int(seed),
        "n_previously_reviewed": int(reviewed.sum()),
    }
    if added_budget == 0:
        pi = prior.copy() if prior is not None else np.where(reviewed, 1.0, 0.0)
        return SelectionResult(
            selected=reviewed.copy(), review_prob=pi, newly_selected=np.zeros(n, dtype=bool), **common
        )
    rng = np.random.default_rng(seed)
    sub_pi, params = inclusion_probabilities(
        e[remaining], added_budget, rule=rule, uniform=uniform, beta=beta, seed=rng
    )
    sub_chosen = _sample(sub_pi, rng, added_budget, design)
    pi = np.ones(n)
    pi[remaining] = sub_pi
    new = np.zeros(n, dtype=bool)
    new[remaining] = sub_chosen
    return SelectionResult(selected=reviewed | new, review_prob=pi, newly_selected=new, **common, **params)


@dataclass(frozen=True)
class RoundSplitCost:
    """Variance cost of spending a budget in several rounds: see :func:`round_split_variance`."""

    budgets: tuple[int, ...]
    #: expected Var of the sequential Horvitz-Thompson correction after the last round
    variance: float
    #: the same with one round of the total budget
    single_round_variance: float
    #: variance / single_round_variance (> 1: the split costs precision; inf: not identifiable)
    ratio: float


def round_split_variance(
    error_prob: np.ndarray,
    budgets: list[int] | tuple[int, ...],
    *,
    rule: Rule = "threshold",
    uniform: float | list[float] | tuple[float, ...] = 0.05,
    beta: float = DEFAULT_BETA,
    n_sim: int = 20,
    seed: int = 0,
) -> RoundSplitCost:
    """What a round split costs in variance, if the critic ``error_prob`` were calibrated and fixed.

    With sequential Horvitz-Thompson weights (:func:`select_round`) the unreviewed remainder is
    represented only by the *last* round's sample, so the variance of the ACT correction
    sum_i d_i (y_i - e_i) / pi_i (the residual-error estimate's error, and the ACT loss's
    correction term up to the per-item losses) is, given the history,

        V = sum_{i not reviewed before the last round} (1 - p_i) / p_i * e_i (1 - e_i)

    with p_i the last round's probabilities and y_i ~ Bernoulli(e_i).  This function simulates the
    rounds (``n_sim`` times, the critic kept fixed: a critic that improves between rounds gains
    back some of this) and returns the mean V next to one round with the total budget (and the
    first round's uniform share).  A small
    last round (say u B_r = 2 uniform items) makes V large however big the earlier rounds were;
    ``uniform`` may be one share for every round or one per round.
    """
    e = prob_array(error_prob, "error_prob")
    b = [int(x) for x in budgets]
    if not b or any(x < 0 for x in b):
        raise ValueError(f"budgets must be a non-empty list of whole numbers >= 0, got {budgets!r}")
    us = [float(uniform)] * len(b) if isinstance(uniform, int | float) else [float(x) for x in uniform]
    if len(us) != len(b):
        raise ValueError(f"uniform must be one share or one per round ({len(b)}), got {len(us)}")
    g = e * (1.0 - e)

    def variance(pi: np.ndarray, before: np.ndarray) -> float:
        rest = ~before
        if (rest & (pi <= 0) & (g > 0)).any():
            return math.inf
        ok = rest & (pi > 0)
        return float(((1.0 - pi[ok]) / pi[ok] * g[ok]).sum())

    rng = np.random.default_rng(seed)
    split, single = [], []
    for _ in range(max(1, int(n_sim))):
        reviewed = np.zeros(e.size, dtype=bool)
        before = reviewed
        pi = np.zeros(e.size)
        for bud, u in zip(b, us, strict=True):
            if bud == 0:
                continue
            before = reviewed
            res = select_round(
                e, reviewed, None, bud, rule=rule, uniform=u, beta=beta, seed=int(rng.integers(2**31))
            )
            reviewed, pi = res.selected, res.review_prob
        split.append(variance(pi, before))
        one, _ = inclusion_probabilities(e, sum(b), rule=rule, uniform=us[0], beta=beta, seed=rng)
        single.append(variance(one, np.zeros(e.size, dtype=bool)))
    v, v1 = float(np.mean(split)), float(np.mean(single))
    if math.isinf(v):
        ratio = math.inf
    elif v1 > 0:
        ratio = v / v1
    else:
        ratio = math.inf if v > 0 else 1.0
    return RoundSplitCost(tuple(b), v, v1, ratio)


# ----------------------------------------------------------------------------------------------
# budgets


_PERCENT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%\s*$")
_COUNT = re.compile(r"^\s*([+-]?\d+)\s*$")


def is_auto_budget(spec: str | int | None) -> bool:
    """Whether a budget asks for a pilot first and a size learned from it (``--budget auto``)."""
    return spec is not None and str(spec).strip().lower() == "auto"


def parse_budget(spec: str | int) -> tuple[str, float]:
    """``("share", p)`` for ``"20%"``, ``("count", n)`` for ``"500"``; ValueError otherwise. The
    form alone: whether a count fits the project is budget_from_spec's question."""
    text = str(spec)
    m = _PERCENT.match(text)
    if m:
        pct = float(m.group(1))
        if pct < 0:
            raise ValueError(f"budget {text.strip()!r} is negative")
        if pct > 100:
            raise ValueError(f"budget {text.strip()!r} is more than 100% of the items")
        return "share", pct
    m = _COUNT.match(text)
    if m:
        count = int(m.group(1))
        if count < 0:
            raise ValueError(f"budget {text.strip()!r} is negative")
        return "count", count
    raise ValueError(f"budget {text.strip()!r} is not a percentage like '20%' or a whole number like '500'")


def budget_from_spec(spec: str | int, n_items: int) -> int:
    """Parse a budget: ``"20%"`` (share of the items) or ``"500"`` (a count).

    A percentage p gives round(p / 100 * N) items (half up), at least 1 when p > 0 so that a
    small positive share never silently means "review nothing".
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items < 0:
        raise ValueError(f"number of items must be a whole number >= 0, got {n_items!r}")
    if n_items == 0:
        raise ValueError("cannot set a budget: the project has no items")
    kind, value = parse_budget(spec)
    if kind == "share":
        count = math.floor(value / 100.0 * n_items + 0.5)
        return max(count, 1) if value > 0 else 0
    if value > n_items:
        raise ValueError(f"budget {int(value)} is larger than the {n_items} items")
    return int(value)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = successes / trials.
    """
    if trials <= 0:
        raise ValueError(f"trials must be > 0, got {trials}")
    if not (0 <= successes <= trials):
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    z = two_sided_z(confidence)
    p = successes / trials
    denom = 1.0 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # exact ends at 0 and n successes (the formula gives them up to rounding)
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == trials else min(1.0, center + half)
    return lower, upper


def recommend_budget(
    pilot_errors: int,
    pilot_size: int,
    n_items: int,
    confidence: float = 0.95,
    *,
    n_reviewed: int | None = None,
) -> BudgetRecommendation:
    """Recommend a review budget from a uniform pilot (paper insight 6: B near the number of errors).

    error_rate = pilot_errors / pilot_size, with a Wilson interval [lower, upper];
    budget = ceil(upper * (N - pilot_size)), capped at N - pilot_size.

    We use the *upper* end: a budget below the number of machine errors leaves errors behind even
    with a perfect critic (fixed <= B), and a real critic needs some slack above the error count to
    catch most errors, while over-budgeting costs reviews only linearly.  The pilot items are
    already reviewed, so the budget is for the other N - pilot_size items; ``n_reviewed`` (all
    items reviewed so far, pilot included, e.g. some reviewed by hand outside the queue) replaces
    pilot_size there when given.
    """
    for name, v in (("pilot_errors", pilot_errors), ("pilot_size", pilot_size), ("n_items", n_items)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    if pilot_size == 0:
        raise ValueError("pilot_size must be > 0: review a small uniform pilot first")
    if pilot_errors > pilot_size:
        raise ValueError(f"pilot_errors ({pilot_errors}) cannot exceed pilot_size ({pilot_size})")
    if pilot_size > n_items:
        raise ValueError(f"pilot_size ({pilot_size}) is larger than the {n_items} items")
    done = int(pilot_size) if n_reviewed is None else int(n_reviewed)
    if not (pilot_size <= done <= n_items):
        raise ValueError(
            f"n_reviewed ({done}) must be between pilot_size ({pilot_size}) and n_items ({n_items})"
        )
    rate = pilot_errors / pilot_size
    lower, upper = wilson_interval(int(pilot_errors), int(pilot_size), confidence)
    remaining = int(n_items) - done
    budget = min(remaining, math.ceil(upper * remaining - 1e-9))
    explanation = (
        f"pilot: {pilot_errors}/{pilot_size} machine labels wrong ({rate:.1%}, {confidence:.0%} Wilson "
        f"interval {lower:.1%}-{upper:.1%}); budget {budget} = upper end x {remaining} unreviewed items, "
        "so that even a pessimistic error rate leaves room to fix the errors"
    )
    return BudgetRecommendation(
        error_rate=rate,
        lower=lower,
        upper=upper,
        confidence=float(confidence),
        pilot_errors=int(pilot_errors),
        pilot_size=int(pilot_size),
        n_items=int(n_items),
        n_remaining=remaining,
        expected_errors=rate * remaining,
        budget=int(budget),
        explanation=explanation,
    )


def pilot_sample(n_items: int, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a uniform random pilot: ``size`` distinct items out of ``n_items``, sorted.

    Each item is in the pilot with probability size / N (simple random sampling without
    replacement), so the pilot's error rate is an unbiased estimate of the machine error rate.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items < 0:
        raise ValueError(f"n_items must be a whole number >= 0, got {n_items!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"pilot size must be a whole number >= 0, got {size!r}")
    if size > n_items:
        raise ValueError(f"pilot size {size} is larger than the {n_items} items")
    return np.sort(np.random.default_rng(seed).choice(int(n_items), size=size, replace=False))
