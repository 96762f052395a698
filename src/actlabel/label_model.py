"""The label model: an annotator's label probabilities, corrected for its prior and pooled with a
classifier on frozen features, with the pooling learned per project.

Two experts score every item over the K labels:
- the LLM: log p_llm(k | x), its normalised probability of each label (constrained choices);
- a probe: logistic regression on frozen features (MiniLM text embeddings, EfficientNet image
  features) fitted on the trusted labels: the task's few-shot examples and, once they exist, the
  human reviews. For text, each label's name and description is one more training row of its
  label (an anchor: always in the fit, never scored), so the probe knows every label even with
  one example per class, and leaving that example out to score it still leaves its label
  represented. On Reuters R8 (600 documents, 5 draws) the MiniLM probe labels 0.61 of the pool
  from one example per label and 0.77 with the anchors (0.80 and 0.86 from three); on tweets
  0.49 and 0.50 (docs/benchmarks.md, "Label anchors").

Small models carry a strong prior towards some labels (Qwen2.5-0.5B answered "negative" for 277
of 300 tweets with one prompt, "positive" for half of them with another). The prior is divided out
with the model's mean label distribution over the whole pool, c = mean_i p_llm(. | x_i): the
label a model gives everything gets no credit for that. (Contextual calibration, Zhao et al. 2021,
which divides by the distribution for content-free inputs such as "N/A", was measured too and
lowered accuracy on 300 tweets from 0.437 to 0.320: a content-free input does not carry the bias
the model shows on real items.) The pooled score is a weighted product of experts,

    score_k(x) = a * (log p_llm(k|x) - log c_k) + b * log q(k|x),   p = softmax(score),

with (a, b) chosen per project on the trusted labels: on the few-shot examples alone before any
review (the LLM scored on each example with that example left out of its prompt, the probe
refitted without it), on the reviews as they arrive (out of fold). The two experts start with
equal say, a = b (the product of two conditionally independent views, each with its prior
divided out), and the share moves only when another one labels clearly more trusted items right
(choose_pooling): a few left-out examples underrate the probe, and chose the LLM alone on tweets
and on Reuters R8 where equal say labels more of the pool right (docs/benchmarks.md, "Label
anchors"). Which expert wins depends on the task, which is why the share is learned from the
reviews and not fixed.

Refining with reviews (`annotate --refine`) is cross-fitted: items are split into folds by a hash of
their id, and an item's refined label comes from a model fitted on the examples plus the reviews of
the *other* folds. The ACT loss needs a machine label that does not depend on the item's own review
draw; cross-fitting gives exactly that (tests/test_label_model.py checks the loss stays unbiased by
Monte Carlo).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from actlabel.task import Label

#: grids for the pooling: the probe's share w and a temperature t (a = t(1-w) on the calibrated
#: LLM, b = t w on the feature probe)
W_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
T_GRID = (0.5, 1.0, 1.5, 2.0)
#: the probe's share until the trusted labels clearly say otherwise (see choose_pooling)
DEFAULT_PROBE_SHARE = 0.5
#: standard errors by which another share must label more trusted items right to be chosen
MOVE_Z = 2.0
#: the probe's inverse regularisation: features are L2-normalised, so a handful of examples
#: needs a large C to move the boundary at all (as the few-shot image classifier)
PROBE_C = 10.0
#: few-shot examples scored with themselves left out (one prompt each; more add little)
MAX_LOO_EXAMPLES = 12
#: characters of example text all left-out prompts may carry together: each repeats every other
#: example and shares no cached prefix, so 52 Reuters R52 examples (26,000 characters) made a dozen
#: of them run for over an hour on 2 cores before the first item; the demo's (9 tweets) and the R8
#: benchmark's (8 newswire examples) fit well inside
LOO_CHAR_BUDGET = 60_000
#: fewer left-out examples than this cannot choose a pooling: equal say instead
MIN_LOO_EXAMPLES = 4
#: folds for cross-fitted refinement
REFINE_FOLDS = 5
_EPS = 1e-6


def log_normalize(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    m = scores.max(axis=-1, keepdims=True)
    return scores - (m + np.log(np.exp(scores - m).sum(axis=-1, keepdims=True)))


def safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=float), _EPS, 1.0))


def pool_prior(probs: np.ndarray) -> np.ndarray:
    """The model's mean label distribution over the pool, renormalised (c in the docstring)."""
    c = np.clip(np.asarray(probs, dtype=float), _EPS, None).mean(axis=0)
    return c / c.sum()


# ---- the probe ----------------------------------------------------------------------------------


def label_anchor_texts(labels: Sequence[Label]) -> list[str]:
    """One text per label for its anchor row: "name: description", or the name alone."""
    texts = []
    for label in labels:
        description = (label.description or "").strip()
        texts.append(f"{label.name}: {description}" if description else label.name)
    return texts


@dataclass(frozen=True)
class Anchors:
    """Rows that are in every fit of the probe and never scored (see the module docstring)."""

    features: np.ndarray
    labels: np.ndarray


class Probe:
    """Logistic regression on L2-normalised features over the full label list (0 for unseen labels,
    smoothed so one missing label cannot veto it in the product); `anchors` join every fit."""

    def __init__(self, n_labels: int, C: float = PROBE_C, seed: int = 0, anchors: Anchors | None = None):
        self.n_labels = n_labels
        self.C = C
        self.seed = seed
        self.anchors = anchors

    def fit(self, features: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Probe:
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if self.anchors is not None and len(self.anchors.labels):
            features = np.vstack([features, self.anchors.features])
            labels = np.concatenate([labels, self.anchors.labels])
            if weights is not None:
                weights = np.concatenate([weights, np.ones(len(self.anchors.labels))])
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            self.model_ = None
            return self
        self.model_ = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        self.model_.fit(features, labels, sample_weight=weights)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        out = np.full((len(features), self.n_labels), 1.0 / self.n_labels)
        if self.model_ is None:
            return out
        proba = self.model_.predict_proba(features)
        out[:] = 0.0
        out[:, self.model_.classes_] = proba
        # a label without trusted examples gets a small share instead of a veto
        out = 0.98 * out + 0.02 / self.n_labels
        return out / out.sum(axis=1, keepdims=True)


#: what builds a probe for n labels: Probe, or functools.partial(Probe, anchors=...)
ProbeFactory = Callable[[int], Probe]


def loo_probe_logq(
    features: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    probe: ProbeFactory = Probe,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Leave-one-out log q(k | x_j) for each trusted row j in `rows` (default: every row), the
    probe refitted on all the other rows."""
    n = len(labels)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=int)
    out = np.empty((len(rows), n_labels))
    for i, j in enumerate(rows):
        keep = np.arange(n) != j
        out[i] = safe_log(
            probe(n_labels).fit(features[keep], labels[keep]).predict_proba(features[j : j + 1])
        )[0]
    return out


def kfold_probe_logq(
    features: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    k: int = 5,
    seed: int = 0,
    probe: ProbeFactory = Probe,
) -> np.ndarray:
    """Out-of-fold log q: leave-one-out for a handful of rows, else k folds (a fit per row costs
    too much past a dozen)."""
    n = len(labels)
    if n <= 12:
        return loo_probe_logq(features, labels, n_labels, probe)
    folds = np.random.default_rng(seed).permutation(n) % k
    out = np.empty((n, n_labels))
    for f in range(k):
        test = folds == f
        out[test] = safe_log(
            probe(n_labels).fit(features[~test], labels[~test]).predict_proba(features[test])
        )
    return out


# ---- pooling --------------------------------------------------------------------------------------


@dataclass
class Pooling:
    """score = a * (log p_llm - log c) + b * log q; `fit_info` says how (a, b) were chosen."""

    a: float = 1.0
    b: float = 0.0
    log_prior: np.ndarray | None = None  # log c, the pool prior (None: no calibration)
    fit_info: str = "default weights"
    table: dict[tuple[float, float], float] = field(default_factory=dict)

    def combine(self, llm_logp: np.ndarray | None, probe_logq: np.ndarray | None) -> np.ndarray:
        """Pooled probabilities (n, K). Either expert may be missing."""
        parts = []
        if llm_logp is not None and self.a > 0:
            cal = llm_logp - (self.log_prior if self.log_prior is not None else 0.0)
            parts.append(self.a * cal)
        if probe_logq is not None and self.b > 0:
            parts.append(self.b * probe_logq)
        if not parts:
            base = llm_logp if llm_logp is not None else probe_logq
            return np.exp(log_normalize(base))
        return np.exp(log_normalize(sum(parts)))

    def describe(self) -> str:
        cal = "divided by its pool prior" if self.log_prior is not None else "no calibration"
        return f"a={self.a:g} (LLM, {cal}), b={self.b:g} (feature probe); {self.fit_info}"


def choose_pooling(
    labels: np.ndarray,
    llm_logp: np.ndarray | None,
    probe_logq: np.ndarray | None,
    log_prior: np.ndarray | None,
    *,
    source: str,
) -> Pooling:
    """The probe's share w and a temperature t (a = t(1-w), b = t w) from held-out scores of the
    trusted labels (rows: their leave-one-out / out-of-fold expert scores).

    w starts at DEFAULT_PROBE_SHARE, the two experts with equal say (the product of two
    conditionally independent views, each with its prior divided out). It moves to the share with
    the best held-out accuracy (the label is the argmax; log-likelihood alone would reward
    flattening a confidently wrong expert towards uniform; ties by log-likelihood) only when that
    share labels clearly more trusted items right: a paired sign test on the rows where the two
    disagree in being right, at MOVE_Z standard errors. A handful of left-out examples
    underrates the probe, which loses a third of a label's examples when one of three is left out
    (docs/benchmarks.md, "Label anchors"), so it cannot move w on a hunch; t only scales the
    confidence."""
    labels = np.asarray(labels)
    n = len(labels)
    if llm_logp is None and probe_logq is None:
        raise ValueError("no expert to pool")
    if llm_logp is None:
        return Pooling(0.0, 1.0, None, f"feature probe only ({n} {source})")
    if probe_logq is None or n == 0:
        return Pooling(1.0, 0.0, log_prior, "LLM only")
    rows = np.arange(n)
    table: dict[tuple[float, float], float] = {}
    scores: dict[float, tuple[float, float, float]] = {}  # w -> (accuracy, log-likelihood, t)
    right: dict[float, np.ndarray] = {}  # w -> which trusted rows it labels right
    for w in W_GRID:
        best_ll, best_t = -np.inf, 1.0
        for t in T_GRID:
            pool = Pooling(t * (1 - w), t * w, log_prior)
            p = pool.combine(llm_logp, probe_logq)
            ll = float(np.log(np.clip(p[rows, labels], 1e-12, 1.0)).mean())
            table[(pool.a, pool.b)] = ll
            right[w] = p.argmax(1) == labels  # the same for every t
            if ll > best_ll:
                best_ll, best_t = ll, t
        scores[w] = (float(right[w].mean()), best_ll, best_t)
    best_w = max(W_GRID, key=lambda w: scores[w][:2])
    wins = int((right[best_w] & ~right[DEFAULT_PROBE_SHARE]).sum())
    losses = int((~right[best_w] & right[DEFAULT_PROBE_SHARE]).sum())
    chosen = best_w if wins - losses >= max(1.0, MOVE_Z * np.sqrt(wins + losses)) else DEFAULT_PROBE_SHARE
    acc, ll, t = scores[chosen]
    versus = f"labels {wins} more and {losses} fewer right than equal say"
    why = versus if chosen != DEFAULT_PROBE_SHARE else f"the default; the best share, {best_w:g}, {versus}"
    info = (
        f"probe share {chosen:g} ({why}), temperature {t:g}, on {n} {source}: held-out accuracy "
        f"{acc:.2f} (calibrated LLM alone {scores[0.0][0]:.2f}, probe alone {scores[1.0][0]:.2f})"
    )
    return Pooling(t * (1 - chosen), t * chosen, log_prior, info, table)


# ---- cross-fitted refinement -------------------------------------------------------------------


def fold_of(item_ids: Sequence[str], k: int = REFINE_FOLDS) -> np.ndarray:
    """A fixed fold per item from a hash of its id: the same split on every run."""
    return np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % k for i in item_ids])


@dataclass
class RefineResult:
    probs: np.ndarray  # (n, K) refined distribution for every item
    poolings: list[Pooling]  # one per fold
    trusted: int


def refine(
    *,
    features: np.ndarray,
    llm_logp: np.ndarray | None,
    log_prior: np.ndarray | None,
    reviewed_idx: np.ndarray,
    reviewed_labels: np.ndarray,
    example_features: np.ndarray,
    example_labels: np.ndarray,
    example_llm_logp: np.ndarray | None,
    folds: np.ndarray,
    probe: ProbeFactory = Probe,
) -> RefineResult:
    """Cross-fitted labels for every item (see the module docstring).

    features (n, d) and llm_logp (n, K) are the pool's; reviewed_idx indexes into the pool;
    example_* are the few-shot examples (example_llm_logp: leave-one-out scores, or None).
    probe: what builds the feature classifier (Probe, with the task's anchors for text; tests pass
    a cheaper one).
    """
    n_labels = (llm_logp.shape[1] if llm_logp is not None else None) or int(
        max(reviewed_labels.max(initial=0), example_labels.max(initial=0)) + 1
    )
    k = int(folds.max()) + 1 if len(folds) else 1
    out = np.empty((len(features), n_labels))
    poolings = []
    rev_fold = folds[reviewed_idx]
    for f in range(k):
        train = reviewed_idx[rev_fold != f]
        train_labels = reviewed_labels[rev_fold != f]
        tx = np.vstack([example_features, features[train]])
        ty = np.concatenate([example_labels, train_labels])
        # held-out expert scores on the training reviews choose this fold's pooling weights
        oof_q = kfold_probe_logq(tx, ty, n_labels, probe=probe)
        t_llm = None
        if llm_logp is not None:
            if example_llm_logp is not None:
                t_llm = np.vstack([example_llm_logp, llm_logp[train]])
                sel_q, sel_y = oof_q, ty
            else:
                t_llm = llm_logp[train]
                sel_q, sel_y = oof_q[len(example_labels) :], train_labels
        else:
            sel_q, sel_y = oof_q, ty
        pooling = choose_pooling(
            sel_y, t_llm, sel_q, log_prior, source=f"trusted labels ({len(train)} reviews from other folds)"
        )
        poolings.append(pooling)
        here = folds == f
        q = safe_log(probe(n_labels).fit(tx, ty).predict_proba(features[here]))
        out[here] = pooling.combine(None if llm_logp is None else llm_logp[here], q)
    return RefineResult(out, poolings, len(reviewed_idx))
