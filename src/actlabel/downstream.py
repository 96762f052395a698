"""Stage 5: train a downstream classifier with the ACT loss on fixed features, and compare training sets.

Two models on frozen features (text embeddings or image features), both trained on
`actlabel.loss.act_loss` plus an L2 penalty:

* `LinearACTClassifier`: multinomial logistic regression, full-batch L-BFGS;
* `MLPACTClassifier`: one hidden layer (ReLU), full-batch Adam, 200 steps on CPU.

Full human labels and full machine labels are the same loss with every item reviewed (pi = 1) or
none, so all training sets go through one code path.

The loss (``loss=``), docs/statistics.md section 3 (measured there on Fashion-MNIST: the clipped
loss at lam = 1 lands above full machine labels for every rule at 10% and 20%, the exact one up to
37 points below; tuning lam did not beat it on average):

* ``"tuned"``: the clipped loss (no label of any item gets a negative weight) at the
  PPI++ variance-minimising lam, from out-of-fold probabilities of a pilot fit at lam = 1
  (`actlabel.loss.ppi_lambda`);
* ``"clip"`` (default): the clipped loss at the given ``lam`` (1 unless set): every label weight
  >= 0, so the loss is bounded below;
* ``"exact"``: the unbiased ACT loss at the given ``lam``, negative weights and all.  Unbounded
  below when a corrected item has pi < 1: a flexible model can drive it to -infinity (the
  collapse issue 12 measured on Fashion-MNIST).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from actlabel.logistic import sigmoid
from actlabel.loss import act_loss, ppi_lambda

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is optional
    import torch

LossKind = Literal["tuned", "clip", "exact"]
LOSSES: tuple[str, ...] = ("tuned", "clip", "exact")


@dataclass
class _ACTModel:
    n_classes: int
    l2: float = 1e-3
    lam: float = 1.0
    max_weight: float | None = None
    seed: int = 0
    loss: LossKind = "clip"
    #: the lam actually used by the last `fit` (the tuned one for loss="tuned")
    lam_: float = field(default=1.0, init=False)

    def fit(
        self,
        features: np.ndarray,
        machine_labels: np.ndarray,
        human_labels: np.ndarray,
        reviewed: np.ndarray,
        review_prob: np.ndarray,
    ) -> _ACTModel:
        import torch

        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        # One thread: the problem is small, and torch's thread pool costs more than it saves
        # (badly so on a loaded machine).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            xs = self._standardize(features, fit=True)
            x = torch.as_tensor(xs, dtype=torch.float32)
            d_np = np.asarray(reviewed, dtype=bool)
            m = torch.as_tensor(np.asarray(machine_labels), dtype=torch.long)
            h_np = np.where(d_np, human_labels, -1)
            h = torch.as_tensor(h_np, dtype=torch.long)
            d = torch.as_tensor(d_np)
            pi_np = np.asarray(review_prob, dtype=float)
            pi = torch.as_tensor(pi_np, dtype=torch.float32)
            clip = self.loss != "exact"
            lam = self.lam
            if self.loss == "tuned" and (d_np & (pi_np < 1.0)).any():
                probs = self._cross_fitted_proba(torch, xs, x, m, h, d, pi)
                lam = ppi_lambda(
                    probs, np.asarray(machine_labels), np.where(d_np, h_np, 0), d_np, pi_np,
                    sq_norm=(xs * xs).sum(axis=1) + 1.0,
                )  # fmt: skip
            elif self.loss == "tuned":
                lam = 1.0  # no reviewed item with pi < 1: every lam gives the same loss
            self.lam_ = float(lam)
            return self._fit(torch, x, m, h, d, pi, lam=self.lam_, clip=clip)
        finally:
            torch.set_num_threads(threads)

    def _cross_fitted_proba(self, torch, xs, x, m, h, d, pi) -> np.ndarray:  # noqa: ANN001
        """Out-of-fold class probabilities of a pilot fit (clipped loss, lam = 1), 2 folds.

        In-sample probabilities of a model that can fit its training set make every gradient
        vanish except on the items it was told to unlearn, which drives the PPI++ lam to 0.
        """
        n = xs.shape[0]
        fold = np.random.default_rng(self.seed).permutation(n) % 2
        probs = np.empty((n, self.n_classes))
        for k in (0, 1):
            tr = torch.as_tensor(np.flatnonzero(fold != k))
            self._fit(torch, x[tr], m[tr], h[tr], d[tr], pi[tr], lam=1.0, clip=True)
            probs[fold == k] = self._proba_std(xs[fold == k])
        return probs

    def _objective(self, torch, logits, m, h, d, pi, lam: float, clip: bool):  # noqa: ANN001, ANN202
        return act_loss(logits, m, h, d, pi, lam=lam, max_weight=self.max_weight, clip=clip)

    def _standardize(self, features: np.ndarray, fit: bool = False) -> np.ndarray:
        features = np.asarray(features, dtype=float)
        if fit:
            self.mean_ = features.mean(axis=0)
            self.scale_ = features.std(axis=0) + 1e-8
        return (features - self.mean_) / self.scale_

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self._proba_std(self._standardize(features))

    def _proba_std(self, xs: np.ndarray) -> np.ndarray:
        z = self._logits_std(xs)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._logits_std(self._standardize(features)).argmax(axis=1)

    def score(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(features) == np.asarray(labels)).mean())

    # subclasses: _fit(torch, x, m, h, d, pi, lam, clip) -> self; _logits_std(xs) -> (n, K)
    def _fit(self, torch, x, m, h, d, pi, *, lam: float, clip: bool):  # noqa: ANN001, ANN202
        raise NotImplementedError

    def _logits_std(self, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _fit_linear(
    torch,  # noqa: ANN001 - the module, imported by the caller (torch is optional)
    x: torch.Tensor,
    outputs: int,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    l2: float,
    max_iter: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of the linear map x @ coef + intercept minimising objective(logits) +
    l2 |coef|^2 by full-batch L-BFGS (strong Wolfe), from zeros; the best finite point seen wins."""
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], outputs, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(outputs, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    best = [math.inf, w.detach().clone(), b.detach().clone()]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(x @ w + b) + l2 * (w * w).sum()
        loss.backward()
        value = float(loss.detach())
        if math.isfinite(value) and value < best[0]:
            best[:] = [value, w.detach().clone(), b.detach().clone()]
        return loss

    try:
        opt.step(closure)
    except IndexError:
        # torch's strong-Wolfe search fails this way when the loss runs off to -inf, which
        # the exact loss can (docs/statistics.md section 3a): keep the best finite point
        pass
    return best[1].numpy(), best[2].numpy()


@dataclass
class LinearACTClassifier(_ACTModel):
    """scikit-learn style: parameters in the constructor, `fit` learns `coef_` and `intercept_`."""

    max_iter: int = 100

    def _fit(self, torch, x, m, h, d, pi, *, lam: float, clip: bool):  # noqa: ANN001, ANN202
        self.coef_, self.intercept_ = _fit_linear(
            torch,
            x,
            self.n_classes,
            lambda logits: self._objective(torch, logits, m, h, d, pi, lam, clip),
            l2=self.l2,
            max_iter=self.max_iter,
            seed=self.seed,
        )
        return self

    def _logits_std(self, xs: np.ndarray) -> np.ndarray:
        return xs @ self.coef_ + self.intercept_


@dataclass
class LinearACTMultiLabel:
    """Multi-label: one-vs-rest logistic regression (one linear map to L logits) trained with the
    BCE form of the ACT loss (`actlabel.loss.act_bce_loss`), full-batch L-BFGS; labels are 0/1
    matrices (n, L). ``loss`` is "clip" (default, as single-label) or "exact"."""

    n_labels: int
    l2: float = 1e-3
    lam: float = 1.0
    max_weight: float | None = None
    seed: int = 0
    loss: Literal["clip", "exact"] = "clip"
    max_iter: int = 100

    def fit(
        self,
        features: np.ndarray,
        machine_labels: np.ndarray,
        human_labels: np.ndarray,
        reviewed: np.ndarray,
        review_prob: np.ndarray,
    ) -> LinearACTMultiLabel:
        import torch

        from actlabel.loss import act_bce_loss

        if self.loss not in ("clip", "exact"):
            raise ValueError(f"loss must be clip or exact, got {self.loss!r}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            features = np.asarray(features, dtype=float)
            self.mean_ = features.mean(axis=0)
            self.scale_ = features.std(axis=0) + 1e-8
            x = torch.as_tensor((features - self.mean_) / self.scale_, dtype=torch.float32)
            d_np = np.asarray(reviewed, dtype=bool)
            m = torch.as_tensor(np.asarray(machine_labels), dtype=torch.float32)
            h = torch.as_tensor(np.where(d_np[:, None], human_labels, 0), dtype=torch.float32)
            d = torch.as_tensor(d_np)
            pi = torch.as_tensor(np.asarray(review_prob, dtype=float), dtype=torch.float32)
            self.coef_, self.intercept_ = _fit_linear(
                torch,
                x,
                self.n_labels,
                lambda logits: act_bce_loss(
                    logits, m, h, d, pi, lam=self.lam, max_weight=self.max_weight, clip=self.loss == "clip"
                ),
                l2=self.l2,
                max_iter=self.max_iter,
                seed=self.seed,
            )
            return self
        finally:
            torch.set_num_threads(threads)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = ((np.asarray(features, dtype=float) - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        return sigmoid(z)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.predict_proba(features) >= 0.5).astype(np.int8)


@dataclass
class MLPACTClassifier(_ACTModel):
    """One hidden layer (ReLU) trained full-batch with Adam on the ACT loss; same interface.

    Sized for frozen features of at most a few thousand items (384-1280 dimensions): 200 full-batch
    steps of a 64-unit layer take a few seconds on one CPU thread.  Dropout on the inputs
    regularises it (the linear model needs none).
    """

    l2: float = 1e-4
    hidden: int = 64
    steps: int = 200
    lr: float = 5e-3
    dropout: float = 0.2

    def _fit(self, torch, x, m, h, d, pi, *, lam: float, clip: bool):  # noqa: ANN001, ANN202
        torch.manual_seed(self.seed)
        net = torch.nn.Sequential(
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(x.shape[1], self.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, self.n_classes),
        )
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        net.train()
        for _ in range(self.steps):
            opt.zero_grad()
            loss = self._objective(torch, net(x), m, h, d, pi, lam, clip)
            loss = loss + self.l2 * sum((p * p).sum() for n_, p in net.named_parameters() if "weight" in n_)
            loss.backward()
            opt.step()
        net.eval()
        self.params_ = [p.detach().numpy().copy() for p in net.parameters()]
        return self

    def _logits_std(self, xs: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self.params_
        hid = np.maximum(xs @ w1.T + b1, 0.0)
        return hid @ w2.T + b2


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
    loss: LossKind = "clip",
    machine_alone: np.ndarray | None = None,
) -> list[DownstreamRow]:
    """Test accuracy with full human (gold) labels, full machine labels, and the ACT data.

    Label arrays are class indices; `human` is only read where `reviewed`. `machine_alone`: the
    machine labels as made with no review (default `machine`), for the full-machine row, where
    `machine` was refined with the reviews.
    """
    n = len(gold)
    all_rev, none_rev = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    ones = np.ones(n)
    alone = machine if machine_alone is None else machine_alone

    def acc(m: np.ndarray, h: np.ndarray, d: np.ndarray, pi: np.ndarray) -> float:
        clf = LinearACTClassifier(n_classes, l2=l2, max_weight=max_weight, seed=seed, loss=loss)
        return clf.fit(train_x, m, h, d, pi).score(test_x, test_y)

    k = int(np.asarray(reviewed).sum())
    return [
        DownstreamRow("full human labels", acc(machine, gold, all_rev, ones), n, 1.0),
        DownstreamRow("full machine labels", acc(alone, gold, none_rev, ones), 0, 0.0),
        DownstreamRow(
            "ACT (machine + reviews, ACT loss)", acc(machine, human, reviewed, review_prob), k, k / n
        ),
    ]
