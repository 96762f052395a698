"""The offline image annotator: a few-shot classifier on EfficientNet-Lite0 features.

No vision-language model ships its weights in a registry package, so the embedded default for
images is a feature model: EfficientNet-Lite0 (ImageNet) features of the task's few-shot example
images, a multinomial logistic regression fitted on them, and its predicted probability as the
label confidence. It needs at least one example image per label (`actlabel init --examples`).

Image + text items offline are labelled by a composite: the image classifier's label distribution
p_img and the text LLM's label distribution p_txt (token probabilities of each label, constrained
to the label set) are pooled log-linearly (a weighted product of experts):

    p(label) ∝ p_img(label)^w * p_txt(label)^(1 - w),   w = IMAGE_WEIGHT = 0.5

Log-linear pooling keeps a label only when neither expert rules it out, and is the right
combination when the two views carry (roughly) independent evidence. The label is the argmax and
its pooled probability the confidence.

That fixed weight on the *raw* text distribution is used only when the label model is off (an
endpoint LLM, `--label-model off`). With the embedded LLM the composite goes through the label
model (label_model.py) with this classifier as its probe: a small model's label prior is divided
out first. Pooled raw, Qwen2.5-0.5B's prior on captions that carry no label information outvoted
the images (0.249 on 1,000 Fashion-MNIST items, the image classifier alone 0.704;
docs/benchmarks.md, "fashion-captions").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actlabel.errors import UserError
from actlabel.models.features import IMAGE_ANNOTATOR_SPEC, cached_image_features
from actlabel.prompting import resolve_image
from actlabel.task import Task

#: weight of the image expert in the image+text composite (the text LLM gets 1 - w)
IMAGE_WEIGHT = 0.5
#: inverse regularisation of the few-shot classifier: features are L2-normalised, so a large C is
#: needed for a handful of examples to move the decision boundary at all
FEW_SHOT_C = 10.0


class FewShotImageClassifier:
    """Logistic regression on L2-normalised image features, over the task's full label list.

    fit(features, labels) learns `classes_` (the labels it saw); predict_proba returns an (n, K)
    matrix over `label_names` in task order, 0 for labels without examples.
    """

    def __init__(self, label_names: Sequence[str], C: float = FEW_SHOT_C, seed: int = 0):
        self.label_names = list(label_names)
        self.C = C
        self.seed = seed

    def fit(self, features: np.ndarray, labels: Sequence[str]) -> FewShotImageClassifier:
        from sklearn.linear_model import LogisticRegression

        self.classes_ = sorted(set(labels), key=self.label_names.index)
        if len(self.classes_) < 2:
            raise UserError("the image annotator needs example images of at least two labels")
        self.model_ = LogisticRegression(C=self.C, max_iter=5000, random_state=self.seed)
        self.model_.fit(features, list(labels))
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        proba = self.model_.predict_proba(features)
        out = np.zeros((features.shape[0], len(self.label_names)))
        for j, cls in enumerate(self.model_.classes_):
            out[:, self.label_names.index(cls)] = proba[:, j]
        return out


def example_images(task: Task, root: Path | None) -> tuple[list[str], list[str]]:
    """(paths, labels) of the task's few-shot examples that have an image; a one-line error when a
    label has none (the classifier could never predict it)."""
    paths, labels = [], []
    for ex in task.examples:
        if ex.image:
            path = resolve_image(ex.image, root)
            if not Path(path).is_file():
                raise UserError(f"few-shot example image {path} not found")
            paths.append(path)
            labels.append(ex.label)
    missing = [name for name in task.label_names if name not in labels]
    if missing:
        raise UserError(
            f"the offline image annotator ({IMAGE_ANNOTATOR_SPEC}) learns from few-shot example images and "
            f"has none for {len(missing)} label(s) ({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}): "
            "add examples with an `image` column (actlabel init --examples) or use an openai/ vision model"
        )
    return paths, labels


def fit_image_classifier(task: Task, root: Path | None) -> tuple[FewShotImageClassifier, int]:
    paths, labels = example_images(task, root)
    feats = cached_image_features(paths, root)
    return FewShotImageClassifier(task.label_names).fit(feats, labels), len(paths)


def pool_log_linear(p_image: np.ndarray, p_text: np.ndarray, w: float = IMAGE_WEIGHT) -> np.ndarray:
    """Weighted product of experts over the last axis, renormalised (see the module docstring)."""
    eps = 1e-9  # a zero from one expert vetoes a label without making everything NaN
    logp = w * np.log(np.clip(p_image, eps, 1.0)) + (1.0 - w) * np.log(np.clip(p_text, eps, 1.0))
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)
