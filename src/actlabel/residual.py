"""How many unreviewed machine labels are still wrong: the store's reviews through `metrics.residual_error_estimate`."""

from __future__ import annotations

import numpy as np

from actlabel.metrics import ResidualErrorEstimate, residual_error_estimate
from actlabel.selection import current_state
from actlabel.store import Store


def out_of_design_reviews(selected: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Reviewed items that no selection drew (imported, or reviewed outside the queue).

    ``selected`` is the latest selection record per item (cumulative: a later round marks every
    item reviewed before it as selected with review_prob 1).  A review of an item that record does
    not select was not drawn by the design: it is a human label with pi = 1 that stays out of the
    reweighted part of the ACT loss and of the residual estimate (docs/statistics.md section 4).
    """
    return np.asarray(reviewed, dtype=bool) & ~np.asarray(selected, dtype=bool)


def estimate_for_store(store: Store, confidence: float = 0.95) -> ResidualErrorEstimate | None:
    """None until a selection exists; otherwise the estimate (possibly flagged not identifiable).

    Items selected but not reviewed yet count as unreviewed, which the estimate's docs allow only
    if skipping is unrelated to the label being wrong: status reports them separately.  Reviews of
    items the design never selected count as found errors and stay out of the Horvitz-Thompson part.
    """
    state = current_state(store)
    if state.rowids.size == 0 or np.isnan(state.review_prob).all():
        return None
    has_label = np.array([m is not None for m in state.machine_label], dtype=bool)
    reviewed = state.reviewed & has_label
    pi = np.nan_to_num(state.review_prob, nan=0.0)
    ood = out_of_design_reviews(state.selected, reviewed)
    is_error = np.array(
        [float(h is not None and h != m) for h, m in zip(state.human_label, state.machine_label, strict=True)]
    )
    e = np.nan_to_num(state.error_prob, nan=0.0)
    idx = has_label
    return residual_error_estimate(
        is_error[idx],
        reviewed[idx],
        pi[idx],
        np.clip(e[idx], 0, 1),
        confidence=confidence,
        out_of_design=ood[idx],
    )
