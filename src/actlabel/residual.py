"""How many unreviewed machine labels are still wrong: the store's rounds and reviews through
`metrics.residual_error_estimate_over_rounds`."""

from __future__ import annotations

import numpy as np

from actlabel.metrics import ResidualErrorEstimate, ReviewRound, residual_error_estimate_over_rounds
from actlabel.selection import current_state
from actlabel.store import Store


def estimate_for_store(store: Store, confidence: float = 0.95) -> ResidualErrorEstimate | None:
    """None until a selection exists; otherwise the estimate (possibly flagged not identifiable).

    Items selected but not reviewed yet count as unreviewed, which the estimate's docs allow only
    if skipping is unrelated to the label being wrong: status reports them separately.  Reviews of
    items no round drew (imported, or reviewed outside the queue) count as found errors and stay
    out of the Horvitz-Thompson part: human labels with pi = 1 (docs/statistics.md section 4).
    """
    state = current_state(store)
    if state.rowids.size == 0 or np.isnan(state.review_prob).all():
        return None
    has_label = state.machine_label.present()
    reviewed = state.reviewed & has_label
    is_error = np.array(
        [float(h is not None and h != m) for h, m in zip(state.human_label, state.machine_label, strict=True)]
    )
    e = np.nan_to_num(state.error_prob, nan=0.0)
    idx = has_label
    return residual_error_estimate_over_rounds(
        is_error[idx],
        reviewed[idx],
        np.clip(e[idx], 0, 1),
        [
            ReviewRound(r.population[idx], r.drawn[idx], r.prob[idx])
            for r in review_rounds(store, state.rowids)
        ],
        confidence=confidence,
    )


def review_rounds(store: Store, rowids: np.ndarray) -> list[ReviewRound]:
    """Every selection round as (population, drawn, round probability), aligned with `rowids`.

    An item with no record in a round (imported after it) gets probability 0 there: that round
    cannot stand for it, and the estimate skips the round while the item is unreviewed."""
    rounds = []
    drawn_before = np.zeros(rowids.size, dtype=bool)
    for rnd in range(1, store.last_round() + 1):
        ids, selected, prob = store.round_records(rnd)
        at = np.searchsorted(ids, rowids)
        found = at < ids.size
        found[found] = ids[at[found]] == rowids[found]
        sel = np.zeros(rowids.size, dtype=bool)
        p = np.zeros(rowids.size)
        sel[found], p[found] = selected[at[found]], prob[at[found]]
        population = ~drawn_before
        drawn = sel & population
        rounds.append(ReviewRound(population, drawn, np.where(population, p, 0.0)))
        drawn_before |= drawn
    return rounds
