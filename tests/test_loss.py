"""The ACT loss (PyTorch), its NumPy weights and its variance (actlabel.loss)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from actlabel.loss import act_mean, act_sample_weights, act_variance, review_weights
from actlabel.select import sample_poisson, sample_systematic, select


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -_log_softmax(logits)[np.arange(labels.size), labels]


def _problem(n: int = 200, k: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Logits, true labels, a 25%-wrong annotator and a critic that sees the errors."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    human = rng.integers(0, k, n)
    wrong = rng.random(n) < 0.25
    machine = np.where(wrong, (human + rng.integers(1, k, n)) % k, human)
    error_prob = np.clip(np.where(wrong, 0.7, 0.15) + rng.normal(0, 0.15, n), 0, 1)
    return {"logits": logits, "human": human, "machine": machine, "error_prob": error_prob}


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    # These tensors are tiny: a multi-threaded pool costs far more than it saves, and on a busy
    # shared machine it made each call about 15x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# PyTorch loss


def test_act_loss_matches_the_formula(torch) -> None:
    from actlabel.loss import act_loss

    p = _problem(n=12, k=3)
    reviewed = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    pi = np.linspace(0.2, 0.9, 12)
    human = np.where(reviewed, p["human"], -1)
    lm, lh = _ce(p["logits"], p["machine"]), _ce(p["logits"], p["human"])
    for lam in (1.0, 0.5, 0.0):
        expected = np.mean(lam * lm + np.where(reviewed, (lh - lam * lm) / pi, 0.0))
        got = act_loss(
            torch.tensor(p["logits"]),
            torch.tensor(p["machine"]),
            torch.tensor(human),
            torch.tensor(reviewed),
            torch.tensor(pi),
            lam=lam,
        )
        assert float(got) == pytest.approx(expected, rel=1e-10)
        assert float(got) == pytest.approx(act_mean(lh, lm, reviewed, pi, lam=lam), rel=1e-10)


def test_act_loss_reductions_and_max_weight(torch) -> None:
    from actlabel.loss import act_loss

    p = _problem(n=10, k=3)
    reviewed = np.zeros(10, dtype=bool)
    reviewed[[2, 5]] = True
    pi = np.full(10, 0.1)
    args = [
        torch.tensor(p["logits"]),
        torch.tensor(p["machine"]),
        torch.tensor(p["human"]),
        torch.tensor(reviewed),
    ]
    none = act_loss(*args, torch.tensor(pi), reduction="none")
    assert none.shape == (10,)
    assert float(act_loss(*args, torch.tensor(pi), reduction="sum")) == pytest.approx(float(none.sum()))
    assert float(act_loss(*args, torch.tensor(pi))) == pytest.approx(float(none.sum()) / 10)
    lm, lh = _ce(p["logits"], p["machine"]), _ce(p["logits"], p["human"])
    clipped = act_loss(*args, torch.tensor(pi), reduction="none", max_weight=4.0).numpy()
    np.testing.assert_allclose(clipped[reviewed], lm[reviewed] + (lh - lm)[reviewed] * 4.0)
    np.testing.assert_allclose(clipped[~reviewed], lm[~reviewed])


def test_unreviewed_human_labels_of_minus_one_give_no_nan(torch) -> None:
    from actlabel.loss import act_loss

    p = _problem(n=30, k=5)
    reviewed = np.arange(30) % 3 == 0
    human = np.where(reviewed, p["human"], -1)
    pi = np.where(reviewed, 0.5, 0.0)  # unreviewed items may even have pi = 0
    logits = torch.tensor(p["logits"], requires_grad=True)
    loss = act_loss(
        logits, torch.tensor(p["machine"]), torch.tensor(human), torch.tensor(reviewed), torch.tensor(pi)
    )
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert torch.isfinite(logits.grad).all()


def test_threshold_rule_reduces_to_cross_entropy_on_corrected_labels(torch) -> None:
    import torch.nn.functional as F

    from actlabel.loss import act_loss

    p = _problem()
    res = select(p["error_prob"], 50, rule="threshold", seed=0)
    d = res.selected
    assert set(np.unique(res.review_prob)) <= {0.0, 1.0}
    corrected = np.where(d, p["human"], p["machine"])
    logits = torch.tensor(p["logits"])
    got = act_loss(
        logits,
        torch.tensor(p["machine"]),
        torch.tensor(np.where(d, p["human"], -1)),
        torch.tensor(d),
        torch.tensor(res.review_prob),
    )
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, torch.tensor(corrected))), rel=1e-12)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_act_loss_is_unbiased_for_the_full_human_loss(torch, lam: float) -> None:
    """Monte Carlo over the selection design of actlabel.select (systematic, hard budget)."""
    from actlabel.loss import act_loss

    p = _problem()
    full_human = float(np.mean(_ce(p["logits"], p["human"])))
    full_machine = float(np.mean(_ce(p["logits"], p["machine"])))
    logits, machine, human = (torch.tensor(p[k]) for k in ("logits", "machine", "human"))
    reps = 1000
    design = select(p["error_prob"], 40, rule="exponential", uniform=0.1, seed=0)
    pi = torch.tensor(design.review_prob)
    values = np.empty(reps)
    for r in range(reps):
        # the sampler select() uses, with its inclusion probabilities (they do not depend on the seed)
        d = torch.tensor(sample_systematic(design.review_prob, r, max_size=40))
        values[r] = float(act_loss(logits, machine, human, d, pi, lam=lam))
    se = values.std() / math.sqrt(reps)
    assert abs(values.mean() - full_human) <= 4 * se, (values.mean(), full_human, se)
    assert abs(full_machine - full_human) > 6 * se  # the machine loss is far off: the test has power


def test_mini_batch_means_average_to_the_full_loss(torch) -> None:
    """Dividing by the batch size makes the mean over an epoch of batches the full-data loss."""
    from actlabel.loss import act_loss

    p = _problem(n=120)
    res = select(p["error_prob"], 30, rule="exponential", uniform=0.1, seed=1)
    tensors = [
        torch.tensor(x) for x in (p["logits"], p["machine"], p["human"], res.selected, res.review_prob)
    ]
    full = float(act_loss(*tensors))
    perm = np.random.default_rng(0).permutation(120)
    batch_means = [float(act_loss(*(t[perm[i : i + 20]] for t in tensors))) for i in range(0, 120, 20)]
    assert np.mean(batch_means) == pytest.approx(full, rel=1e-12)


def test_act_loss_validation(torch) -> None:
    from actlabel.loss import act_loss

    logits = torch.zeros(3, 2)
    m = torch.tensor([0, 1, 0])
    d = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="item 0 is reviewed but its human label -1"):
        act_loss(logits, m, torch.tensor([-1, -1, -1]), d, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="at index 0 must be in"):
        act_loss(logits, m, torch.tensor([1, -1, -1]), d, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="machine label 2 at index 1"):
        act_loss(logits, torch.tensor([0, 2, 0]), torch.tensor([1, -1, -1]), d, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="reduction"):
        act_loss(logits, m, torch.tensor([1, -1, -1]), d, torch.tensor([0.5, 0.5, 0.5]), reduction="avg")
    with pytest.raises(ValueError, match="lam must be in"):
        act_loss(logits, m, torch.tensor([1, -1, -1]), d, torch.tensor([0.5, 0.5, 0.5]), lam=2.0)


# ---------------------------------------------------------------------------------------------
# NumPy side


def test_numpy_helpers_do_not_import_torch() -> None:
    import subprocess

    # A fresh interpreter where "import torch" fails: the NumPy helpers must still work.
    code = (
        "import sys; sys.modules['torch'] = None; import numpy as np; import actlabel.loss as L;"
        "print(L.act_sample_weights(np.array([0,1]), np.array([1,-1]), np.array([1,0]), np.array([0.5,0.5]))[2]);"
        "print(L.act_variance(np.ones(2), np.zeros(2), np.array([0.5, 1.0])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[-1.", "2.", "1.]", "0.25"]


def test_sample_weights_reproduce_the_act_loss() -> None:
    p = _problem(n=60)
    res = select(p["error_prob"], 20, rule="exponential", uniform=0.2, seed=3)
    human = np.where(res.selected, p["human"], -1)
    lm, lh = _ce(p["logits"], p["machine"]), _ce(p["logits"], p["human"])
    for lam, max_weight in ((1.0, None), (0.3, None), (1.0, 3.0)):
        idx, y, w = act_sample_weights(
            p["machine"], human, res.selected, res.review_prob, lam=lam, max_weight=max_weight
        )
        weighted = float((w * _ce(p["logits"][idx], y)).sum()) / 60
        assert weighted == pytest.approx(
            act_mean(lh, lm, res.selected, res.review_prob, lam=lam, max_weight=max_weight), rel=1e-10
        )
        assert np.all(w != 0)
        assert np.all(np.diff(idx) >= 0)


def test_sample_weights_rows_merge_and_drop() -> None:
    machine = np.array([0, 1, 2, 0])
    human = np.array([1, 1, -1, 2])
    reviewed = np.array([True, True, False, True])
    pi = np.array([0.5, 0.25, 0.3, 1.0])
    idx, y, w = act_sample_weights(machine, human, reviewed, pi)
    # item 0: machine 1 - 2 = -1, human 2; item 1: same label, 1 - 4 + 4 = 1; item 2: machine 1;
    # item 3: pi = 1, machine weight 0 dropped, human 1
    assert idx.tolist() == [0, 0, 1, 2, 3]
    assert y.tolist() == [0, 1, 1, 2, 2]
    np.testing.assert_allclose(w, [-1.0, 2.0, 1.0, 1.0, 1.0])
    idx, y, w = act_sample_weights(machine, human, reviewed, pi, clip_negative=True)
    assert idx.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 1, 2, 2]
    np.testing.assert_allclose(w, [2.0, 1.0, 1.0, 1.0])
    idx, y, w = act_sample_weights(machine, human, reviewed, pi, lam=0.0)
    assert idx.tolist() == [0, 1, 3] and y.tolist() == [1, 1, 2]
    np.testing.assert_allclose(w, [2.0, 4.0, 1.0])


def test_sample_weights_validation() -> None:
    with pytest.raises(ValueError, match="item 1 is reviewed but has no human label"):
        act_sample_weights(np.array([0, 1]), np.array([1, -1]), np.array([1, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="item 0 is reviewed but has review_prob 0"):
        act_sample_weights(np.array([0, 1]), np.array([1, -1]), np.array([1, 0]), np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"review_prob must be in \[0, 1\]; got 1.5 at index 1"):
        review_weights(np.array([1, 0]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="max_weight must be >= 1"):
        review_weights(np.array([1, 0]), np.array([0.5, 0.5]), max_weight=0.5)


def test_variance_formula_and_special_cases() -> None:
    lh = np.array([1.0, 2.0, 0.5, 3.0])
    lm = np.array([1.0, 0.5, 0.5, 1.0])
    pi = np.array([0.2, 0.5, 0.1, 0.25])
    expected = (0.0 + 1.5**2 * 1.0 + 0.0 + 2.0**2 * 3.0) / 16
    assert act_variance(lh, lm, pi) == pytest.approx(expected)
    assert act_variance(lh, lm, pi, lam=0.0) == pytest.approx((1 * 4 + 4 * 1 + 0.25 * 9 + 9 * 3) / 16)
    # perfect critic: pi = 1 wherever the labels differ
    assert act_variance(lh, lm, np.where(lh != lm, 1.0, 0.3)) == 0.0
    # perfect annotator
    assert act_variance(lm, lm, pi) == 0.0


def test_empirical_variance_matches_formula_under_poisson_sampling() -> None:
    p = _problem(n=150, seed=4)
    lm, lh = _ce(p["logits"], p["machine"]), _ce(p["logits"], p["human"])
    pi = np.clip(0.05 + 0.6 * p["error_prob"], 0.05, 1.0)
    reps = 20000
    draws = np.stack([sample_poisson(pi, s) for s in range(reps)])
    for lam in (1.0, 0.5):
        values = (lam * lm + (lh - lam * lm) * draws / pi).mean(axis=1)  # act_mean, vectorised over reps
        assert values.mean() == pytest.approx(lh.mean(), abs=4 * values.std() / math.sqrt(reps))
        # the sample variance of 20000 normal-ish draws is within ~3% (relative sd sqrt(2/n) = 1%)
        assert values.var(ddof=1) == pytest.approx(act_variance(lh, lm, pi, lam=lam), rel=0.04)


def test_multilabel_linear_model_learns_from_human_sets_with_the_bce_act_loss() -> None:
    """Issue 15: with machine sets wrong on one label in three and every item reviewed (pi = 1),
    the BCE ACT loss trains on the human sets and recovers them; full machine labels do worse."""
    pytest.importorskip("torch")
    from actlabel.downstream import LinearACTMultiLabel

    rng = np.random.default_rng(0)
    n, dim, k = 600, 20, 3
    x = rng.normal(0, 1, (n, dim))
    truth = (x[:, :k] > 0).astype(int)
    machine = np.where(rng.random((n, k)) < 0.33, 1 - truth, truth)
    machine[:, 0] = 1 - truth[:, 0]  # label 0 always wrong: only the human sets can teach it
    test_x = rng.normal(0, 1, (400, dim))
    test_y = (test_x[:, :k] > 0).astype(int)
    human = LinearACTMultiLabel(k).fit(x, machine, truth, np.ones(n, bool), np.ones(n))
    machine_only = LinearACTMultiLabel(k).fit(x, machine, truth, np.zeros(n, bool), np.ones(n))
    assert (human.predict(test_x) == test_y).mean() > 0.9
    assert (machine_only.predict(test_x)[:, 0] == test_y[:, 0]).mean() < 0.2
