"""The label model: calibration, pooling learned from trusted labels, cross-fitted refinement."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from actlabel import label_model as lm


def test_dividing_by_the_pool_prior_removes_a_label_prior() -> None:
    # an LLM that favours label 0 by a factor of 10 whatever the input
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    signal = np.full((300, 3), 0.1)
    signal[np.arange(300), truth] = 0.8
    bias = np.array([10.0, 1.0, 1.0])
    llm = lm.log_normalize(np.log(signal * bias))
    prior = lm.pool_prior(np.exp(llm))
    raw_acc = (llm.argmax(1) == truth).mean()
    cal = lm.Pooling(1.0, 0.0, np.log(prior)).combine(llm, None)
    assert raw_acc < 0.75
    assert (cal.argmax(1) == truth).mean() == 1.0
    assert np.allclose(cal.sum(1), 1.0)


def test_pooling_weights_follow_the_clearly_better_expert_and_default_to_equal_say() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    good = np.where(np.eye(2)[y] > 0, np.log(0.9), np.log(0.1))
    wrong = np.where(np.eye(2)[y] > 0, np.log(0.02), np.log(0.98))
    noise = lm.log_normalize(5 * rng.normal(size=(60, 2)))
    # the probe is right, the LLM is confident noise: the probe gets the larger share
    p = lm.choose_pooling(y, noise, good, None, source="test")
    assert p.b > p.a
    # the LLM is right and the probe confidently wrong on 60 trusted labels: the LLM alone
    p = lm.choose_pooling(y, good, wrong, None, source="test")
    assert p.b == 0.0 and p.a >= 1.0
    # the probe carries nothing: equal say labels as the LLM alone does
    flat = lm.log_normalize(np.zeros((60, 2)))
    p = lm.choose_pooling(y, good, flat, None, source="test")
    assert p.a == p.b and (p.combine(good, flat).argmax(1) == good.argmax(1)).all()
    with pytest.raises(ValueError):
        lm.choose_pooling(y, None, None, None, source="test")


def test_a_handful_of_trusted_labels_cannot_move_the_share_on_a_hunch() -> None:
    """9 left-out examples: the LLM alone labels 6 right, equal say 4 (2 wins, 0 losses): not
    clear (a paired sign test at 2 standard errors needs 4 net wins), so equal say stays; the
    same gap on 90 labels moves it."""
    y = np.zeros(9, dtype=int)
    # rows 0-3: the LLM sure and right, the probe unsure and wrong (equal say: right);
    # rows 4-5: the LLM unsure and right, the probe wrong (equal say: wrong); rows 6-8: both wrong
    llm = np.log(np.array([[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 2 + [[0.3, 0.7]] * 3))
    probe = np.log(np.array([[0.45, 0.55]] * 4 + [[0.3, 0.7]] * 5))
    p = lm.choose_pooling(y, llm, probe, None, source="examples")
    right_alone = (llm.argmax(1) == y).sum()
    right_equal = (lm.Pooling(1, 1).combine(llm, probe).argmax(1) == y).sum()
    assert (right_alone, right_equal) == (6, 4)
    assert p.a == p.b
    p = lm.choose_pooling(
        np.tile(y, 10), np.tile(llm, (10, 1)), np.tile(probe, (10, 1)), None, source="reviews"
    )
    assert p.b == 0.0


def _world(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    h = rng.integers(0, 3, n)
    x = centers[h] + rng.normal(scale=1.3, size=(n, 4))
    # an annotator right 60% of the time, its distribution peaked on its answer
    m0 = np.where(rng.random(n) < 0.6, h, rng.integers(0, 3, n))
    llm = np.full((n, 3), np.log(0.2))
    llm[np.arange(n), m0] = np.log(0.6)
    return x, h, lm.log_normalize(llm)


class CentroidProbe:
    """A nearest-centroid probe: the same fit/predict_proba contract as lm.Probe, fast enough for
    a Monte Carlo over hundreds of refinements (the fold logic under test is the same)."""

    def __init__(self, n_labels: int):
        self.n_labels = n_labels

    def fit(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> CentroidProbe:
        w = np.ones(len(y)) if weights is None else weights
        self.c = np.array(
            [
                np.average(x[y == k], axis=0, weights=w[y == k]) if (y == k).any() else np.zeros(x.shape[1])
                for k in range(self.n_labels)
            ]
        )
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        d = -((x[:, None, :] - self.c[None]) ** 2).sum(-1) / 2
        return np.exp(lm.log_normalize(d))


def _ce(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    logp = lm.log_normalize(x @ theta)
    return -logp[np.arange(len(y)), y]


def test_refined_labels_keep_the_act_loss_unbiased_when_cross_fitted() -> None:
    """E[ACT loss with refined machine labels] = the full-human loss, by Monte Carlo: the refined
    label of an item never depends on its own review draw. Refining with every review instead
    (no cross-fitting) copies the human label into the machine label of reviewed items and biases it."""
    n, draws = 120, 400
    x, h, llm = _world(n, 0)
    theta = np.random.default_rng(5).normal(size=(4, 3))
    full_human = _ce(theta, x, h).mean()
    pi = np.clip(0.15 + 0.5 * (llm.argmax(1) != h), 0, 1)  # a critic that knows something
    folds = np.arange(n) % lm.REFINE_FOLDS
    empty = np.zeros((0, 4))

    def act(m: np.ndarray, d: np.ndarray) -> float:
        lm_, lh = _ce(theta, x, m), _ce(theta, x, h)
        return float(np.mean(lm_ + (lh - lm_) * d / pi))

    rng = np.random.default_rng(11)
    est, leaky = [], []
    for _ in range(draws):
        d = rng.random(n) < pi
        rev = np.flatnonzero(d)
        res = lm.refine(
            features=x, llm_logp=llm, log_prior=None, reviewed_idx=rev, reviewed_labels=h[rev],
            example_features=empty, example_labels=np.zeros(0, int), example_llm_logp=None, folds=folds,
            probe=CentroidProbe,
        )  # fmt: skip
        m = res.probs.argmax(1)
        est.append(act(m, d))
        # a model that saw the item's own review reproduces it in the machine label
        leaky.append(act(np.where(d, h, m), d))
    est, leaky = np.array(est), np.array(leaky)
    se = est.std(ddof=1) / np.sqrt(draws)
    assert abs(est.mean() - full_human) < 4 * se + 1e-3
    assert abs(leaky.mean() - full_human) > 4 * leaky.std(ddof=1) / np.sqrt(draws)


def test_fold_of_is_stable_and_spread() -> None:
    ids = [f"item-{i}" for i in range(500)]
    a, b = lm.fold_of(ids), lm.fold_of(ids)
    assert (a == b).all()
    counts = np.bincount(a, minlength=lm.REFINE_FOLDS)
    assert counts.min() > 60


def test_anchors_let_the_probe_score_a_left_out_single_example() -> None:
    # one example per label: leaving it out to score it removes its label from the probe's fit,
    # unless the label's anchor row stays in
    centers = np.eye(4) * 3.0
    rng = np.random.default_rng(3)
    examples = centers + rng.normal(scale=0.3, size=(4, 4))
    labels = np.arange(4)
    without = lm.loo_probe_logq(examples, labels, 4)
    anchors = lm.Anchors(centers, np.arange(4))
    with_anchors = lm.loo_probe_logq(examples, labels, 4, probe=functools.partial(lm.Probe, anchors=anchors))
    assert (without.argmax(1) == labels).sum() == 0
    assert (with_anchors.argmax(1) == labels).all()
    # anchors join the fit and are never scored: the output has one row per example
    assert with_anchors.shape == (4, 4)


def test_anchor_texts_use_the_description_when_there_is_one() -> None:
    from actlabel.task import Label

    texts = lm.label_anchor_texts([Label("earn", "earnings and forecasts"), Label("acq", "")])
    assert texts == ["earn: earnings and forecasts", "acq"]


def test_text_anchors_from_real_embeddings_label_topics_with_one_example_each(tmp_path) -> None:
    pytest.importorskip("sentence_transformers")
    from actlabel.annotate import text_probe_factory
    from actlabel.models.features import cached_text_features
    from actlabel.task import Example, Label, Task

    task = Task(
        labels=[
            Label("sport", "football, tennis, matches and players"),
            Label("cooking", "recipes, baking, kitchens and food"),
            Label("finance", "shares, banks, interest rates and profits"),
        ],
        instructions="Classify the topic.",
        examples=[
            Example(label="sport", text="The striker scored twice in the second half."),
            Example(label="cooking", text="Whisk the eggs with sugar until pale."),
            Example(label="finance", text="The central bank raised its key rate."),
        ],
    )
    items = [
        "The goalkeeper saved a penalty in the final minute.",
        "Knead the dough and let it rise for an hour before baking.",
        "Quarterly profits beat forecasts and the shares rose.",
        "She won the tennis match in straight sets.",
        "Simmer the tomato sauce with garlic and basil.",
        "Bond yields fell as investors bought government debt.",
    ]
    gold = np.array([0, 1, 2, 0, 1, 2])
    ex_x = cached_text_features([e.text for e in task.examples], tmp_path)
    ex_y = np.array([0, 1, 2])
    factory = text_probe_factory(task, tmp_path)
    probe = factory(3).fit(ex_x, ex_y)
    assert (probe.predict_proba(cached_text_features(items, tmp_path)).argmax(1) == gold).all()
    # scored with itself left out, an example can still get its label (without anchors: never)
    assert (lm.loo_probe_logq(ex_x, ex_y, 3, probe=factory).argmax(1) == ex_y).sum() >= 1
    assert (lm.loo_probe_logq(ex_x, ex_y, 3).argmax(1) == ex_y).sum() == 0


def test_left_out_examples_fit_a_prompt_budget() -> None:
    """52 long examples (Reuters R52) made a dozen left-out prompts, each carrying every other
    example with no cached prefix, run for over an hour before the first item: past the budget
    none is scored (equal say); short examples keep one a label, up to the maximum."""
    from actlabel.annotate import _left_out_choice
    from actlabel.task import Example, Label, Task

    def task(n_labels: int, per_label: int, chars: int) -> Task:
        names = [f"l{k}" for k in range(n_labels)]
        examples = [Example(label=n, text="x" * chars) for n in names for _ in range(per_label)]
        return Task(labels=[Label(n) for n in names], examples=examples)

    short = task(3, 3, 90)  # the demo's tweets
    picked = _left_out_choice(short, range(9))
    assert len(picked) == 9
    many = task(20, 2, 50)
    picked = _left_out_choice(many, range(40))
    assert len(picked) == lm.MAX_LOO_EXAMPLES and len({many.examples[k].label for k in picked}) == 12
    assert _left_out_choice(task(52, 1, 500), range(52)) == []
    medium = task(8, 1, 1500)  # 12,000 characters a prompt: 5 fit the budget
    assert len(_left_out_choice(medium, range(8))) == lm.LOO_CHAR_BUDGET // 12001
