"""Monte Carlo checks of the statistics fixed for issue 12 (items 3, 5, 7).

Each test here failed on the code before the fix (the reason is in its docstring); the
simulations are sized to run in a few seconds each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from actlabel.loss import act_mean, act_variance, ppi_lambda
from actlabel.metrics import (
    ReviewRound,
    residual_error_estimate,
    residual_error_estimate_over_rounds,
    uniform_reviews_to_halve_width,
)
from actlabel.select import (
    inclusion_probabilities,
    pilot_sample,
    round_split_variance,
    sample_pivotal,
    sample_poisson,
    sample_systematic,
    select,
    select_round,
)


def _losses(n: int, seed: int) -> dict[str, np.ndarray]:
    """Per-item losses at a fixed theta: machine errors have a low human and a high machine loss."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.2
    e = np.clip(np.where(y, rng.beta(4, 2, n), rng.beta(1, 4, n)), 0, 1)
    lm = np.where(y, 2.5, 0.4) + 0.2 * rng.random(n)
    lh = np.where(y, 0.8, lm)
    return {"y": y, "e": e, "lm": lm, "lh": lh}


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# the sampler (behind every variance claim)


def test_pivotal_design_has_exact_probabilities_and_a_hard_budget() -> None:
    rng = np.random.default_rng(0)
    e = rng.random(120)
    pi, _ = inclusion_probabilities(e, 30, rule="exponential", uniform=0.1)
    reps = 6000
    draws = np.stack([sample_pivotal(pi, s, max_size=30) for s in range(reps)])
    assert draws.sum(axis=1).max() <= 30 and draws.sum(axis=1).min() >= 29
    z = (draws.mean(axis=0) - pi) / np.sqrt(pi * (1 - pi) / reps + 1e-12)
    assert np.abs(z).max() < 4.5, np.abs(z).max()
    assert np.all(draws[:, pi >= 1]) and not draws[:, pi <= 0].any()


def test_select_design_variance_is_within_the_poisson_formula() -> None:
    """Threshold + 5%: the systematic design made the low-pi sample count 6x as variable as Poisson,
    so act_variance was 4.4x too low for lam = 0.5 (issue 12: 2.3-2.5x).  select() now uses the
    pivotal design; act_variance must hold for it (ratio 0.6-1.1), and the old design must still
    show the problem (the test has power)."""
    p = _losses(300, 0)
    pi, _ = inclusion_probabilities(p["e"], 60, rule="threshold", uniform=0.05, seed=1)
    reps = 3000
    for lam in (1.0, 0.5, 0.0):
        formula = act_variance(p["lh"], p["lm"], pi, lam=lam)
        f = p["lh"] - lam * p["lm"]
        piv = np.stack(
            [select(p["e"], 60, rule="threshold", uniform=0.05, seed=s).selected for s in range(reps)]
        )
        ratio = float((lam * p["lm"] + f * piv / pi).mean(axis=1).var() / formula)
        assert 0.6 <= ratio <= 1.1, (lam, ratio)
    sysd = np.stack([sample_systematic(pi, s, max_size=60) for s in range(reps)])
    f = p["lh"] - 0.5 * p["lm"]
    old = float(
        (0.5 * p["lm"] + f * sysd / pi).mean(axis=1).var() / act_variance(p["lh"], p["lm"], pi, lam=0.5)
    )
    assert old > 2.0, old


# ---------------------------------------------------------------------------------------------
# the loss: exact, clipped, tuned


def test_exact_loss_unbiased_and_clipped_loss_bias_as_documented() -> None:
    """E[exact] = full-human loss; E[clipped] - full-human = (lam/N) sum_{h != m} (1 - pi) l_m,
    the bias docs/statistics.md section 3 derives (and it is >= 0, below the machine loss's)."""
    p = _losses(200, 1)
    corrected = p["y"]
    pi, _ = inclusion_probabilities(p["e"], 40, rule="exponential", uniform=0.1)
    reps = 4000
    draws = [sample_pivotal(pi, s, max_size=40) for s in range(reps)]
    full_h, full_m = p["lh"].mean(), p["lm"].mean()
    for lam in (1.0, 0.6):
        exact = np.array([act_mean(p["lh"], p["lm"], d, pi, lam=lam) for d in draws])
        clipped = np.array(
            [act_mean(p["lh"], p["lm"], d, pi, lam=lam, clip=True, corrected=corrected) for d in draws]
        )
        assert abs(exact.mean() - full_h) <= 4 * exact.std() / math.sqrt(reps)
        bias = lam * float(((1 - pi) * p["lm"])[corrected].sum()) / pi.size
        assert abs(clipped.mean() - full_h - bias) <= 4 * clipped.std() / math.sqrt(reps) + 1e-9
        assert 0 < bias < full_m - full_h
        # clipped variance formula (lam_i = lam * pi_i on corrected items); design var <= Poisson
        v = act_variance(p["lh"], p["lm"], pi, lam=lam, clip=True, corrected=corrected)
        assert 0.5 <= clipped.var() / v <= 1.1, clipped.var() / v
        assert clipped.var() < exact.var()


def test_ppi_lambda_minimises_the_gradient_variance() -> None:
    """The PPI++ lam estimated from the reviews is near the population optimum, and the ACT
    gradient's variance there is below that of lam = 1 (the paper) and lam = 0 (pure HT)."""
    rng = np.random.default_rng(2)
    n, k = 2000, 3
    human = rng.integers(0, k, n)
    wrong = rng.random(n) < 0.3
    machine = np.where(wrong, (human + 1) % k, human)
    logits = rng.normal(0, 1, (n, k)) + 2.0 * np.eye(k)[machine]  # a model that fits the machine labels
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    g_h, g_m = probs - np.eye(k)[human], probs - np.eye(k)[machine]
    pi = np.full(n, 0.15)
    c = (1 - pi) / pi

    def grad_var(lam: float) -> float:
        return float((c * ((g_h - lam * g_m) ** 2).sum(axis=1)).sum())

    lam_pop = float((c * (g_h * g_m).sum(axis=1)).sum() / (c * (g_m * g_m).sum(axis=1)).sum())
    lams = []
    for s in range(20):
        d = sample_poisson(pi, s)
        lams.append(ppi_lambda(probs, machine, np.where(d, human, -1), d, pi))
    lam = float(np.mean(lams))
    assert 0.0 < lam_pop < 1.0 and abs(lam - lam_pop) < 0.05, (lam, lam_pop)
    assert grad_var(lam) < grad_var(1.0) and grad_var(lam) < grad_var(0.0)
    # perfect annotator: no correction needed, lam = 1
    d = sample_poisson(pi, 0)
    assert ppi_lambda(probs, machine, np.where(d, machine, -1), d, pi) == 1.0


def test_act_loss_fp16_logits_with_tiny_pi_stay_finite(torch) -> None:
    """fp16: 1/pi overflowed for pi < 1.5e-5 and inf * 0 gave NaN."""
    from actlabel.loss import act_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [1.0, 0.0]], dtype=torch.float16, requires_grad=True)
    m = torch.tensor([0, 1, 0])
    h = torch.tensor([1, -1, -1])
    d = torch.tensor([True, False, False])
    pi = torch.tensor([1e-5, 1e-6, 0.5])
    for clip in (False, True):
        loss = act_loss(logits, m, h, d, pi, clip=clip)
        assert torch.isfinite(loss), loss
        loss.backward()
        assert torch.isfinite(logits.grad.float()).all()
        logits.grad = None
    ref = act_loss(logits.double(), m, h, d, pi.double())
    assert float(act_loss(logits, m, h, d, pi).detach()) == pytest.approx(float(ref.detach()), rel=1e-3)


def test_clipped_loss_is_bounded_below(torch) -> None:
    """The exact loss has a negative weight on a corrected item's machine label: scaling the logits
    drives it to -infinity; the clipped loss stays >= 0."""
    from actlabel.loss import act_loss

    m, h = torch.tensor([0, 1]), torch.tensor([1, -1])
    d, pi = torch.tensor([True, False]), torch.tensor([0.1, 0.5])
    direction = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]])  # away from item 0's machine label
    exact = [float(act_loss(s * direction, m, h, d, pi)) for s in (1.0, 10.0, 100.0)]
    clipped = [float(act_loss(s * direction, m, h, d, pi, clip=True)) for s in (1.0, 10.0, 100.0)]
    assert exact[2] < exact[1] < exact[0] and exact[2] < -100
    assert min(clipped) >= 0.0


# ---------------------------------------------------------------------------------------------
# the residual-error estimate


def test_residual_estimate_is_unbiased_where_clipping_was_not() -> None:
    """Threshold + 5% with few errors left: the clipped estimate was biased upward (12-120%);
    the reported estimate is now T_hat itself."""
    rng = np.random.default_rng(3)
    est, truth = [], []
    for r in range(600):
        y = rng.random(1000) < 0.06
        e = np.clip(np.where(y, rng.beta(5, 2, 1000), rng.beta(1, 12, 1000)), 0, 1)
        sel = select(e, 70, rule="threshold", uniform=0.05, seed=r)
        d = sel.selected
        res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e)
        est.append(res.estimate)
        truth.append(int((y & ~d).sum()))
    est, truth = np.array(est), np.array(truth)
    diff = est - truth
    assert abs(diff.mean()) <= 4 * diff.std() / math.sqrt(diff.size)
    clipped = np.clip(est, 0, None)
    assert (clipped - truth).mean() > 4 * diff.std() / math.sqrt(diff.size)  # clipping was biased


def test_residual_wald_variance_holds_with_a_pessimistic_critic() -> None:
    """Threshold + 5%, pessimistic critic: V_hat was 2.4x below the design variance (the
    systematic design); with the pivotal design V_hat is right and the Wald interval covers."""
    rng = np.random.default_rng(4)
    hits, diffs, v = 0, [], []
    reps = 300
    for r in range(reps):
        y = rng.random(2000) < 0.15
        e = np.where(y, rng.beta(4, 2, 2000), rng.beta(1, 6, 2000))
        sel = select(e, 360, rule="threshold", uniform=0.05, seed=r)
        d = sel.selected
        res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e, interval="wald")
        left = int((y & ~d).sum())
        hits += res.lower <= left <= res.upper
        diffs.append(res.estimate - left)
        v.append(res.std_error**2)
    ratio = float(np.mean(v) / np.var(diffs))
    assert 0.7 <= ratio <= 1.3, ratio
    assert hits / reps >= 0.88, hits / reps


def _pilot_and_rounds(
    y: np.ndarray, e: np.ndarray, budget: int, rounds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[ReviewRound]]:
    """The demo's design: a uniform pilot of max(30, 5%), then `rounds` threshold rounds + 5% uniform.
    Returns (reviewed, the last round's review_prob, every round's record)."""
    n = y.size
    size = max(30, math.ceil(0.05 * n))
    d = np.zeros(n, dtype=bool)
    d[pilot_sample(n, size, seed=seed)] = True
    out = [ReviewRound(np.ones(n, dtype=bool), d.copy(), np.full(n, size / n))]
    pi = np.where(d, 1.0, size / n)
    per_round = (budget - size) // rounds
    for k in range(rounds):
        res = select_round(e, d, pi, per_round, rule="threshold", uniform=0.05, seed=seed * 7 + k)
        out.append(ReviewRound(~d, res.newly_selected, np.where(d, 0.0, res.review_prob)))
        d, pi = res.selected.copy(), res.review_prob
    return d, pi, out


def test_residual_estimate_over_rounds_uses_the_pilot() -> None:
    """The demo's design (600 items, 30-item uniform pilot, 2 threshold rounds of 45 + 5% uniform):
    the last round alone stands for the 480 unreviewed items with ~2 items drawn at p ~ 0.004, and
    the demo printed "71 to 480" of 480.  Every round's draw combined (the pilot carries most of it)
    stays unbiased, covers, and is several times narrower."""
    rng = np.random.default_rng(8)
    n, reps = 600, 300
    diffs, hits, widths, old_widths, old_hits = [], 0, [], [], 0
    for r in range(reps):
        e = rng.beta(1.2, 2.0, n)
        y = rng.random(n) < e
        d, pi, rounds = _pilot_and_rounds(y, e, 120, 2, seed=r)
        left = int((y & ~d).sum())
        res = residual_error_estimate_over_rounds(np.where(d, y, -1), d, e, rounds)
        old = residual_error_estimate(np.where(d, y, -1), d, pi, e)
        diffs.append(res.estimate - left)
        hits += res.lower <= left <= res.upper
        old_hits += old.lower <= left <= old.upper
        widths.append(res.upper - res.lower)
        old_widths.append(old.upper - old.lower)
    diffs = np.array(diffs)
    assert abs(diffs.mean()) <= 4 * diffs.std() / math.sqrt(reps), diffs.mean()
    assert hits / reps >= 0.92, hits / reps
    assert np.mean(widths) <= 0.5 * np.mean(old_widths), (np.mean(widths), np.mean(old_widths))


def test_uniform_reviews_to_halve_the_width_over_rounds() -> None:
    """With every round combined, a new uniform round joins the others instead of replacing the
    last one: the advice's m reviews, done, about halve the interval."""
    rng = np.random.default_rng(10)
    n = 2000
    e = rng.beta(1.2, 2.0, n)
    y = rng.random(n) < e
    d, _pi, rounds = _pilot_and_rounds(y, e, 300, 2, seed=0)
    res = residual_error_estimate_over_rounds(np.where(d, y, -1), d, e, rounds)
    m = res.uniform_reviews_to_halve
    assert m is not None and 0 < m < res.n_unreviewed
    widths = []
    for r in range(40):
        new = np.zeros(n, dtype=bool)
        new[np.flatnonzero(~d)[pilot_sample(int((~d).sum()), m, seed=r)]] = True
        more = [*rounds, ReviewRound(~d, new, np.where(d, 0.0, m / (~d).sum()))]
        after = residual_error_estimate_over_rounds(np.where(d | new, y, -1), d | new, e, more)
        widths.append((after.upper - after.lower) / (res.upper - res.lower))
    assert 0.35 <= float(np.mean(widths)) <= 0.65, np.mean(widths)


def test_rounds_with_a_zero_probability_are_skipped() -> None:
    """A threshold round without a uniform share leaves unreviewed items at p = 0: that round
    cannot stand for them; the others still can, and with none left the estimate says so."""
    rng = np.random.default_rng(9)
    n = 400
    e = rng.beta(1.2, 2.0, n)
    y = rng.random(n) < e
    d, _pi, rounds = _pilot_and_rounds(y, e, 100, 1, seed=0)
    res = select_round(e, d, np.where(d, 1.0, 0.0), 40, rule="threshold", uniform=0.0, seed=1)
    rounds.append(ReviewRound(~d, res.newly_selected, np.where(d, 0.0, res.review_prob)))
    d = res.selected
    both = residual_error_estimate_over_rounds(np.where(d, y, -1), d, e, rounds)
    assert both.identifiable and "over 2 rounds" in both.note
    alone = residual_error_estimate_over_rounds(np.where(d, y, -1), d, e, rounds[-1:])
    assert not alone.identifiable and math.isnan(alone.estimate)


def test_out_of_design_reviews_stay_out_of_the_reweighted_part() -> None:
    """40 items, a round of 10 (threshold + uniform), 3 more reviewed by hand: those 3 used to get
    weight 1/p (100) and the estimate said 92 errors left when 3 were.  Now they count as found and
    the estimate is unbiased (Monte Carlo over the design, hand-picked items fixed)."""
    np.random.default_rng(5)
    y = np.zeros(40, dtype=bool)
    y[[0, 1, 2, 3, 4, 5, 30, 31, 32]] = True
    e = np.where(y, 0.7, 0.1)
    e[[30, 31, 32]] = 0.05  # errors the critic misses; a person finds them by hand
    hand = np.array([30, 31, 33])
    diffs, old = [], []
    for r in range(3000):
        sel = select(e, 10, rule="threshold", uniform=0.1, seed=r)
        d = sel.selected.copy()
        ood = np.zeros(40, dtype=bool)
        ood[hand] = ~d[hand]
        d[hand] = True
        res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e, out_of_design=ood)
        left = int((y & ~d).sum())
        diffs.append(res.estimate - left)
        old.append(residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e).estimate - left)
    diffs, old = np.array(diffs), np.array(old)
    assert abs(diffs.mean()) <= 4 * diffs.std() / math.sqrt(diffs.size), diffs.mean()
    assert old.mean() > 10  # treating them as drawn with their small p is far off


def test_uniform_reviews_to_halve_the_width() -> None:
    """The advice says m more uniform reviews halve the interval: check by doing them."""
    rng = np.random.default_rng(6)
    n = 2000
    y = rng.random(n) < 0.15
    e = np.clip(np.where(y, rng.beta(3, 2, n), rng.beta(1, 5, n)), 0, 1)
    sel = select(e, 300, rule="threshold", uniform=0.1, seed=0)
    d = sel.selected
    res = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e)
    m = uniform_reviews_to_halve_width(res)
    assert m is not None and 0 < m < res.n_unreviewed
    widths = []
    for _r in range(40):  # a new round: m uniform draws among the unreviewed items
        new = np.zeros(n, dtype=bool)
        new[rng.choice(np.flatnonzero(~d), m, replace=False)] = True
        pi2 = np.where(d, 1.0, m / (~d).sum())
        d2 = d | new
        r2 = residual_error_estimate(np.where(d2, y, -1), d2, pi2, e)
        widths.append(r2.upper - r2.lower)
    ratio = float(np.mean(widths) / (res.upper - res.lower))
    assert 0.35 <= ratio <= 0.65, ratio


# ---------------------------------------------------------------------------------------------
# rounds


def test_round_split_variance_shows_the_cost_of_a_small_last_round() -> None:
    e = np.random.default_rng(7).beta(1, 5, 1000)
    small_last = round_split_variance(e, [180, 20], rule="threshold", uniform=0.1, n_sim=5)
    even = round_split_variance(e, [100, 100], rule="threshold", uniform=0.1, n_sim=5)
    one = round_split_variance(e, [200], rule="threshold", uniform=0.1, n_sim=5)
    assert one.ratio == pytest.approx(1.0)
    assert small_last.ratio > 2.0, small_last
    assert 1.0 < even.ratio < small_last.ratio
    # no uniform share in the last round: some items can never be drawn
    assert math.isinf(round_split_variance(e, [100, 100], uniform=[0.1, 0.0], n_sim=2).ratio)


# ---------------------------------------------------------------------------------------------
# downstream: the default loss must not fall below machine labels alone


def test_default_downstream_loss_does_not_collapse() -> None:
    """Gaussian classes, 30% machine errors, threshold + 5% at 20%: the exact loss (negative
    weights -99 on the few uniform reviews that corrected a label) lands below full machine labels;
    the default (clipped, lam = 1) does not, for the linear model and the MLP; nor does tuned."""
    pytest.importorskip("torch")
    from actlabel.downstream import LinearACTClassifier, MLPACTClassifier

    accs: dict[str, list[float]] = {}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        k, dim, n = 4, 40, 400
        centers = rng.normal(0, 1.0, (k, dim))
        gold = rng.integers(0, k, n + 400)
        x = centers[gold] + rng.normal(0, 1.0, (n + 400, dim))
        train_x, test_x, y, test_y = x[:n], x[n:], gold[:n], gold[n:]
        wrong = rng.random(n) < 0.3
        machine = np.where(wrong, (y + 1) % k, y)
        e = np.clip(np.where(wrong, 0.6, 0.3) + rng.normal(0, 0.2, n), 0, 1)
        sel = select(e, 80, rule="threshold", uniform=0.05, seed=seed)
        d, pi = sel.selected, sel.review_prob
        for name, cls in (("linear", LinearACTClassifier), ("mlp", MLPACTClassifier)):
            for loss in ("exact", "clip", "tuned"):
                if name == "mlp" and loss == "tuned":
                    continue  # three MLP fits: CPU time
                clf = cls(k, seed=seed, loss=loss).fit(train_x, machine, np.where(d, y, -1), d, pi)
                accs.setdefault(f"{name} {loss}", []).append(clf.score(test_x, test_y))
            assert cls(k).loss == "clip"  # the default
            m = cls(k, seed=seed).fit(train_x, machine, y, np.zeros(n, bool), np.ones(n))
            accs.setdefault(f"{name} machine", []).append(m.score(test_x, test_y))
    mean = {key: float(np.mean(v)) for key, v in accs.items()}
    for key in ("linear clip", "linear tuned", "mlp clip"):
        assert mean[key] >= mean[key.split()[0] + " machine"] - 0.01, mean
    assert mean["linear exact"] < mean["linear machine"] - 0.02, mean  # the collapse the default avoids


def test_bce_act_loss_unbiased_and_clipped_bias_as_documented(torch) -> None:
    """Multi-label (issue 15): E[act_bce_loss] = the BCE loss on full human label sets; the clipped
    form's bias is (lam/(N L)) sum over wrong (item, label) pairs of (1 - pi_i) l_il(m_il)."""
    from actlabel.loss import act_bce_loss

    rng = np.random.default_rng(3)
    n, k = 200, 5
    logits = torch.as_tensor(rng.normal(0, 2.0, (n, k)))
    human = (rng.random((n, k)) < 0.3).astype(float)
    flips = rng.random((n, k)) < 0.15
    machine = np.where(flips, 1 - human, human)
    wrong_items = flips.any(axis=1)
    e = np.clip(np.where(wrong_items, rng.beta(4, 2, n), rng.beta(1, 4, n)), 0, 1)
    pi, _ = inclusion_probabilities(e, 40, rule="exponential", uniform=0.1)
    m_t, h_t = torch.as_tensor(machine), torch.as_tensor(human)
    pi_t = torch.as_tensor(pi)
    full_h = float(act_bce_loss(logits, h_t, h_t, torch.zeros(n, dtype=torch.bool), torch.ones(n)))
    reps = 3000
    for lam in (1.0, 0.6):
        exact, clipped = [], []
        for s in range(reps):
            d = torch.as_tensor(sample_pivotal(pi, s, max_size=40))
            exact.append(float(act_bce_loss(logits, m_t, h_t, d, pi_t, lam=lam)))
            clipped.append(float(act_bce_loss(logits, m_t, h_t, d, pi_t, lam=lam, clip=True)))
        exact_a, clipped_a = np.array(exact), np.array(clipped)
        assert abs(exact_a.mean() - full_h) <= 4 * exact_a.std() / math.sqrt(reps)
        lm = torch.nn.functional.binary_cross_entropy_with_logits(logits, m_t, reduction="none").numpy()
        bias = lam * float(((1 - pi)[:, None] * lm * flips).sum()) / (n * k)
        assert bias > 0
        assert abs(clipped_a.mean() - full_h - bias) <= 4 * clipped_a.std() / math.sqrt(reps) + 1e-9
    # every item reviewed with pi = 1: the loss is plain BCE on the human sets
    all_d = torch.ones(n, dtype=torch.bool)
    assert float(act_bce_loss(logits, m_t, h_t, all_d, torch.ones(n))) == pytest.approx(full_h)
