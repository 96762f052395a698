"""The ensemble critic: several critics (strategies and/or models) combined into one error_prob.

Members: the latest ok critique of each (strategy, model) already in the project, made on the
current machine label, covering at least half of the items; ensembles and calibrated copies are
never members. `members` narrows them: `cot` (every model that ran cot) or `cot@MODEL`.

Rule:
- default, mean of logits: e = sigmoid( mean_j logit(e_j) ) over the members that scored the item.
  Averaging in logit space lets a confident member move the result more than an unsure one, and
  is the maximum-likelihood pooling of independent log-odds estimates up to a scale.
- stacked, once at least STACK_MIN_REVIEWED items are reviewed with STACK_MIN_EACH of each outcome:
  a logistic regression on the members' logits fitted to y = (human label != machine label);
  reviewed items are scored out of fold. It learns which critic to trust on this dataset, which
  the paper says varies (insight 4).
Proposed label: when e < 0.5 the machine label; else the label most members proposed other than
the machine label (ties: the proposal of the member with the highest error_prob).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel.critics.base import Target, clip, critic_scores, is_derived
from actlabel.errors import UserError
from actlabel.logistic import logit, sigmoid
from actlabel.store import Store

STACK_MIN_REVIEWED = 30
STACK_MIN_EACH = 5
MIN_COVERAGE = 0.5


@dataclass
class EnsembleInfo:
    members: list[tuple[str, str]]
    rule: str
    model: str

    def summary(self) -> str:
        names = ", ".join(f"{s} ({m})" for s, m in self.members)
        return f"ensemble of {len(self.members)} critics by {self.rule}: {names}"


def _matches(member: tuple[str, str], wanted: Sequence[str]) -> bool:
    strategy, model = member
    for w in wanted:
        name, _, spec = w.partition("@")
        if name == strategy and (not spec or spec == model):
            return True
    return False


def ensemble_critique(
    store: Store,
    targets: Sequence[Target],
    *,
    run_id: int,
    members: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], EnsembleInfo]:
    n = len(targets)
    ann_ids = {t.item.rowid: t.annotation_id for t in targets}
    scores = critic_scores(store, ann_ids)
    candidates = []
    for key, by_item in sorted(scores.items()):
        if is_derived(key[0]):
            continue
        coverage = sum(t.item.rowid in by_item for t in targets) / max(1, n)
        if coverage >= MIN_COVERAGE and (not members or _matches(key, members)):
            candidates.append(key)
    if members:
        unknown = [w for w in members if not any(_matches(c, [w]) for c in candidates)]
        if unknown:
            raise UserError(
                f"ensemble member(s) {', '.join(unknown)} have no current critiques on at least half the items; "
                "run those strategies first (actlabel critique DIR --strategy NAME)"
            )
    if len(candidates) < 2:
        have = ", ".join(f"{s} ({m})" for s, m in candidates) or "none"
        raise UserError(
            f"the ensemble critic combines at least two critics and found {len(candidates)} ({have}); "
            "run more strategies or models first (actlabel critique DIR --strategy cot, logit, ...)"
        )
    E = np.full((n, len(candidates)), np.nan)
    P: list[list[str | None]] = [[None] * len(candidates) for _ in range(n)]
    for j, key in enumerate(candidates):
        for i, t in enumerate(targets):
            hit = scores[key].get(t.item.rowid)
            if hit is not None:
                E[i, j], P[i][j] = hit
    Z = logit(np.where(np.isfinite(E), E, 0.5))
    Z[~np.isfinite(E)] = np.nan
    row_mean = np.nanmean(np.where(np.isfinite(Z), Z, np.nan), axis=1)
    row_mean = np.where(np.isfinite(row_mean), row_mean, 0.0)
    Zf = np.where(np.isfinite(Z), Z, row_mean[:, None])  # a missing member counts as the others' mean
    reviews = store.current_reviews()
    reviewed = np.array([t.item.rowid in reviews for t in targets])
    y = np.array([reviews[t.item.rowid] != t.machine_label for t in targets if t.item.rowid in reviews])
    n_rev, n_wrong = int(reviewed.sum()), int(y.sum()) if y.size else 0
    if n_rev >= STACK_MIN_REVIEWED and min(n_wrong, n_rev - n_wrong) >= STACK_MIN_EACH:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        model = LogisticRegression(C=1.0, max_iter=2000)
        k = int(min(5, n_wrong, n_rev - n_wrong))
        oof = cross_val_predict(
            model,
            Zf[reviewed],
            y,
            cv=StratifiedKFold(k, shuffle=True, random_state=seed),
            method="predict_proba",
        )[:, 1]
        e = model.fit(Zf[reviewed], y).predict_proba(Zf)[:, 1]
        e[reviewed] = oof
        rule = f"a logistic regression stacked on {n_rev} reviews"
    else:
        e = sigmoid(row_mean)
        rule = "the mean of logits"
    model_name = f"ensemble/{len(candidates)}-critics"
    records = []
    for i, t in enumerate(targets):
        proposed: str | None = t.machine_label
        if e[i] >= 0.5:
            others = [p for p in P[i] if p is not None and p != t.machine_label]
            if others:
                counts = Counter(others).most_common()
                top = [lab for lab, c in counts if c == counts[0][1]]
                if len(top) > 1:  # tie: the proposal of the most alarmed member among the tied labels
                    order = np.argsort(-np.nan_to_num(E[i], nan=-1))
                    top = [P[i][j] for j in order if P[i][j] in top][:1]
                proposed = top[0]
            else:
                proposed = None
        parts = [f"{s} {E[i, j]:.2f}" for j, (s, _m) in enumerate(candidates) if np.isfinite(E[i, j])]
        records.append(
            {
                "item_rowid": t.item.rowid,
                "run_id": run_id,
                "model": model_name,
                "strategy": "ensemble",
                "error_prob": float(e[i]),
                "proposed_label": proposed,
                "rationale": clip(f"P(wrong)={e[i]:.2f} by {rule} of: " + ", ".join(parts)),
                "raw": json.dumps(
                    {
                        "annotation_id": t.annotation_id,
                        "machine_label": t.machine_label,
                        "members": [f"{s}@{m}" for s, m in candidates],
                        "member_error_probs": [
                            None if not np.isfinite(v) else round(float(v), 6) for v in E[i]
                        ],
                    }
                ),
                "status": "ok",
            }
        )
    return records, EnsembleInfo(candidates, rule, model_name)
