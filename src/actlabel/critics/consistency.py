"""The consistency critic (beyond the paper): error probabilities from the data alone, with no review.

The idea of confident learning (Northcutt, Jiang and Chuang, JAIR 2021), written here from the
paper: a model that never saw an item, trained on the other items' (noisy) machine labels,
disagrees with the item's machine label more often when that label is wrong. Three views (four for images) of each
item i with machine label m_i give a distribution over the K labels:

- label model: multinomial logistic regression on frozen content features (MiniLM text
  embeddings, EfficientNet-Lite0 image features, projected on their first principal components),
  fitted to the machine labels plus the task's few-shot examples (trusted, so they are in every
  training fold), K-fold cross-fitted: p_lm(i) comes from the model that did not see item i;
- neighbours: the machine labels of the item's KNN nearest neighbours (cosine similarity on the
  same features), Laplace-smoothed towards the label frequencies; for images also the neighbours
  by raw grey-scale thumbnail pixels, a view whose mistakes differ from the deep features';
- annotator: its own label-probability vector where the annotation stored one (the annotations'
  `probs` column; older projects: the image and composite annotators' label -> probability in
  `raw`), else its confidence on m_i with the rest spread evenly; no view when it gave neither.

They are pooled as a product of experts, q_i(k) ~ prod_v p_v(i, k) (independent evidence adds in
log space), then normalised per class as confident learning does: t_k = mean of q_i(k) over the
items whose machine label is k (the per-class threshold), q'_i(k) ~ q_i(k) / t_k. Without it a
class the models find hard (low self-confidence everywhere) would be flagged wholesale.
error_raw_i = 1 - q'_i(m_i) ranks the items.

Turning the ranking into probabilities: confident learning counts an item as a label error when
some other class k clears its threshold (q_i(k) >= t_k) and is the most probable of those that do
(the off-diagonal of the "confident joint"). That count estimates how many machine labels are
wrong. One shift b on the logit scale, error_prob = sigmoid(logit(error_raw) + b), makes the
probabilities sum to it, keeping the ranking. With the annotator's confidence available the
estimate is the mean of the two counts (the annotator's expected errors sum(1 - confidence) is the
other), since the confident joint alone under-counts errors the label model learned to repeat.

Proposed label: the pooled argmax when it is not the machine label and its normalised probability
is at least 0.5 (a confident disagreement), else the machine label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel.critics.base import Target, clip
from actlabel.critics.content import content_features, example_features, reduce_dims
from actlabel.errors import UserError
from actlabel.logistic import logit, sigmoid
from actlabel.store import Store

#: folds of the cross-fitted label model
N_FOLDS = 5
#: nearest neighbours whose machine labels vote (20 beat 5 and 10 on Fashion-MNIST and tweets)
KNN = 20
#: the label model's regularisation: fixed rather than cross-validated, since a search would pick
#: the C that best reproduces the machine labels, errors included (C=3 was best for error
#: detection on Fashion-MNIST among 0.3..10, and costs a few seconds on 1000 items)
LABEL_C = 3.0
#: side of the grey-scale thumbnail whose pixels are a second, independent view of an image
THUMB = 28
#: fewest items the critic can cross-fit on (below, every fold would be a handful of items)
MIN_ITEMS = 20
#: probabilities are clipped here before logs: no single view can veto a label
EPS = 1e-3


@dataclass
class ConsistencySignals:
    """Per-item views (n x K arrays over task.label_names) and the pooled result."""

    label_model: np.ndarray
    neighbours: np.ndarray
    votes: np.ndarray  # neighbours' machine labels, counted
    annotator: np.ndarray | None
    pixels: np.ndarray | None  # neighbours by thumbnail pixels (images only)
    pooled: np.ndarray  # after the per-class threshold normalisation
    machine: np.ndarray  # label index of each item's machine label
    error_prob: np.ndarray
    estimated_errors: float
    views: list[str]
    content: list[str]

    @property
    def model(self) -> str:
        return "consistency/" + "+".join(self.content) + "+knn"

    def own(self, probs: np.ndarray) -> np.ndarray:
        return probs[np.arange(self.machine.size), self.machine]

    def features(self) -> tuple[np.ndarray, list[str]]:
        """Columns for a stacked critic: the views' log-probability of the machine label, the label
        model's top probability, and logit(error_prob)."""
        cols = [
            np.log(np.clip(self.own(self.label_model), EPS, 1.0)),
            np.log(np.clip(self.label_model.max(axis=1), EPS, 1.0)),
            np.log(np.clip(self.own(self.neighbours), EPS, 1.0)),
            logit(self.error_prob),
        ]
        if self.pixels is not None:
            cols.append(np.log(np.clip(self.own(self.pixels), EPS, 1.0)))
        return np.column_stack(cols), ["consistency critic (label model, neighbours, pooled)"]

    def summary(self) -> str:
        n = self.machine.size
        return (
            f"consistency critic on {n} items (no reviews): {' x '.join(self.views)} on "
            f"{'+'.join(self.content)}; an estimated {self.estimated_errors:.0f} wrong machine labels "
            f"({self.estimated_errors / max(n, 1):.1%})"
        )


def annotator_probs(targets: Sequence[Target], store: Store, names: Sequence[str]) -> np.ndarray | None:
    """(n, K) the annotator's label distribution per item, or None when it gave no confidences."""
    # Projects made before the `probs` column existed keep the distribution in `raw` only.
    stored = store.annotations_by_id((t.annotation_id for t in targets), ("probs", "raw"))
    out = np.zeros((len(targets), len(names)))
    index = {n: k for k, n in enumerate(names)}
    have = False
    for i, t in enumerate(targets):
        probs_json, raw = stored.get(t.annotation_id, (None, None))
        probs = _probs_in_raw(probs_json, index)
        if probs is None:
            probs = _probs_in_raw(raw, index)
        if probs is not None:
            out[i] = probs
            have = True
        elif t.confidence is not None:
            c = min(max(float(t.confidence), 0.0), 1.0)
            out[i] = (1.0 - c) / max(len(names) - 1, 1)
            out[i, index[t.machine_label]] = c
            have = True
        else:
            out[i] = 1.0 / len(names)  # no evidence either way for this item
    return out if have else None


def _probs_in_raw(raw: str | None, index: dict[str, int]) -> np.ndarray | None:
    """label -> probability in a JSON object: the whole object (the `probs` column, the image
    annotator's raw), or under 'pooled' (image+text composite) or 'probs'/'probabilities'."""
    if not raw or not raw.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in ("probs", "probabilities", "pooled"):
        if isinstance(doc.get(key), dict):
            doc = doc[key]
            break
    if not doc or set(doc) - set(index):
        return None
    vec = np.zeros(len(index))
    for name, value in doc.items():
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            return None
        vec[index[name]] = value
    total = vec.sum()
    return vec / total if total > 0 else None


def neighbour_probs(
    X: np.ndarray, machine: np.ndarray, n_labels: int, k: int = KNN
) -> tuple[np.ndarray, np.ndarray]:
    """((n, K) the machine labels of each item's k nearest neighbours (cosine), itself left out,
    smoothed with one pseudo-vote spread by the label frequencies; (n, K) the raw vote counts)."""
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    k = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(X)
    idx = nn.kneighbors(X, return_distance=False)
    votes = np.zeros((n, n_labels))
    for i in range(n):
        # itself is usually first, but exact duplicates may come first instead: drop by index
        row = [j for j in idx[i] if j != i][:k]
        np.add.at(votes[i], machine[row], 1.0)
    prior = np.bincount(machine, minlength=n_labels) / n
    return (votes + prior) / (k + 1.0), votes


def label_model_probs(
    X: np.ndarray,
    machine: np.ndarray,
    n_labels: int,
    extra_X: np.ndarray | None,
    extra_y: Sequence[int],
    seed: int = 0,
) -> np.ndarray:
    """(n, K) out-of-fold probabilities of a classifier fitted to the machine labels (plus the
    trusted few-shot examples in every training fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    n = X.shape[0]
    ex_X = extra_X if extra_X is not None and len(extra_y) else np.zeros((0, X.shape[1]))
    ex_y = np.asarray(extra_y, dtype=int)
    proba = np.zeros((n, n_labels))
    for train, test in KFold(min(N_FOLDS, n), shuffle=True, random_state=seed).split(X):
        fy = np.concatenate([machine[train], ex_y])
        if np.unique(fy).size == 1:
            proba[test, fy[0]] = 1.0
            continue
        model = LogisticRegression(C=LABEL_C, max_iter=500, random_state=seed)
        model.fit(np.vstack([X[train], ex_X]), fy)
        proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test])
    return proba


def thumbnails(targets: Sequence[Target]) -> np.ndarray | None:
    """Centred, L2-normalised grey-scale THUMB x THUMB pixels of each image (None without images).

    Errors of an annotator built on deep features are partly invisible in those features (it drew
    its boundary there); raw pixels make different mistakes: on Fashion-MNIST their neighbours'
    agreement alone scores AUROC 0.82, the EfficientNet neighbours 0.79."""
    from PIL import Image, ImageOps

    paths = [t.item.image_path for t in targets]
    if not any(paths):
        return None
    out = np.zeros((len(paths), THUMB * THUMB), dtype=np.float32)
    for i, path in enumerate(paths):
        if not path:
            continue
        try:
            with Image.open(path) as img:
                small = (
                    ImageOps.exif_transpose(img)
                    .convert("L")
                    .resize((THUMB, THUMB), Image.Resampling.BILINEAR)
                )
                out[i] = np.asarray(small, dtype=np.float32).ravel() / 255.0
        except OSError as exc:
            raise UserError(f"item {targets[i].item.item_id}: cannot read image {path}: {exc}") from None
    out -= out.mean(axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def pool(views: Sequence[np.ndarray], machine: np.ndarray) -> np.ndarray:
    """Product of experts, then the confident-learning per-class normalisation (see module doc)."""
    logq = sum(np.log(np.clip(v, EPS, 1.0)) for v in views)
    q = np.exp(logq - logq.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    t = class_thresholds(q, machine)
    adj = q / t
    return adj / adj.sum(axis=1, keepdims=True)


def class_thresholds(q: np.ndarray, machine: np.ndarray) -> np.ndarray:
    """t_k = mean q_i(k) over items labelled k (a class nobody was given keeps the overall mean)."""
    n_labels = q.shape[1]
    t = np.empty(n_labels)
    for k in range(n_labels):
        rows = machine == k
        t[k] = q[rows, k].mean() if rows.any() else q[:, k].mean()
    return np.maximum(t, EPS)


def confident_joint_errors(q: np.ndarray, machine: np.ndarray) -> int:
    """Items whose most probable above-threshold class is not their machine label."""
    t = class_thresholds(q, machine)
    above = q >= t
    masked = np.where(above, q, -1.0)
    best = masked.argmax(axis=1)
    return int(np.sum(above.any(axis=1) & (best != machine)))


def calibrate_to_count(raw: np.ndarray, expected: float) -> np.ndarray:
    """sigmoid(logit(raw) + b) with b chosen so the probabilities sum to `expected` (bisection)."""
    n = raw.size
    target = min(max(expected, 0.5), n - 0.5)
    z = logit(raw)
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if sigmoid(z + mid).sum() < target:
            lo = mid
        else:
            hi = mid
    return sigmoid(z + (lo + hi) / 2)


def consistency_signals(
    store: Store, targets: Sequence[Target], *, seed: int = 0, content: tuple | None = None
) -> ConsistencySignals:
    """Every view and the pooled error probabilities for `targets` (see the module docstring).

    `content`: (features, names) already computed by the caller (the learned critic shares them).
    """
    task = store.task
    names = task.label_names
    n = len(targets)
    if n < MIN_ITEMS:
        raise UserError(
            f"the consistency critic learns from the other items' machine labels and has {n}; it needs "
            f"at least {MIN_ITEMS} annotated items: annotate more, or use an LLM critic (--strategy cot)"
        )
    X, content_names = content if content is not None else content_features(task, targets, store.root)
    machine = np.array([names.index(t.machine_label) for t in targets])
    ex_X, ex_labels = example_features(task, content_names, store.root)
    Xr, ex_r = reduce_dims(X, ex_X, seed)
    ex_y = [names.index(lab) for lab in ex_labels]
    p_lm = label_model_probs(Xr, machine, len(names), ex_r, ex_y, seed)
    p_nn, votes = neighbour_probs(X, machine, len(names))
    p_ann = annotator_probs(targets, store, names)
    views, view_names = [p_lm, p_nn], ["label model", f"{KNN} neighbours"]
    thumbs = thumbnails(targets)
    p_px = None if thumbs is None else neighbour_probs(thumbs, machine, len(names))[0]
    if p_px is not None:
        views.append(p_px)
        view_names.append(f"{KNN} pixel neighbours")
    if p_ann is not None:
        views.append(p_ann)
        view_names.append("annotator")
    q = pool(views, machine)
    raw = 1.0 - q[np.arange(n), machine]
    expected = float(confident_joint_errors(q, machine))
    if p_ann is not None:
        expected = (expected + float((1.0 - p_ann[np.arange(n), machine]).sum())) / 2
    e = calibrate_to_count(raw, expected)
    return ConsistencySignals(
        p_lm, p_nn, votes, p_ann, p_px, q, machine, e, expected, view_names, content_names
    )


def rationale(sig: ConsistencySignals, i: int, names: Sequence[str]) -> str:
    m = int(sig.machine[i])
    lm_best = int(sig.label_model[i].argmax())
    k = int(sig.votes[i].sum())
    parts = [f"P(wrong)={sig.error_prob[i]:.2f}"]
    if lm_best != m:
        parts.append(
            f"a model of the other items' labels says {names[lm_best]!r} {sig.label_model[i, lm_best]:.2f} "
            f"vs {names[m]!r} {sig.label_model[i, m]:.2f}"
        )
    else:
        parts.append(f"a model of the other items' labels agrees ({sig.label_model[i, m]:.2f})")
    parts.append(f"{sig.votes[i, m]:.0f} of {k} nearest neighbours share the label")
    if sig.annotator is not None:
        parts.append(f"annotator {sig.annotator[i, m]:.2f}")
    return clip("; ".join(parts))


def proposal(sig: ConsistencySignals, i: int, names: Sequence[str]) -> str:
    best = int(sig.pooled[i].argmax())
    if best != sig.machine[i] and sig.pooled[i, best] >= 0.5:
        return names[best]
    return names[int(sig.machine[i])]


def consistency_critique(
    store: Store, targets: Sequence[Target], *, run_id: int, seed: int = 0
) -> tuple[list[dict[str, Any]], ConsistencySignals]:
    """Critique records for every target, from the machine labels alone."""
    sig = consistency_signals(store, targets, seed=seed)
    return consistency_records(store, targets, sig, run_id=run_id, strategy="consistency"), sig


def consistency_records(
    store: Store,
    targets: Sequence[Target],
    sig: ConsistencySignals,
    *,
    run_id: int,
    strategy: str,
    model: str | None = None,
    prefix: str = "",
) -> list[dict[str, Any]]:
    names = store.task.label_names
    model = model or sig.model
    records = []
    for i, t in enumerate(targets):
        records.append(
            {
                "item_rowid": t.item.rowid,
                "run_id": run_id,
                "model": model,
                "strategy": strategy,
                "error_prob": float(sig.error_prob[i]),
                "proposed_label": proposal(sig, i, names),
                "rationale": clip(prefix + rationale(sig, i, names)),
                "raw": json.dumps(
                    {
                        "annotation_id": t.annotation_id,
                        "machine_label": t.machine_label,
                        "label_model": round(float(sig.own(sig.label_model)[i]), 4),
                        "neighbours": round(float(sig.own(sig.neighbours)[i]), 4),
                        "annotator": None
                        if sig.annotator is None
                        else round(float(sig.own(sig.annotator)[i]), 4),
                        "pooled": {n: round(float(p), 4) for n, p in zip(names, sig.pooled[i], strict=True)},
                    }
                ),
                "status": "ok",
            }
        )
    return records
