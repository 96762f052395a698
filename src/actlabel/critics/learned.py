"""The learned critic (beyond the paper): one stacked error model over every signal, trained on reviews.

Target: y_i = 1 when the human label differs from the machine label, on reviewed items.
Features per item:
- content: all-MiniLM-L6-v2 embedding of the text fields and/or EfficientNet-Lite0 features of the
  image (models/features.py), cached per content in the project folder;
- the machine confidence (missing -> the mean, plus a missing indicator);
- the machine label, one-hot (annotators err more on some classes);
- the zero-review consistency critic's signals (critics/consistency.py): the out-of-fold
  probability of the machine label under a label model fitted to the machine labels, its
  neighbours' agreement, and the pooled consistency error_prob;
- the error_prob of every LLM critic (strategy, model) that covers at least half of the items,
  as a logit (missing -> that critic's mean).
- a label model's view of the machine label: log p(m_i | x_i) and log max_k p(k | x_i) from a
  second classifier fitted to the *human* labels (below). A linear error model cannot see "the
  content says coat but the label says shirt" from the embedding and the one-hot label side by
  side (that is an interaction); the label model's probability of the machine label is exactly
  that signal, in one number.

Label model: multinomial logistic regression on the content features (projected on their first
128 principal components, fitted on all items), fitted to the reviewed items' human labels plus the
task's few-shot examples, C chosen by cross-validated log-loss. Reviewed items get out-of-fold
probabilities.

Error model: standardised features, logistic regression with balanced classes (errors are the
minority). Three feature sets are tried: the consistency critic and the confidence alone (a
recalibration, best on few reviews), every compact signal, and those plus the raw content
features; the set and C are chosen together by stratified cross-validated AUROC on the reviewed
items. Reviewed items get out-of-fold predictions (a model never scores the items it was fitted
on), the others the model refitted on all reviews. It retrains on every run, so it improves as
reviews arrive.

Reviews chosen by a critic are a biased sample (the suspicious items): each reviewed item is
weighted by 1 / review_prob of the selection that chose it (capped at MAX_WEIGHT times the median
weight, so one lucky draw of a tiny inclusion probability cannot own the fit), both in the fit and
in the reported metrics, which then estimate the critic's quality on the whole dataset. Reviews
made outside any selection count with weight 1 (probability 1: they are not a random draw).

Result: AUROC, AUPRC and precision at the budget (the share of items reviewed so far) of the
out-of-fold error probabilities on the reviewed items, weighted as above: no gold labels needed.

Below MIN_REVIEWED reviews (or MIN_EACH right and wrong ones) there is nothing to fit: the critic
writes the zero-review consistency critic's error probabilities under its own name and says so in
one line, so a pipeline that asks for it works from the first run.

Proposed label: the label model's most probable label when that probability is at least 0.5,
else the machine label (not confident enough to contradict it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel.critics.base import (
    Target,
    clip,
    critic_scores,
    is_derived,
)
from actlabel.critics.content import content_features, example_features, reduce_dims
from actlabel.logistic import logit
from actlabel.store import Store
from actlabel.task import Task

MIN_REVIEWED = 20
MIN_EACH = 5
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: label-model regularisation grid (features are L2-normalised embeddings: small C underfits)
LABEL_C_GRID = (1.0, 10.0, 100.0)
MIN_COVERAGE = 0.5


#: cap on a reviewed item's weight, as a multiple of the median weight (see the module docstring)
MAX_WEIGHT = 20.0


@dataclass
class LearnedInfo:
    reviewed: int
    wrong: int
    cv_auroc: float
    C: float
    features: list[str]
    model: str
    cv_auprc: float = float("nan")
    budget_share: float = float("nan")
    precision_at_budget: float = float("nan")
    weighted: bool = False
    fallback: str = ""

    def summary(self) -> str:
        if self.fallback:
            return self.fallback
        how = "weighted by 1/review_prob" if self.weighted else "unweighted"
        return (
            f"learned error model on {self.reviewed} reviews ({self.wrong} wrong machine labels), "
            f"C={self.C:g}, cross-validated AUROC {self.cv_auroc:.3f}, AUPRC {self.cv_auprc:.3f}, "
            f"precision {self.precision_at_budget:.2f} at the budget ({self.budget_share:.0%} of items) "
            f"on reviewed items, out of fold, {how}; features: {', '.join(self.features)}"
        )


def _fallback_line(reviewed: int, wrong: int) -> str:
    right = reviewed - wrong
    return (
        f"the learned critic trains on reviewed items and has {reviewed} ({wrong} wrong machine labels, "
        f"{right} right); it needs at least {MIN_REVIEWED} with {MIN_EACH} of each, so until then it writes "
        "the zero-review consistency critic's scores (review more items, then run it again)"
    )


def side_features(
    store: Store, task: Task, targets: Sequence[Target], exclude: tuple[str, str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Machine confidence (+ missing flag), one-hot machine label, other critics' logit(error_prob)."""
    n = len(targets)
    cols, names = [], []
    conf = np.array([np.nan if t.confidence is None else t.confidence for t in targets], dtype=float)
    if np.isfinite(conf).any():
        missing = ~np.isfinite(conf)
        cols += [np.where(missing, np.nanmean(conf), conf), missing.astype(float)]
        names.append("machine confidence")
    labels = task.label_names
    onehot = np.zeros((n, len(labels)))
    for i, t in enumerate(targets):
        onehot[i, labels.index(t.machine_label)] = 1.0
    cols += list(onehot.T)
    names.append("machine label")
    ann_ids = {t.item.rowid: t.annotation_id for t in targets}
    for (strategy, model), scores in sorted(critic_scores(store, ann_ids).items()):
        # consistency is recomputed inline (its signals, not only its error_prob, are features)
        if is_derived(strategy) or strategy in ("learned", "consistency") or (strategy, model) == exclude:
            continue
        e = np.array([scores.get(t.item.rowid, (np.nan, None))[0] for t in targets], dtype=float)
        if np.isfinite(e).mean() < MIN_COVERAGE:
            continue
        z = logit(np.where(np.isfinite(e), e, 0.5))
        z[~np.isfinite(e)] = z[np.isfinite(e)].mean()
        cols.append(z)
        names.append(f"{strategy} critic")
    return np.column_stack(cols) if cols else np.zeros((n, 0)), names


def _pipeline(C: float, seed: int, balanced: bool = True) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=C, class_weight="balanced" if balanced else None, max_iter=3000, random_state=seed
        ),
    )


def _folds(y: np.ndarray, k: int, seed: int) -> Any:
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def fit_error_model(
    candidates: dict[str, np.ndarray],
    y: np.ndarray,
    reviewed: np.ndarray,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float, str]:
    """(error_prob for every row, chosen C, cross-validated AUROC, chosen feature set).

    `candidates` maps a feature-set name to its matrix (all rows); the set and C with the best
    cross-validated (weighted) AUROC on the reviewed rows win. Reviewed rows are scored out of fold.
    `weights`: one per reviewed row (1/review_prob), used in the fit and in the AUROC.
    """
    w = np.ones(y.size) if weights is None else np.asarray(weights, dtype=float)
    k = int(min(5, y.sum(), (~y).sum()))
    folds = list(_folds(y, k, seed).split(np.zeros(y.size), y))
    best: tuple[float, float, str, np.ndarray] | None = None
    for name, X in candidates.items():
        Xr = X[reviewed]
        for C in C_GRID:
            oof = np.zeros(y.size)
            for tr, te in folds:
                model = _pipeline(C, seed).fit(Xr[tr], y[tr], logisticregression__sample_weight=w[tr])
                oof[te] = model.predict_proba(Xr[te])[:, 1]
            auc = weighted_auroc(oof, y, w)
            if best is None or auc > best[0] + 1e-9:
                best = (auc, C, name, oof)
    assert best is not None
    auc, C, name, oof = best
    X = candidates[name]
    e = _pipeline(C, seed).fit(X[reviewed], y, logisticregression__sample_weight=w).predict_proba(X)[:, 1]
    e[reviewed] = oof
    return e, C, float(auc), name


def weighted_auroc(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score, sample_weight=w))


def weighted_auprc(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    if not y.any():
        return float("nan")
    return float(average_precision_score(y, score, sample_weight=w))


def weighted_precision_at(score: np.ndarray, y: np.ndarray, w: np.ndarray, share: float) -> float:
    """Share of errors among the top `share` of the (weighted) items by score: with weights
    1/review_prob the reviewed items stand for the whole dataset, so this estimates the precision
    of reviewing the top `share` of all items. Ties at the cut count in proportion."""
    order = np.argsort(-score, kind="mergesort")
    s, yy, ww = score[order], y[order].astype(float), w[order]
    mass = share * ww.sum()
    if mass <= 0:
        return float("nan")
    hits = taken = 0.0
    start = 0
    while start < s.size and taken < mass - 1e-12:
        end = start
        while end < s.size and s[end] == s[start]:
            end += 1
        gw, ge = ww[start:end].sum(), (ww[start:end] * yy[start:end]).sum()
        f = min(1.0, (mass - taken) / gw) if gw > 0 else 1.0
        taken += f * gw
        hits += f * ge
        start = end
    return hits / taken if taken > 0 else float("nan")


def review_weights(store: Store, rowids: Sequence[int]) -> tuple[np.ndarray, bool]:
    """(1/review_prob per reviewed row, capped; whether any weight differs from 1). The
    probability is that of the latest selection that chose the item; reviews no selection asked for
    count as probability 1."""
    pis = {r: pi for r, (_selected, pi) in store.current_selections(chosen_only=True).items()}
    p = np.array([pis.get(r) or 1.0 for r in rowids], dtype=float)
    w = 1.0 / np.clip(p, 1e-9, 1.0)
    if w.size:
        w = np.minimum(w, MAX_WEIGHT * float(np.median(w)))
    return w, bool(w.size and np.ptp(w) > 1e-12)


def fit_label_model(
    X: np.ndarray,
    labels: Sequence[int],
    reviewed: np.ndarray,
    n_labels: int,
    extra_X: np.ndarray | None = None,
    extra_labels: Sequence[int] = (),
    seed: int = 0,
) -> np.ndarray:
    """(n, K) label probabilities from a classifier on the reviewed rows' human labels (`labels`,
    one per reviewed row, as label indices) plus extra labelled rows (few-shot examples).
    Reviewed rows get out-of-fold probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    y = np.asarray(labels, dtype=int)
    Xr = X[reviewed]
    ex_X = extra_X if extra_X is not None and len(extra_labels) else np.zeros((0, X.shape[1]))
    ex_y = np.asarray(extra_labels, dtype=int)
    proba = np.zeros((X.shape[0], n_labels))
    seen = np.unique(np.concatenate([y, ex_y]))
    if seen.size == 1:
        proba[:, seen[0]] = 1.0
        return proba

    def fit(C: float, rows_X: np.ndarray, rows_y: np.ndarray) -> Any:
        fx, fy = np.vstack([rows_X, ex_X]), np.concatenate([rows_y, ex_y])
        if np.unique(fy).size == 1:
            return int(fy[0])
        return LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(fx, fy)

    def predict(model: Any, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((rows.shape[0], n_labels))
        if isinstance(model, int):
            out[:, model] = 1.0
        else:
            out[:, model.classes_] = model.predict_proba(rows)
        return out

    folds = list(KFold(n_splits=min(5, len(y)), shuffle=True, random_state=seed).split(Xr))
    best: tuple[float, float, np.ndarray] | None = None
    for C in LABEL_C_GRID:
        oof = np.zeros((len(y), n_labels))
        for tr, te in folds:
            oof[te] = predict(fit(C, Xr[tr], y[tr]), Xr[te])
        loss = -float(np.mean(np.log(np.clip(oof[np.arange(len(y)), y], 1e-6, 1.0))))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, C, oof)
    assert best is not None
    _loss, C, oof = best
    proba = predict(fit(C, Xr, y), X)
    proba[reviewed] = oof
    return proba


def learned_critique(
    store: Store, targets: Sequence[Target], *, run_id: int, seed: int = 0
) -> tuple[list[dict[str, Any]], LearnedInfo]:
    """Critique records for every target from an error model fitted on the reviewed ones (or the
    consistency critic's, below the minimum of reviews)."""
    from actlabel.critics.consistency import consistency_records, consistency_signals

    task = store.task
    names = task.label_names
    reviews = store.current_reviews()
    reviewed = np.array([t.item.rowid in reviews for t in targets])
    y = np.array([reviews[t.item.rowid] != t.machine_label for t in targets if t.item.rowid in reviews])
    n_rev, n_wrong = int(reviewed.sum()), int(y.sum())
    content, content_names = content_features(task, targets, store.root)
    sig = consistency_signals(store, targets, seed=seed, content=(content, content_names))
    if n_rev < MIN_REVIEWED or n_wrong < MIN_EACH or n_rev - n_wrong < MIN_EACH:
        line = _fallback_line(n_rev, n_wrong)
        model_name = "learned/consistency-fallback"
        records = consistency_records(
            store,
            targets,
            sig,
            run_id=run_id,
            strategy="learned",
            model=model_name,
            prefix=f"zero-review fallback ({n_rev} reviews): ",
        )
        return records, LearnedInfo(n_rev, n_wrong, float("nan"), 0.0, [], model_name, fallback=line)
    side, side_names = side_features(store, task, targets)
    cons, cons_names = sig.features()
    ex_X, ex_labels = example_features(task, content_names, store.root)
    content, ex_X = reduce_dims(content, ex_X, seed)
    human = [names.index(reviews[t.item.rowid]) for t in targets if t.item.rowid in reviews]
    proba = fit_label_model(
        content, human, reviewed, len(names), ex_X, [names.index(lab) for lab in ex_labels], seed
    )
    m_idx = np.array([names.index(t.machine_label) for t in targets])
    p_machine = proba[np.arange(len(targets)), m_idx]
    label_feats = np.column_stack(
        [np.log(np.clip(p_machine, 1e-4, 1.0)), np.log(np.clip(proba.max(axis=1), 1e-4, 1.0))]
    )
    compact = np.hstack([label_feats, cons, side])
    conf_cols = side[:, :2] if side_names[:1] == ["machine confidence"] else np.zeros((len(targets), 0))
    rowids = [t.item.rowid for t in targets if t.item.rowid in reviews]
    weights, weighted = review_weights(store, rowids)
    e, C, auc, chosen = fit_error_model(
        {
            "consistency": np.hstack([cons[:, -1:], conf_cols]),
            "compact": compact,
            "with content": np.hstack([content, compact]),
        },
        y,
        reviewed,
        seed,
        weights,
    )
    used = {
        "consistency": cons_names + side_names[:1] * (conf_cols.shape[1] > 0),
        "compact": ["label model"] + cons_names + side_names,
        "with content": content_names + ["label model"] + cons_names + side_names,
    }[chosen]
    model_name = "learned/" + "+".join(content_names) + "+logreg"
    share = n_rev / len(targets)
    oof = e[reviewed]
    info = LearnedInfo(
        n_rev,
        n_wrong,
        auc,
        C,
        used,
        model_name,
        cv_auprc=weighted_auprc(oof, y, weights),
        budget_share=share,
        precision_at_budget=weighted_precision_at(oof, y, weights, share),
        weighted=weighted,
    )
    records = []
    for i, t in enumerate(targets):
        best = int(proba[i].argmax())
        confident = proba[i, best] >= 0.5
        proposed = names[best] if confident else t.machine_label
        note = (
            f"suggests {names[best]!r} ({proba[i, best]:.2f})"
            if confident and names[best] != t.machine_label
            else ""
        )
        rationale = f"P(wrong)={e[i]:.2f} from an error model fitted on {n_rev} reviews (CV AUROC {auc:.2f})"
        records.append(
            {
                "item_rowid": t.item.rowid,
                "run_id": run_id,
                "model": model_name,
                "strategy": "learned",
                "error_prob": float(e[i]),
                "proposed_label": proposed,
                "rationale": clip(rationale + (f"; label model {note}" if note else "")),
                "raw": json.dumps(
                    {
                        "annotation_id": t.annotation_id,
                        "machine_label": t.machine_label,
                        "out_of_fold": bool(reviewed[i]),
                        "consistency_error_prob": round(float(sig.error_prob[i]), 4),
                        "label_probs": {n: round(float(p), 4) for n, p in zip(names, proba[i], strict=True)},
                    }
                ),
                "status": "ok",
            }
        )
    return records, info
