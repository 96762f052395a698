"""The content features the offline critics share: each item's text and image embeddings, the few-shot
examples' in the same space, and a PCA to keep the classifiers fast. learned.py and consistency.py
both build on them, and consistency is learned's fallback below the minimum of reviews, so the
features live apart from both (otherwise the two modules import each other)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actlabel import prompting
from actlabel.critics.base import Target
from actlabel.errors import UserError
from actlabel.task import Task

#: principal components of the content features the classifiers see (see reduce_dims)
PCA_DIMS = 128


def item_text(task: Task, target: Target) -> str:
    return "\n".join(v for _c, v in prompting.item_text_fields(task, target.item))


def content_features(
    task: Task, targets: Sequence[Target], root: Path | None
) -> tuple[np.ndarray, list[str]]:
    """Embeddings of each target's text and/or image features (zeros where an item lacks one)."""
    from actlabel.models.features import IMAGE_MODEL, TEXT_MODEL, cached_image_features, cached_text_features

    blocks, names = [], []
    texts = [item_text(task, t) for t in targets]
    if any(texts):
        blocks.append(cached_text_features(texts, root))
        names.append(TEXT_MODEL)
    with_image = [i for i, t in enumerate(targets) if t.item.image_path]
    if with_image:
        feats = cached_image_features([targets[i].item.image_path for i in with_image], root)
        block = np.zeros((len(targets), feats.shape[1]), dtype=np.float32)
        block[with_image] = feats
        blocks.append(block)
        names.append(IMAGE_MODEL)
    if not blocks:
        raise UserError("the learned critic found neither text nor images in the items")
    return np.hstack(blocks), names


def reduce_dims(
    content: np.ndarray, extra: np.ndarray | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Project the content features on their first PCA_DIMS principal components (fitted on all
    items: no labels involved). On a few hundred reviews the classifiers are as accurate on 128
    components as on 384 or 1280 dimensions, and an order of magnitude faster to fit."""
    k = min(PCA_DIMS, content.shape[1], content.shape[0] - 1)
    if k >= content.shape[1] or k < 2:
        return content, extra
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=seed).fit(content)
    return pca.transform(content), (None if extra is None else pca.transform(extra))


def example_features(
    task: Task, content_names: list[str], root: Path | None
) -> tuple[np.ndarray | None, list[str]]:
    """Content features of the few-shot examples that have every modality the items have."""
    from actlabel.models.features import IMAGE_MODEL, TEXT_MODEL, cached_image_features, cached_text_features
    from actlabel.prompting import resolve_image

    needs_text, needs_image = TEXT_MODEL in content_names, IMAGE_MODEL in content_names
    usable = [
        ex for ex in task.examples if (ex.text.strip() or not needs_text) and (ex.image or not needs_image)
    ]
    if not usable:
        return None, []
    blocks = []
    if needs_text:
        blocks.append(cached_text_features([ex.text for ex in usable], root))
    if needs_image:
        blocks.append(cached_image_features([resolve_image(ex.image, root) for ex in usable], root))
    return np.hstack(blocks), [ex.label for ex in usable]
