"""Selection rules, the hard-budget sampler, rounds, budgets and pilots (actlabel.select)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actlabel.select import (
    SelectionResult,
    budget_from_spec,
    inclusion_probabilities,
    pilot_sample,
    recommend_budget,
    sample_poisson,
    sample_systematic,
    select,
    select_round,
    wilson_interval,
)

RULES = ["threshold", "exponential", "normalized"]


def _errors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.7, 2.0, n)


# ---------------------------------------------------------------------------------------------
# rules


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("uniform", [0.0, 0.05, 0.5])
def test_probabilities_sum_to_budget_and_stay_in_unit_interval(rule: str, uniform: float) -> None:
    e = _errors(300)
    for budget in (0, 1, 17, 150, 299, 300):
        pi, _ = inclusion_probabilities(e, budget, rule=rule, uniform=uniform, seed=1)
        assert pi.min() >= 0.0 and pi.max() <= 1.0
        assert pi.sum() == pytest.approx(budget, abs=1e-8)
        if uniform > 0 and budget > 0:
            # every item keeps a chance of review: that is what the uniform share is for
            assert pi.min() >= uniform * budget / e.size - 1e-12


def test_threshold_takes_the_top_budget_and_reports_tau() -> None:
    e = np.array([0.1, 0.9, 0.4, 0.8, 0.2, 0.7])
    res = select(e, 3, rule="threshold", seed=0)
    assert res.selected.tolist() == [False, True, False, True, False, True]
    assert res.review_prob.tolist() == [0, 1, 0, 1, 0, 1]
    assert res.threshold == pytest.approx(0.7)
    assert res.n_selected == 3


def test_threshold_breaks_ties_at_random_by_seed() -> None:
    e = np.array([0.9] + [0.5] * 9)
    chosen = {tuple(np.flatnonzero(select(e, 3, seed=s).selected)) for s in range(40)}
    assert all(c[0] == 0 for c in chosen)  # the strict top item is always in
    assert len(chosen) > 10  # the two tied slots vary with the seed
    assert select(e, 3, seed=7).selected.tolist() == select(e, 3, seed=7).selected.tolist()


def test_threshold_with_uniform_share_mixes_exactly() -> None:
    e = _errors(200)
    res = select(e, 40, rule="threshold", uniform=0.1, seed=3)
    top = np.argsort(-e)[:40]
    expected = np.full(200, 0.1 * 40 / 200)
    expected[top] += 0.9
    np.testing.assert_allclose(res.review_prob, expected)


def test_exponential_solves_alpha_and_follows_the_logistic_shape() -> None:
    e = _errors(500)
    res = select(e, 60, rule="exponential", beta=15.0, seed=0)
    assert res.alpha is not None and res.beta == 15.0
    np.testing.assert_allclose(res.review_prob, 1.0 / (1.0 + np.exp(-15.0 * (e - res.alpha))), atol=1e-12)
    assert res.review_prob.sum() == pytest.approx(60, abs=1e-8)
    order = np.argsort(e)
    assert np.all(np.diff(res.review_prob[order]) >= -1e-15)  # monotone in e


def test_exponential_spans_uniform_to_threshold_as_beta_grows() -> None:
    e = _errors(200, seed=9)
    flat, _ = inclusion_probabilities(e, 30, rule="exponential", beta=1e-4)
    np.testing.assert_allclose(flat, 30 / 200, atol=1e-3)
    steep, params = inclusion_probabilities(e, 30, rule="exponential", beta=1e5)
    top = np.zeros(200)
    top[np.argsort(-e)[:30]] = 1.0
    np.testing.assert_allclose(steep, top, atol=1e-6)
    assert steep.sum() == pytest.approx(30, abs=1e-8) and params["alpha"] is not None


def test_normalized_redistributes_clipped_mass() -> None:
    # c = 2 / 1.0 caps the first item; the leftover budget 1 goes to the others: c = 1 / 0.1
    pi, params = inclusion_probabilities(np.array([0.9, 0.05, 0.05]), 2, rule="normalized")
    np.testing.assert_allclose(pi, [1.0, 0.5, 0.5])
    assert params["scale"] == pytest.approx(10.0)
    pi, _ = inclusion_probabilities(np.array([0.6, 0.3, 0.1, 0.0]), 1, rule="normalized")
    np.testing.assert_allclose(pi, [0.6, 0.3, 0.1, 0.0])


def test_normalized_spreads_leftover_budget_over_zero_error_items() -> None:
    pi, _ = inclusion_probabilities(np.array([0.5, 0.0, 0.0, 0.0]), 2, rule="normalized")
    np.testing.assert_allclose(pi, [1.0, 1 / 3, 1 / 3, 1 / 3])


# ---------------------------------------------------------------------------------------------
# the hard budget and the sampler


@pytest.mark.parametrize("rule", RULES)
def test_budget_is_hard_and_met(rule: str) -> None:
    e = _errors(250, seed=5)
    for seed in range(60):
        res = select(e, 37, rule=rule, uniform=0.05, seed=seed)
        assert res.n_selected == 37  # sum pi = B exactly: the systematic design takes exactly B
        assert res.selected.sum() <= 37


def test_systematic_sampling_has_exact_inclusion_probabilities() -> None:
    rng = np.random.default_rng(11)
    pi = rng.uniform(0.05, 0.6, 12)
    pi[3], pi[7] = 0.0, 0.0
    pi *= 4.0 / pi.sum()  # sum 5 with the certain unit below
    pi[3] = 1.0
    reps = 8000
    hits = np.zeros(pi.size)
    sizes = set()
    for s in range(reps):
        chosen = sample_systematic(pi, s)
        hits += chosen
        sizes.add(int(chosen.sum()))
    freq = hits / reps
    se = np.sqrt(pi * (1 - pi) / reps) + 1e-12
    assert np.all(np.abs(freq - pi) <= 4.5 * se + 1e-12), (freq, pi)
    assert freq[3] == 1.0 and freq[7] == 0.0
    assert sizes <= {math.floor(pi.sum()), math.ceil(pi.sum())}


def test_select_inclusion_frequencies_match_reported_review_prob() -> None:
    e = _errors(40, seed=2)
    reps = 2000
    pi_ref = select(e, 8, rule="exponential", uniform=0.2, seed=0).review_prob
    hits = np.zeros(40)
    for s in range(reps):
        res = select(e, 8, rule="exponential", uniform=0.2, seed=s)
        np.testing.assert_array_equal(res.review_prob, pi_ref)  # pi does not depend on the seed
        hits += res.selected
    se = np.sqrt(pi_ref * (1 - pi_ref) / reps)
    assert np.all(np.abs(hits / reps - pi_ref) <= 4.5 * se + 1e-9)


def test_max_size_caps_the_sample() -> None:
    pi = np.full(10, 0.55)  # sum 5.5: the unrestricted sample has 5 or 6 items
    sizes = {int(sample_systematic(pi, s, max_size=5).sum()) for s in range(200)}
    assert sizes == {5}


def test_poisson_sampling_is_bernoulli() -> None:
    pi = np.array([0.0, 0.25, 1.0])
    draws = np.array([sample_poisson(pi, s) for s in range(4000)])
    assert draws[:, 0].sum() == 0 and draws[:, 2].all()
    assert draws[:, 1].mean() == pytest.approx(0.25, abs=0.03)


# ---------------------------------------------------------------------------------------------
# rounds


def _ht_total(f: np.ndarray, res: SelectionResult) -> float:
    d = res.selected
    return float((f[d] / res.review_prob[d]).sum())


def test_round_never_reselects_and_keeps_the_budget() -> None:
    e = _errors(100)
    first = select(e, 20, uniform=0.1, seed=0)
    second = select_round(e, first.selected, first.review_prob, 15, rule="threshold", uniform=0.1, seed=1)
    assert not (second.newly_selected & first.selected).any()
    assert second.n_selected == 15
    assert (second.selected == (first.selected | second.newly_selected)).all()
    assert np.all(second.review_prob[first.selected] == 1.0)
    assert second.n_previously_reviewed == 20
    # the round's probabilities live on the remaining items and sum to the added budget
    assert second.review_prob[~first.selected].sum() == pytest.approx(15)


def test_empty_round_keeps_previous_weights() -> None:
    e = _errors(50)
    first = select(e, 10, uniform=0.2, seed=0)
    same = select_round(e, first.selected, first.review_prob, 0, seed=4)
    np.testing.assert_array_equal(same.review_prob, first.review_prob)
    np.testing.assert_array_equal(same.selected, first.selected)
    assert same.n_selected == 0


def test_adaptive_rounds_are_unbiased_by_monte_carlo() -> None:
    """Round 2 depends on what round 1 found, and the sequential HT total stays unbiased."""
    rng = np.random.default_rng(0)
    n = 80
    group = np.arange(n) % 8
    f = rng.normal(1.0, 2.0, n) + 3.0 * (group == 2)  # the quantity whose total we estimate
    is_error = (group == 2) | (rng.random(n) < 0.1)
    e1 = np.clip(0.3 + 0.4 * (rng.random(n) - 0.5), 0, 1)
    reps = 2000
    totals = np.empty(reps)
    naive = np.empty(reps)
    for r in range(reps):
        first = select(e1, 12, rule="threshold", uniform=0.3, seed=2 * r)
        # the critic "learns": groups where round 1 found errors look much more suspicious now
        bad_groups = np.unique(group[first.selected & is_error])
        e2 = np.where(np.isin(group, bad_groups), 0.95, 0.1 * e1)
        second = select_round(
            e2, first.selected, first.review_prob, 10, rule="exponential", uniform=0.2, seed=2 * r + 1
        )
        totals[r] = _ht_total(f, second)
        # the tempting "cumulative" probability, for contrast: the test must be able to fail
        pi_naive = np.where(
            first.selected,
            first.review_prob,
            first.review_prob + (1 - first.review_prob) * second.review_prob,
        )
        naive[r] = float((f[second.selected] / pi_naive[second.selected]).sum())
    mc_se = totals.std() / math.sqrt(reps)
    assert abs(totals.mean() - f.sum()) <= 4 * mc_se, (totals.mean(), f.sum(), mc_se)
    assert abs(naive.mean() - f.sum()) > 10 * naive.std() / math.sqrt(reps)


def test_naive_cumulative_probability_is_biased() -> None:
    """The example in docs/statistics.md section 4, computed exactly by enumeration.

    One wrong item; round 1 reviews it with probability 0.5; round 2 uses p = 0.9 if round 1
    found an error and 0.1 otherwise.  E[d / pi] must be 1 for an unbiased estimator.
    """
    pi1, p_found, p_not_found = 0.5, 0.9, 0.1
    # outcomes: reviewed in round 1 (prob pi1); reviewed in round 2 (round 1 found nothing)
    naive = pi1 / (pi1 + (1 - pi1) * p_found) + (1 - pi1) * p_not_found / (pi1 + (1 - pi1) * p_not_found)
    sequential = pi1 * 1.0 + (1 - pi1) * p_not_found / p_not_found  # weights of select_round
    assert naive == pytest.approx(0.617, abs=1e-3)
    assert sequential == pytest.approx(1.0)


def test_round_validation() -> None:
    e = _errors(10)
    reviewed = np.zeros(10, dtype=bool)
    reviewed[:8] = True
    with pytest.raises(ValueError, match="larger than the 2 items not yet reviewed"):
        select_round(e, reviewed, None, 3)
    with pytest.raises(ValueError, match="already_reviewed must have shape"):
        select_round(e, reviewed[:5], None, 1)


# ---------------------------------------------------------------------------------------------
# validation


def test_input_validation_messages_are_one_line_and_specific() -> None:
    with pytest.raises(ValueError, match=r"error_prob must be in \[0, 1\]; got 1.5 at index 2"):
        select(np.array([0.1, 0.2, 1.5]), 1)
    with pytest.raises(ValueError, match="at index 1"):
        select(np.array([0.1, np.nan]), 1)
    with pytest.raises(ValueError, match="budget 4 is larger than the 3 items"):
        select(np.array([0.1, 0.2, 0.3]), 4)
    with pytest.raises(ValueError, match="unknown selection rule 'top'"):
        select(np.array([0.1, 0.2]), 1, rule="top")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"uniform share must be in \[0, 1\)"):
        select(np.array([0.1, 0.2]), 1, uniform=1.0)
    with pytest.raises(ValueError, match="whole number"):
        select(np.array([0.1, 0.2]), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta must be a positive"):
        select(np.array([0.1, 0.2]), 1, rule="exponential", beta=0.0)


# ---------------------------------------------------------------------------------------------
# budgets and pilots


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [("20%", 10, 2), ("20 %", 1000, 200), ("12.5%", 8, 1), ("0.01%", 50, 1), ("0%", 50, 0), ("100%", 7, 7),
     ("500", 1000, 500), (" 3 ", 3, 3), ("0", 5, 0), (4, 9, 4), ("25%", 6, 2)],
)  # fmt: skip
def test_budget_from_spec(spec: str | int, n: int, expected: int) -> None:
    assert budget_from_spec(spec, n) == expected


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [("-5", 10, "negative"), ("-5%", 10, "negative"), ("120%", 10, "more than 100%"),
     ("abc", 10, "not a percentage"), ("", 10, "not a percentage"), ("2.5", 10, "not a percentage"),
     ("11", 10, "larger than the 10 items"), ("5%", 0, "no items")],
)  # fmt: skip
def test_budget_from_spec_rejects(spec: str, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        budget_from_spec(spec, n)
    assert "\n" not in str(info.value)


def test_wilson_interval_textbook_values() -> None:
    lo, hi = wilson_interval(10, 100, 0.95)
    assert lo == pytest.approx(0.0552, abs=1e-4)
    assert hi == pytest.approx(0.1744, abs=1e-4)
    lo, hi = wilson_interval(0, 20, 0.95)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_recommend_budget_uses_the_upper_end_for_the_rest() -> None:
    rec = recommend_budget(10, 100, 10_000)
    assert rec.error_rate == pytest.approx(0.1)
    assert rec.n_remaining == 9900
    assert rec.expected_errors == pytest.approx(990)
    assert rec.budget == math.ceil(rec.upper * 9900)
    assert 1720 <= rec.budget <= 1730
    assert "Wilson" in rec.explanation
    assert recommend_budget(0, 50, 1000).budget > 0  # zero errors in the pilot still leaves room
    assert recommend_budget(50, 50, 60).budget == 10  # capped at the items left


def test_recommend_budget_validation() -> None:
    with pytest.raises(ValueError, match="pilot_size must be > 0"):
        recommend_budget(0, 0, 10)
    with pytest.raises(ValueError, match="cannot exceed pilot_size"):
        recommend_budget(6, 5, 10)
    with pytest.raises(ValueError, match="larger than the 10 items"):
        recommend_budget(1, 11, 10)


def test_pilot_sample_is_uniform_and_reproducible() -> None:
    idx = pilot_sample(100, 10, seed=3)
    assert idx.size == 10 and np.unique(idx).size == 10 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, pilot_sample(100, 10, seed=3))
    counts = np.zeros(20)
    for s in range(3000):
        counts[pilot_sample(20, 5, seed=s)] += 1
    np.testing.assert_allclose(counts / 3000, 0.25, atol=0.04)
    with pytest.raises(ValueError, match="pilot size 30 is larger than the 20 items"):
        pilot_sample(20, 30)


def test_pivotal_sample_does_not_depend_on_the_loop_chunk(monkeypatch) -> None:
    """The sampler walks its units a chunk at a time (memory); the draws, and so the sample, must
    be those of one pass over all of them."""
    from actlabel import select as rules

    pi = np.random.default_rng(5).random(1001) * 0.2
    pi[::50] = 1.0
    whole = rules.sample_pivotal(pi, seed=9)
    for chunk in (1, 7, 1000):
        monkeypatch.setattr(rules, "PIVOTAL_CHUNK", chunk)
        assert np.array_equal(rules.sample_pivotal(pi, seed=9), whole)
