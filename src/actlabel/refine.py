"""`actlabel annotate DIR --refine`: relabel with what the reviews taught, at no model cost.

Every item's label is recomputed from the annotator's stored label distribution and a probe on
frozen features (MiniLM text embeddings and/or EfficientNet-Lite0 image features) fitted on the
few-shot examples plus the human reviews, pooled with weights learned on the reviews
(label_model.py). Cross-fitted: an item's refined label never comes from a model that saw the
reviews of its own fold, so the machine label stays independent of the item's own review draw and
the ACT loss stays unbiased. The refined labels are new annotation records (the latest wins), so
the critic and the next selection round see them; the annotator's original distribution is kept
with each record, so refining again starts from it, not from the previous refinement.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from actlabel import label_model as lm
from actlabel import prompting
from actlabel.annotate import distribution_record, text_probe_factory
from actlabel.errors import UserError
from actlabel.models.features import TEXT_MODEL
from actlabel.store import CurrentAnnotation, Store

#: fewer reviews than this teach the probe nothing reliable
MIN_REVIEWS = 10


@dataclass
class RefineSummary:
    refined: int
    changed: int
    reviews: int
    how: str
    accuracy_before: float | None
    accuracy_after: float | None
    gold_items: int
    elapsed: float

    def __str__(self) -> str:
        parts = [
            f"refined {self.refined} labels with {self.reviews} reviews: {self.changed} changed",
            self.how,
            f"{self.elapsed:.1f} s",
        ]
        if self.accuracy_after is not None:
            parts.append(
                f"accuracy vs gold {self.accuracy_before:.3f} -> {self.accuracy_after:.3f} ({self.gold_items} items)"
            )
        return " | ".join(parts)


def _features(store: Store, items: list[Any], example_rows: list[Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """Frozen features of the pool items and of the few-shot examples (text and/or image)."""
    from actlabel.models.features import IMAGE_MODEL, TEXT_MODEL, cached_image_features, cached_text_features

    task = store.task
    blocks, ex_blocks, names = [], [], []
    texts = ["\n".join(v for _c, v in prompting.item_text_fields(task, it)) for it in items]
    if any(texts) and not all(it.image_path for it in items):
        blocks.append(cached_text_features(texts, store.root))
        ex_blocks.append(
            cached_text_features([ex.text for ex in example_rows], store.root) if example_rows else None
        )
        names.append(TEXT_MODEL)
    if any(it.image_path for it in items):
        if not all(it.image_path for it in items):
            raise UserError("--refine needs every item to have an image, or none")
        blocks.append(cached_image_features([it.image_path for it in items], store.root))
        paths = [prompting.resolve_image(ex.image, store.root) for ex in example_rows if ex.image]
        ex_blocks.append(
            cached_image_features(paths, store.root) if len(paths) == len(example_rows) else None
        )
        names.append(IMAGE_MODEL)
    x = np.hstack(blocks)
    ex_x = (
        np.hstack(ex_blocks)
        if example_rows and all(b is not None for b in ex_blocks)
        else np.zeros((0, x.shape[1]), dtype=x.dtype)
    )
    return x, ex_x, "+".join(names)


def _base_params(store: Store) -> dict[str, Any]:
    """The label-model parameters and settings of the latest annotate run that has them."""
    for run in reversed(store.runs("annotate")):
        p = json.loads(run["params"])
        if p.get("settings"):
            return p
    return {}


@dataclass
class Refinement:
    """Refined label distributions of the items with a machine label (rowids in store order)."""

    rowids: list[int]
    items: list[Any]
    probs: np.ndarray
    current: dict[int, CurrentAnnotation]
    reviewed_rows: list[int]
    how: str
    label_model: dict[str, Any]
    base: dict[str, Any]


def refine_labels(store: Store, *, progress: bool = True) -> RefineSummary:
    started = time.monotonic()
    names = list(store.task.label_names)
    reviews = {r: lab for r, lab in store.current_reviews().items() if lab in names}
    ref = refined_distributions(store, reviews)
    models = {ref.current[r].model for r in ref.rowids}
    base_model = models.pop() if len(models) == 1 else "mixed annotators"
    base_model = base_model.split("+refined(")[0]
    run_id = store.start_run(
        "annotate",
        {
            "model": f"{base_model}+refined",
            "refine": True,
            "settings": ref.base.get("settings"),
            "label_model": ref.label_model or None,
            "reviews": len(ref.reviewed_rows),
            "how": ref.how,
        },
    )
    model_name = f"{base_model}+refined({len(ref.reviewed_rows)} reviews)"
    records = [
        distribution_record(r, run_id, model_name, names, ref.probs[i], "refined", ref.current[r].probs)
        for i, r in enumerate(ref.rowids)
    ]
    changed = sum(rec["label"] != ref.current[rec["item_rowid"]].label for rec in records)
    before = _gold_accuracy(ref.items, [ref.current[r].label for r in ref.rowids])
    store.add_annotations(records)
    store.finish_run(run_id, "done", None)
    after = _gold_accuracy(ref.items, [rec["label"] for rec in records])
    return RefineSummary(
        refined=len(records),
        changed=changed,
        reviews=len(ref.reviewed_rows),
        how=ref.how,
        accuracy_before=before[0],
        accuracy_after=after[0],
        gold_items=after[1],
        elapsed=time.monotonic() - started,
    )


def unrefined_labels(store: Store) -> dict[int, str]:
    """rowid -> the latest ok machine label that no review informed (the annotate run's own,
    label-model pass included): the "machine labels alone" baseline."""
    latest = store.latest("annotations", ("label",), "status = 'ok' AND model NOT LIKE '%+refined(%'")
    return {r: label for r, (label,) in latest.items()}


def refined_distributions(store: Store, reviews: dict[int, str]) -> Refinement:
    """What refine_labels would write given `reviews` (rowid -> human label), without writing it:
    the demo's and the benchmarks' random-review baseline refines with its own draw this way."""
    task = store.task
    if task.multi_label:
        raise UserError(
            "--refine relabels single-label tasks; a multi-label task's labels come from `annotate`"
        )
    names = list(task.label_names)
    current = store.current_annotations(with_probs=True)
    if not current:
        raise UserError("no machine labels to refine: run `actlabel annotate` first")
    reviews = {r: lab for r, lab in reviews.items() if lab in names and r in current}
    if len(reviews) < MIN_REVIEWS:
        raise UserError(
            f"--refine learns from reviews and there are {len(reviews)}; it needs at least {MIN_REVIEWS}: "
            "review some items first (actlabel select ... then actlabel review)"
        )
    rowids = sorted(current)
    items = list(store.iter_items(rowids))
    examples = [ex for ex in task.examples if ex.label in names and (ex.text.strip() or ex.image)]
    x, ex_x, feature_names = _features(store, items, examples)
    if len(ex_x) == 0:
        examples = []
    probs = [json.loads(current[r].probs) if current[r].probs else None for r in rowids]
    have_probs = all(p is not None for p in probs)
    llm_logp = lm.safe_log(np.array([[p[n] for n in names] for p in probs])) if have_probs else None
    base = _base_params(store)
    label_model = base.get("label_model") or {}
    log_prior = np.array(label_model["log_prior"]) if label_model.get("log_prior") else None
    ex_llm = label_model.get("example_llm_logp")
    example_llm_logp = np.array(ex_llm) if ex_llm and len(ex_llm) == len(examples) else None
    index = {r: i for i, r in enumerate(rowids)}
    reviewed_rows = [r for r in rowids if r in reviews]
    result = lm.refine(
        features=x,
        llm_logp=llm_logp,
        log_prior=log_prior,
        reviewed_idx=np.array([index[r] for r in reviewed_rows], dtype=int),
        reviewed_labels=np.array([names.index(reviews[r]) for r in reviewed_rows], dtype=int),
        example_features=ex_x,
        example_labels=np.array([names.index(ex.label) for ex in examples], dtype=int),
        example_llm_logp=example_llm_logp,
        folds=lm.fold_of([it.item_id for it in items]),
        # anchors are text rows: an image probe's features have no place for them
        probe=text_probe_factory(task, store.root) if feature_names == TEXT_MODEL else lm.Probe,
    )
    weights = sorted({(p.a, p.b) for p in result.poolings})
    how = (
        f"cross-fitted over {len(result.poolings)} folds on {feature_names}; pooling weights (a, b) per fold "
        + ", ".join(f"({a:g}, {b:g})" for a, b in weights)
    )
    return Refinement(
        rowids=rowids,
        items=items,
        probs=np.asarray(result.probs),
        current=current,
        reviewed_rows=reviewed_rows,
        how=how,
        label_model=label_model,
        base=base,
    )


def _gold_accuracy(items: list[Any], labels: list[str]) -> tuple[float | None, int]:
    pairs = [(it.gold_label, lab) for it, lab in zip(items, labels, strict=True) if it.gold_label is not None]
    if not pairs:
        return None, 0
    return sum(g == m for g, m in pairs) / len(pairs), len(pairs)
