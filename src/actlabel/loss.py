"""The ACT loss: train on machine labels plus a few human reviews, unbiased for full human labels.

For items i = 1..N with machine label m_i, human label h_i (known only where d_i = 1) and review
probability pi_i (from :mod:`actlabel.select`), with a per-item loss l (cross-entropy here):

    L_lam(theta) = (1/N) sum_i [ lam * l(x_i, m_i) + (l(x_i, h_i) - lam * l(x_i, m_i)) * d_i / pi_i ]

Because E[d_i] = pi_i, E[L_lam] = (1/N) sum_i l(x_i, h_i), the loss on full human labels, for any
lam, as long as every item has pi_i > 0 (docs/statistics.md).  lam = 1 is the paper's loss;
lam < 1 ("power tuning") shrinks the negative weight lam * (1 - 1/pi_i) that a reviewed item puts
on its machine label.  With pi in {0, 1} (threshold rule, no uniform share) the loss is plain
cross-entropy on the corrected labels.

Stabilised variants (docs/statistics.md section 3): ``clip=True`` floors at 0 the machine-label
weight lam * (1 - 1/pi_i) of a reviewed item whose human label differs, so every label of every
item has a weight >= 0 and the loss is bounded below (the exact loss is not, which is how a linear
or deep model collapses on it); its bias is (lam/N) sum_{h_i != m_i} (1 - pi_i) l(x_i, m_i) >= 0,
a pull towards the machine label of wrong items that were likely to be missed.
:func:`ppi_lambda` picks lam from the data (the variance-minimising lam of PPI++).

Mini-batches: the loss is a mean over items of a per-item term, so its mean over a uniformly
shuffled mini-batch of size b is an unbiased estimate of the full-data loss; we therefore divide
by the batch size, never by the sum of weights (that would be a ratio estimator: biased, and it
changes with which reviewed items land in the batch).

``act_loss`` needs PyTorch (an optional extra), imported inside the function; everything else
here is NumPy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from actlabel.validate import bool_array, prob_array

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is optional
    import torch

Reduction = Literal["mean", "sum", "none"]


# ----------------------------------------------------------------------------------------------
# shared validation


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    return lam


def _check_max_weight(max_weight: float | None) -> float | None:
    if max_weight is None:
        return None
    mw = float(max_weight)
    if not (mw >= 1.0):  # also rejects nan; 1/pi >= 1 always, so a cap below 1 is meaningless
        raise ValueError(f"max_weight must be >= 1 (it caps 1/pi), got {max_weight!r}")
    return mw


def _np_reviewed_prob(reviewed: np.ndarray, review_prob: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    d = bool_array(reviewed, "reviewed", n)
    pi = prob_array(review_prob, "review_prob", n)
    bad = d & (pi <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"item {i} is reviewed but has review_prob 0: its weight d/pi is undefined")
    return d, pi


def review_weights(
    reviewed: np.ndarray, review_prob: np.ndarray, *, max_weight: float | None = None
) -> np.ndarray:
    """w_i = d_i / pi_i (0 where not reviewed), optionally clipped at ``max_weight``.

    Clipping min(w, c) lowers the variance at the price of a bias towards the machine labels.
    """
    pi = np.asarray(review_prob, dtype=float)
    if pi.ndim != 1:
        raise ValueError(f"review_prob must be a 1-D array, got shape {pi.shape}")
    d, pi = _np_reviewed_prob(reviewed, pi, pi.shape[0])
    mw = _check_max_weight(max_weight)
    w = np.zeros(pi.shape)
    w[d] = 1.0 / pi[d]
    return np.minimum(w, mw) if mw is not None else w


# ----------------------------------------------------------------------------------------------
# PyTorch


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _torch_review_weights(d: torch.Tensor, pi: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """w_i = d_i / pi_i, capped at max_weight. pi is replaced by 1 where not reviewed so that no
    inf appears (inf * 0 = NaN in the loss and its gradient)."""
    import torch

    pi_safe = torch.where(d, pi, torch.ones_like(pi))
    w = torch.where(d, 1.0 / pi_safe, torch.zeros_like(pi))
    return w if max_weight is None else w.clamp(max=max_weight)


def _act_terms(
    loss_m: torch.Tensor, loss_h: torch.Tensor, differs: torch.Tensor, w: torch.Tensor, lam: float, clip: bool
) -> torch.Tensor:
    """lam * l_m + (l_h - lam * l_m) * w per term; with `clip`, where the human label differs the
    machine weight lam * (1 - w) is floored at 0 and the human weight is w, elsewhere the machine
    label (confirmed) keeps its exact weight lam * (1 - w) + w."""
    import torch

    if not clip:
        return lam * loss_m + (loss_h - lam * loss_m) * w
    wm = torch.where(differs, (lam * (1.0 - w)).clamp(min=0.0), lam * (1.0 - w) + w)
    wh = torch.where(differs, w, torch.zeros_like(w))
    return wm * loss_m + wh * loss_h


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    b = per_item.shape[0]
    return per_item.sum() / b if b > 0 else per_item.sum()


def _check_options(lam: float, max_weight: float | None, reduction: str) -> tuple[float, float | None]:
    _check_reduction(reduction)
    return _check_lam(lam), _check_max_weight(max_weight)


def _check_shapes(
    logits: torch.Tensor,
    machine_labels: torch.Tensor,
    human_labels: torch.Tensor,
    reviewed: torch.Tensor,
    review_prob: torch.Tensor,
    *,
    labels_2d: bool,
) -> tuple[int, int]:
    """(batch, classes or labels) of the logits; ValueError naming the first tensor of another shape.
    labels_2d: multi-label, the labels are (batch, labels) 0/1 matrices."""
    axis = "labels" if labels_2d else "classes"
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, {axis}), got {tuple(logits.shape)}")
    b, k = logits.shape
    label_shape = (b, k) if labels_2d else (b,)
    for name, t, shape in (
        ("machine_labels", machine_labels, label_shape),
        ("human_labels", human_labels, label_shape),
        ("reviewed", reviewed, (b,)),
        ("review_prob", review_prob, (b,)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return b, k


def act_loss(
    logits: torch.Tensor,
    machine_labels: torch.Tensor,
    human_labels: torch.Tensor,
    reviewed: torch.Tensor,
    review_prob: torch.Tensor,
    *,
    lam: float = 1.0,
    max_weight: float | None = None,
    reduction: Reduction = "mean",
    check_inputs: bool = True,
    clip: bool = False,
) -> torch.Tensor:
    """ACT loss with cross-entropy: mean_i[ lam*l_m + (l_h - lam*l_m) * d_i/pi_i ].

    Shapes: ``logits`` (b, K); labels, ``reviewed`` and ``review_prob`` (b,).  ``human_labels``
    may hold anything (e.g. -1) where ``reviewed`` is false: those entries are replaced by a valid
    class before the cross-entropy and multiplied by a zero weight, so they produce neither NaN
    values nor NaN gradients.  ``max_weight`` clips 1/pi (biased, lower variance).  ``clip`` floors
    the machine-label weight lam * (1 - w_i) of corrected items (h_i != m_i) at 0 (biased, bounded
    below; docs/statistics.md section 3).

    The weights and cross-entropies are computed, and returned, in float32 (float64 if the logits
    are float64): 1/pi overflows float16 for pi < 1.5e-5 (inf * 0 = NaN), and so can a weighted
    loss; gradients still flow back to float16 logits.

    reduction: "mean" divides the sum by the batch size b (unbiased for the full-data mean under
    uniform shuffling), "sum" returns the sum, "none" the per-item terms.
    ``check_inputs`` validates label ranges and review probabilities (one device sync per call).
    """
    import torch
    import torch.nn.functional as F

    lam, max_weight = _check_options(lam, max_weight, reduction)
    b, k = _check_shapes(logits, machine_labels, human_labels, reviewed, review_prob, labels_2d=False)
    d = reviewed.to(device=logits.device, dtype=torch.bool)
    m = machine_labels.to(device=logits.device, dtype=torch.long)
    h = human_labels.to(device=logits.device, dtype=torch.long)
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(work)
    pi = review_prob.to(device=logits.device, dtype=torch.float64 if work == torch.float64 else torch.float32)
    if check_inputs:
        bad_m = (m < 0) | (m >= k)
        bad_h = d & ((h < 0) | (h >= k))
        bad_pi = ~torch.isfinite(pi) | (pi < 0) | (pi > 1) | (d & (pi <= 0))
        # one device sync in the common (valid) case; locate the culprit only on failure
        if bool((bad_m | bad_h | bad_pi).any()):
            if bool(bad_m.any()):
                i = int(torch.nonzero(bad_m)[0])
                raise ValueError(f"machine label {int(m[i])} at index {i} is not a class in [0, {k})")
            if bool(bad_h.any()):
                i = int(torch.nonzero(bad_h)[0])
                raise ValueError(
                    f"item {i} is reviewed but its human label {int(h[i])} is not a class in [0, {k})"
                )
            i = int(torch.nonzero(bad_pi)[0])
            raise ValueError(
                f"review_prob {float(pi[i])!r} at index {i} must be in [0, 1] and > 0 when reviewed"
            )
    # Unreviewed items: substitute the machine label (a valid class) so that nothing computed on
    # them is NaN/inf; their weight is exactly 0.
    h_safe = torch.where(d, h, m)
    w = _torch_review_weights(d, pi, max_weight)
    loss_m = F.cross_entropy(logits, m, reduction="none")
    loss_h = F.cross_entropy(logits, h_safe, reduction="none")
    per_item = _act_terms(loss_m, loss_h, d & (h_safe != m), w, lam, clip)
    return _reduce(per_item, reduction)


def act_bce_loss(
    logits: torch.Tensor,
    machine_labels: torch.Tensor,
    human_labels: torch.Tensor,
    reviewed: torch.Tensor,
    review_prob: torch.Tensor,
    *,
    lam: float = 1.0,
    max_weight: float | None = None,
    reduction: Reduction = "mean",
    clip: bool = False,
) -> torch.Tensor:
    """ACT loss for multi-label tasks: binary cross-entropy per label, the same per-item weights.

    With l_il(y) = BCE(logit_il, y) and w_i = d_i / pi_i (optionally capped at ``max_weight``):

        per item i:  (1/L) sum_l [ lam * l_il(m_il) + (l_il(h_il) - lam * l_il(m_il)) * w_i ]

    E[d_i] = pi_i makes its expectation (1/L) sum_l l_il(h_il), the loss on full human label sets,
    exactly as for the cross-entropy form (:func:`act_loss`). ``clip`` floors at 0, per label, the
    machine-label weight lam * (1 - w_i) where the human and machine decisions differ (h_il != m_il),
    so every weight is >= 0 and the loss is bounded below; labels the human confirmed keep
    lam * (1 - w_i) + w_i = their exact weight. Its bias is
    (lam / (N L)) sum_{(i,l): h_il != m_il} (1 - pi_i) l_il(m_il) >= 0, the single-label bias
    summed over each item's wrong labels.

    Shapes: ``logits``, ``machine_labels``, ``human_labels`` (b, L) with 0/1 labels (anything where
    not reviewed); ``reviewed``, ``review_prob`` (b,). Reductions as :func:`act_loss`.
    """
    import torch
    import torch.nn.functional as F

    lam, max_weight = _check_options(lam, max_weight, reduction)
    b, k = _check_shapes(logits, machine_labels, human_labels, reviewed, review_prob, labels_2d=True)
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(work)
    d = reviewed.to(device=logits.device, dtype=torch.bool)
    m = machine_labels.to(device=logits.device, dtype=work)
    pi = review_prob.to(device=logits.device, dtype=work)
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("machine_labels must be 0/1")
    h = torch.where(d[:, None], human_labels.to(device=logits.device, dtype=work), m)
    if bool(((h != 0) & (h != 1)).any()):
        raise ValueError("human_labels of reviewed items must be 0/1")
    bad_pi = ~torch.isfinite(pi) | (pi < 0) | (pi > 1) | (d & (pi <= 0))
    if bool(bad_pi.any()):
        i = int(torch.nonzero(bad_pi)[0])
        raise ValueError(f"review_prob {float(pi[i])!r} at index {i} must be in [0, 1] and > 0 when reviewed")
    w = _torch_review_weights(d, pi, max_weight)[:, None]
    loss_m = F.binary_cross_entropy_with_logits(logits, m, reduction="none")
    loss_h = F.binary_cross_entropy_with_logits(logits, h, reduction="none")
    per_item = _act_terms(loss_m, loss_h, d[:, None] & (h != m), w, lam, clip).mean(dim=1)
    return _reduce(per_item, reduction)


# ----------------------------------------------------------------------------------------------
# NumPy


def act_mean(
    loss_human: np.ndarray,
    loss_machine: np.ndarray,
    reviewed: np.ndarray,
    review_prob: np.ndarray,
    *,
    lam: float = 1.0,
    max_weight: float | None = None,
    clip: bool = False,
    corrected: np.ndarray | None = None,
) -> float:
    """The ACT estimate for any per-item losses: (1/N) sum_i [lam l_m + (l_h - lam l_m) d_i/pi_i].

    ``loss_human`` is only read where ``reviewed`` is true (NaN elsewhere is fine).  ``clip``
    floors the machine-label weight lam (1 - d_i/pi_i) at 0 on items whose human label differs
    from the machine label (``corrected``, a boolean array, required with ``clip``).
    """
    lam = _check_lam(lam)
    lm = np.asarray(loss_machine, dtype=float)
    n = lm.shape[0] if lm.ndim == 1 else -1
    if lm.ndim != 1:
        raise ValueError(f"loss_machine must be a 1-D array, got shape {lm.shape}")
    lh = np.asarray(loss_human, dtype=float)
    if lh.shape != (n,):
        raise ValueError(f"loss_human must have shape ({n},), got {lh.shape}")
    w = review_weights(reviewed, review_prob, max_weight=max_weight)
    if n == 0:
        return float("nan")
    if clip:
        if corrected is None:
            raise ValueError("clip=True needs `corrected` (human label != machine label, per item)")
        c = np.asarray(corrected, dtype=bool) & (w > 0)
        wm = np.where(c, np.maximum(lam * (1.0 - w), 0.0), lam * (1.0 - w) + w)
        return float(np.mean(wm * lm + np.where(c, w * np.nan_to_num(lh), 0.0)))
    corr = np.where(w > 0, lh - lam * lm, 0.0)
    return float(np.mean(lam * lm + corr * w))


def act_sample_weights(
    machine_labels: np.ndarray,
    human_labels: np.ndarray,
    reviewed: np.ndarray,
    review_prob: np.ndarray,
    *,
    lam: float = 1.0,
    max_weight: float | None = None,
    clip_negative: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(X_index, y, sample_weight)`` that turn the ACT loss into weighted training data.

    Item i contributes the pair (m_i, lam * (1 - w_i)) and, if reviewed, (h_i, w_i), with
    w_i = d_i / pi_i (clipped at ``max_weight``).  Pairs of the same item with the same label are
    merged (weights added), and zero weights are dropped.  Train with ``X[X_index], y,
    sample_weight``: then sum_rows weight * l(x, y) = N * L_lam, so any trainer that minimises a
    weighted sum of losses minimises the ACT loss (up to the scale of its regulariser).

    Negative weights: a reviewed item with pi_i < 1 gets lam * (1 - 1/pi_i) < 0 on its machine
    label (when it differs from the human label).  That is what makes the loss unbiased, but some
    trainers reject negative ``sample_weight`` and it can destabilise training.  Options: lam < 1
    or ``max_weight`` to shrink it, lam = 0 to remove it (pure Horvitz-Thompson on the human
    labels, higher variance), or ``clip_negative=True``, which sets negative weights to 0: a
    biased estimate (the machine label of a corrected item is then simply removed).

    Rows are ordered by item index, machine row before human row.  ``human_labels`` is only read
    where ``reviewed`` is true (e.g. -1 elsewhere).
    """
    lam = _check_lam(lam)
    m = np.asarray(machine_labels)
    if m.ndim != 1:
        raise ValueError(f"machine_labels must be a 1-D array, got shape {m.shape}")
    n = m.shape[0]
    h = np.asarray(human_labels)
    if h.shape != (n,):
        raise ValueError(f"human_labels must have shape ({n},), got {h.shape}")
    d, _ = _np_reviewed_prob(reviewed, review_prob, n)
    if np.issubdtype(h.dtype, np.number):
        bad = d & ((h < 0) | ~np.isfinite(h.astype(float)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"item {i} is reviewed but has no human label ({h[i].item()!r})")
    w = review_weights(d, review_prob, max_weight=max_weight)
    same = d & (h == m)
    machine_w = lam * (1.0 - w) + np.where(same, w, 0.0)
    human_rows = np.flatnonzero(d & ~same)
    idx = np.concatenate([np.arange(n), human_rows])
    is_human = np.concatenate([np.zeros(n, dtype=bool), np.ones(human_rows.size, dtype=bool)])
    y = np.concatenate([m, h[human_rows].astype(m.dtype, copy=False)])
    weight = np.concatenate([machine_w, w[human_rows]])
    if clip_negative:
        weight = np.maximum(weight, 0.0)
    keep = weight != 0.0
    order = np.lexsort((is_human[keep], idx[keep]))
    return idx[keep][order], y[keep][order], weight[keep][order]


def act_variance(
    loss_human: np.ndarray,
    loss_machine: np.ndarray,
    review_prob: np.ndarray,
    *,
    lam: float = 1.0,
    clip: bool = False,
    corrected: np.ndarray | None = None,
) -> float:
    """Variance of the ACT loss (at fixed theta) under Poisson sampling d_i ~ Bernoulli(pi_i):

        Var = (1/N^2) sum_i (l_h,i - lam_i * l_m,i)^2 (1 - pi_i) / pi_i

    with lam_i = lam for the exact loss; with ``clip`` (machine weight of corrected items floored
    at 0) lam_i = lam * pi_i on the items whose labels differ (``corrected``), lam elsewhere
    (docs/statistics.md section 3).

    It is zero with a perfect annotator (l_h = l_m, lam = 1) or a perfect critic (pi_i = 1 where
    the labels differ).  Items with pi_i = 0 are never reviewed: they contribute no variance but a
    bias, and are left out of the sum (the term is taken as 0).  For the fixed-size pivotal design
    that :func:`actlabel.select.select` uses, the design variance is at most this formula (ratio
    0.5-1.0 measured, test_statistics_mc.py); the systematic design
    (``select(..., design="systematic")``, the default before) can exceed it 1.5-6x under
    threshold + a small uniform share.
    """
    lam = _check_lam(lam)
    lh = np.asarray(loss_human, dtype=float)
    lm = np.asarray(loss_machine, dtype=float)
    pi = np.asarray(review_prob, dtype=float)
    if lh.ndim != 1 or lh.shape != lm.shape or lh.shape != pi.shape:
        raise ValueError(
            f"loss_human, loss_machine and review_prob must be 1-D of the same length, got "
            f"{lh.shape}, {lm.shape}, {pi.shape}"
        )
    bad = ~np.isfinite(pi) | (pi < 0) | (pi > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"review_prob must be in [0, 1]; got {pi[i].item()!r} at index {i}")
    n = lh.size
    if n == 0:
        return 0.0
    lam_i = np.full(n, lam)
    if clip:
        if corrected is None:
            raise ValueError("clip=True needs `corrected` (human label != machine label, per item)")
        c = np.asarray(corrected, dtype=bool)
        lam_i = np.where(c, lam * pi, lam)
    pos = pi > 0
    terms = (lh[pos] - lam_i[pos] * lm[pos]) ** 2 * (1.0 - pi[pos]) / pi[pos]
    return float(terms.sum() / n**2)


def ppi_lambda(
    probs: np.ndarray,
    machine_labels: np.ndarray,
    human_labels: np.ndarray,
    reviewed: np.ndarray,
    review_prob: np.ndarray,
    *,
    sq_norm: np.ndarray | None = None,
) -> float:
    """The variance-minimising lam of PPI++ (Angelopoulos et al. 2023) for the ACT loss.

    At a pilot fit theta_0 with predicted class probabilities ``probs`` (N, K), the gradient of the
    cross-entropy with respect to the logits is g = p - onehot(label); for a linear model the
    parameter gradient is x (x) g, so inner products scale by ||x||^2 (``sq_norm``, default 1).
    The ACT gradient's variance under Poisson sampling is
    sum_i c_i ||g_h,i - lam g_m,i||^2, c_i = (1 - pi_i)/pi_i (times ||x_i||^2), minimised at

        lam* = sum_i c_i <g_h,i, g_m,i> / sum_i c_i ||g_m,i||^2,

    estimated by Horvitz-Thompson over the reviewed items (weight 1/pi_i) and clipped to [0, 1].
    Where the machine labels agree with the humans (g_h = g_m) lam* is 1; where they are wrong
    and the model fits the machine labels lam* falls towards 0.  Returns 1.0 when no reviewed item
    has pi < 1 (the loss then has no variance to reduce).  The choice uses the reviews, so the
    loss at lam* is unbiased only asymptotically (as in PPI++).
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (items, classes), got {p.shape}")
    n, k = p.shape
    m = np.asarray(machine_labels)
    h = np.asarray(human_labels)
    if m.shape != (n,) or h.shape != (n,):
        raise ValueError(f"machine_labels and human_labels must have shape ({n},)")
    d, pi = _np_reviewed_prob(reviewed, review_prob, n)
    s = np.ones(n) if sq_norm is None else np.asarray(sq_norm, dtype=float)
    use = d & (pi < 1.0)
    if not use.any():
        return 1.0
    pu, mu, hu = p[use], m[use].astype(int), h[use].astype(int)
    if ((mu < 0) | (mu >= k) | (hu < 0) | (hu >= k)).any():
        raise ValueError(f"labels must be classes in [0, {k}) on reviewed items")
    rows = np.arange(pu.shape[0])
    pp = (pu * pu).sum(axis=1)
    g_hm = pp - pu[rows, hu] - pu[rows, mu] + (hu == mu)
    g_mm = pp - 2.0 * pu[rows, mu] + 1.0
    c = (1.0 - pi[use]) / pi[use] ** 2 * s[use]  # (1 - pi)/pi for the variance, 1/pi for HT
    den = float((c * g_mm).sum())
    if den <= 0:
        return 1.0
    return float(np.clip((c * g_hm).sum() / den, 0.0, 1.0))
