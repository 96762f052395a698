"""Stage 5: train a downstream classifier with the ACT loss on fixed features, and compare training sets.

A linear softmax classifier (multinomial logistic regression) on frozen features (text embeddings
or image features), fitted by full-batch L-BFGS on `actlabel.loss.act_loss` plus an L2 penalty.
Full human labels and full machine labels are the same loss with every item reviewed (pi = 1) or
none, so all training sets go through one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actlabel.loss import act_loss


@dataclass
class LinearACTClassifier:
    """scikit-learn style: parameters in the constructor, `fit` learns `coef_` and `intercept_`."""

    n_classes: int
    l2: float = 1e-3
    lam: float = 1.0
    max_weight: float | None = None
    max_iter: int = 100
    seed: int = 0

    def fit(
        self,
        features: np.ndarray,
        machine_labels: np.ndarray,
        human_labels: np.ndarray,
        reviewed: np.ndarray,
        review_prob: np.ndarray,
    ) -> LinearACTClassifier:
        import torch

        # One thread: the problem is small, and torch's thread pool costs more than it saves
        # (badly so on a loaded machine).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(torch, features, machine_labels, human_labels, reviewed, review_prob)
        finally:
            torch.set_num_threads(threads)

    def _fit(
        self, torch, features, machine_labels, human_labels, reviewed, review_prob
    ) -> LinearACTClassifier:  # noqa: ANN001
        torch.manual_seed(self.seed)
        x = torch.as_tensor(self._standardize(features, fit=True), dtype=torch.float32)
        m = torch.as_tensor(np.asarray(machine_labels), dtype=torch.long)
        h = torch.as_tensor(np.where(reviewed, human_labels, -1), dtype=torch.long)
        d = torch.as_tensor(np.asarray(reviewed, dtype=bool))
        pi = torch.as_tensor(np.asarray(review_prob, dtype=float), dtype=torch.float32)
        w = torch.zeros(x.shape[1], self.n_classes, dtype=torch.float32, requires_grad=True)
        b = torch.zeros(self.n_classes, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = act_loss(x @ w + b, m, h, d, pi, lam=self.lam, max_weight=self.max_weight)
            loss = loss + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_ = w.detach().numpy()
        self.intercept_ = b.detach().numpy()
        return self

    def _standardize(self, features: np.ndarray, fit: bool = False) -> np.ndarray:
        features = np.asarray(features, dtype=float)
        if fit:
            self.mean_ = features.mean(axis=0)
            self.scale_ = features.std(axis=0) + 1e-8
        return (features - self.mean_) / self.scale_

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self._standardize(features) @ self.coef_ + self.intercept_).argmax(axis=1)

    def score(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(features) == np.asarray(labels)).mean())


@dataclass(frozen=True)
class DownstreamRow:
    training_data: str
    test_accuracy: float
    human_reviews: int
    budget_share: float

    def as_dict(self) -> dict[str, object]:
        return {
            "training data": self.training_data,
            "test accuracy": round(self.test_accuracy, 4),
            "human reviews": self.human_reviews,
            "budget (share of items)": round(self.budget_share, 4),
        }


def compare_training_sets(
    train_x: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    gold: np.ndarray,
    machine: np.ndarray,
    human: np.ndarray,
    reviewed: np.ndarray,
    review_prob: np.ndarray,
    n_classes: int,
    l2: float = 1e-3,
    max_weight: float | None = None,
    seed: int = 0,
) -> list[DownstreamRow]:
    """Test accuracy with full human (gold) labels, full machine labels, and the ACT data.

    Label arrays are class indices; `human` is only read where `reviewed`.
    """
    n = len(gold)
    all_rev, none_rev = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    ones = np.ones(n)

    def acc(h: np.ndarray, d: np.ndarray, pi: np.ndarray) -> float:
        clf = LinearACTClassifier(n_classes, l2=l2, max_weight=max_weight, seed=seed)
        return clf.fit(train_x, machine, h, d, pi).score(test_x, test_y)

    k = int(np.asarray(reviewed).sum())
    return [
        DownstreamRow("full human labels", acc(gold, all_rev, ones), n, 1.0),
        DownstreamRow("full machine labels", acc(gold, none_rev, ones), 0, 0.0),
        DownstreamRow("ACT (machine + reviews, ACT loss)", acc(human, reviewed, review_prob), k, k / n),
    ]
