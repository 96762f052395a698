"""The annotator-confidence critic: error_prob = 1 - the annotator's own probability of its label.

No model call and no features: it reads what `annotate` stored (the label distribution in the
`probs` column, else the confidence of the label) and streams it, so its time is linear in the
items and its memory a batch, at a million items as at a thousand. It is the baseline every other
critic must beat; with a calibrated annotator it is already a fair ranking. Items whose annotation
holds no confidence get 1 - 1/K (no evidence either way); a project with no confidence at all is
refused, since every item would tie.

proposed_label: the annotator's most probable label (it may differ from the machine label when a
label model or refinement changed it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel.critics.base import clip
from actlabel.errors import UserError
from actlabel.store import Store

MODEL = "annotator-confidence"
BATCH = 20000


@dataclass
class ConfidenceInfo:
    items: int = 0
    without_confidence: int = 0
    expected_errors: float = 0.0
    model: str = MODEL

    def summary(self) -> str:
        missing = (
            f"; {self.without_confidence} without a confidence (1 - 1/K)" if self.without_confidence else ""
        )
        return (
            f"annotator-confidence critic on {self.items} items (no model calls): an expected "
            f"{self.expected_errors:.0f} wrong machine labels ({self.expected_errors / max(self.items, 1):.1%}){missing}"
        )


def _own_probability(
    label: str, confidence: float | None, probs: str | None, k: int
) -> tuple[float | None, str | None]:
    """(the annotator's probability of `label`, its most probable label), from probs or confidence."""
    if probs:
        try:
            dist = json.loads(probs)
        except ValueError:
            dist = None
        if isinstance(dist, dict) and dist:
            values = {n: float(v) for n, v in dist.items() if isinstance(v, int | float)}
            total = sum(values.values())
            if total > 0 and label in values:
                return values[label] / total, max(values, key=values.__getitem__)
    if confidence is not None:
        return min(max(float(confidence), 0.0), 1.0), label
    return None, None


def confidence_batches(
    store: Store, *, run_id: int, limit: int | None = None, gold: list | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Critique records in batches of BATCH items, in rowid order. With `gold` (a list), appends
    per batch two arrays, error_prob and whether the machine label is wrong, over the items with a
    gold label, for the AUROC (a tuple per item was 100 MB at 1M items)."""
    k = len(store.task.label_names)
    for rows in store.iter_current_annotations(limit=limit, batch=BATCH):
        records = []
        gold_e: list[float] = []
        gold_wrong: list[bool] = []
        for rowid, annotation_id, label, confidence, probs, gold_label in rows:
            p, best = _own_probability(label, confidence, probs, k)
            known = p is not None
            if not known:
                p, best = 1.0 / k, label
            e = 1.0 - p
            rationale = (
                f"P(wrong)={e:.2f}; the annotator gave {label!r} {p:.2f}"
                if known
                else f"P(wrong)={e:.2f}; the annotator gave no confidence"
            )
            records.append(
                {
                    "item_rowid": rowid,
                    "run_id": run_id,
                    "model": MODEL,
                    "strategy": "confidence",
                    "error_prob": e,
                    "proposed_label": best,
                    "rationale": clip(rationale),
                    "raw": json.dumps(
                        {
                            "annotation_id": annotation_id,
                            "machine_label": label,
                            "annotator": p if known else None,
                        }
                    ),
                    "status": "ok",
                }
            )
            if gold is not None and gold_label is not None:
                gold_e.append(e)
                gold_wrong.append(gold_label != label)
        if gold is not None:
            gold.append((np.array(gold_e, dtype=float), np.array(gold_wrong, dtype=bool)))
        yield records


def confidence_critique(
    store: Store, *, run_id: int, limit: int | None = None
) -> tuple[ConfidenceInfo, float | None, int, int]:
    """Write the critiques in one transaction (all or nothing); (info, AUROC vs gold or None, gold
    errors, gold items)."""
    from actlabel.metrics import error_detection_auroc

    info = ConfidenceInfo()
    gold: list[tuple[np.ndarray, np.ndarray]] = []
    with store.transaction():
        for records in confidence_batches(store, run_id=run_id, limit=limit, gold=gold):
            info.items += len(records)
            info.without_confidence += sum(1 for r in records if '"annotator": null' in r["raw"])
            info.expected_errors += float(sum(r["error_prob"] for r in records))
            store.add_critiques(records)
        if info.items and info.without_confidence == info.items:
            raise UserError(
                "the confidence critic reads the annotator's confidences and none of the machine labels "
                "has one; use another critic (--strategy cot, or consistency)"
            )
    e = np.concatenate([g[0] for g in gold]) if gold else np.array([])
    y = np.concatenate([g[1] for g in gold]) if gold else np.array([], dtype=bool)
    auroc = float(error_detection_auroc(e, y)) if y.any() and not y.all() else None
    return info, auroc, int(y.sum()), int(y.size)
