"""The per-label critic of multi-label tasks: an error probability per label and per item.

Label l of an item was decided by p_l > 0.5, where p_l is the annotator's probability that l
applies (multilabel_annotate.py). Read as calibrated, the decision is wrong with probability
e_l = min(p_l, 1 - p_l); the item's error probability, the chance that any label is wrong, is
1 - prod_l (1 - e_l) with the labels taken as independent (multilabel.item_error_prob). That
item-level number is what selection ranks and draws by, as for single-label tasks.

The e_l are kept in the critique's raw JSON (`label_error_probs`) for the report's per-label AUROC
and for reviewers; the rationale names the least sure labels. No model calls: every run rescores
every current machine label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel import multilabel
from actlabel.critics.base import Target
from actlabel.store import Store

STRATEGY = "per-label"
SHOWN_LABELS = 3


@dataclass
class PerLabelInfo:
    items: int
    unscored: int
    mean_error_prob: float
    model: str = "annotator-probabilities"

    def summary(self) -> str:
        text = (
            f"per-label critic on {self.items} items from the annotator's per-label probabilities: "
            f"mean P(any label wrong) {self.mean_error_prob:.3f}"
        )
        if self.unscored:
            text += f"; {self.unscored} items had no per-label probabilities (P(wrong) 0.5 per label assumed)"
        return text


def label_error_probs(p_yes: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p_yes, dtype=float), 0.0, 1.0)
    return np.minimum(p, 1.0 - p)


def per_label_critique(
    store: Store, targets: Sequence[Target], *, run_id: int
) -> tuple[list[dict[str, Any]], PerLabelInfo]:
    names = store.task.label_names
    probs = {
        i: p for i, (p,) in store.annotations_by_id((t.annotation_id for t in targets), ("probs",)).items()
    }
    records, unscored, total = [], 0, 0.0
    for t in targets:
        raw = probs.get(t.annotation_id)
        if raw:
            p = json.loads(raw)
            e = label_error_probs(np.array([float(p.get(n, 0.5)) for n in names]))
        else:
            unscored += 1
            e = np.full(len(names), 0.5)
        item_e = float(multilabel.item_error_prob(e))
        total += item_e
        order = np.argsort(-e, kind="stable")[:SHOWN_LABELS]
        shown = ", ".join(f"{names[j]} (P(wrong) {e[j]:.2f})" for j in order if e[j] > 0.05)
        records.append(
            {
                "item_rowid": t.item.rowid,
                "run_id": run_id,
                "model": PerLabelInfo.model,
                "strategy": STRATEGY,
                "error_prob": item_e,
                "proposed_label": t.machine_label,
                "rationale": f"least sure: {shown}" if shown else "every label decided with confidence",
                "raw": json.dumps(
                    {
                        "annotation_id": t.annotation_id,
                        "machine_label": t.machine_label,
                        "label_error_probs": {n: round(float(v), 6) for n, v in zip(names, e, strict=True)},
                    }
                ),
                "status": "ok",
            }
        )
    info = PerLabelInfo(len(targets), unscored, total / max(1, len(targets)))
    return records, info


def current_label_error_probs(store: Store) -> dict[int, np.ndarray]:
    """item_rowid -> e_l per label (task order) of the item's latest ok per-label critique."""
    names = store.task.label_names
    out = {}
    for rowid, (raw,) in store.latest(
        "critiques", ("raw",), f"status = 'ok' AND strategy = '{STRATEGY}'"
    ).items():
        doc = json.loads(raw or "{}").get("label_error_probs")
        if doc:
            out[rowid] = np.array([float(doc[n]) for n in names])
    return out
