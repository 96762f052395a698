"""`annotate --refine` against the store: how much each review stands for when refine learns from it."""

from __future__ import annotations

import numpy as np
import pytest

from actlabel.project import Project
from actlabel.refine import MAX_REVIEW_WEIGHT, review_weights
from actlabel.selection import current_state, select_for_review

from .test_selection_stage import annotate_and_critique, review_selected_with_gold


def _reviewed_rows(project: Project) -> list[int]:
    state = current_state(project.store)
    return [int(r) for r, h in zip(state.rowids, state.human_label, strict=True) if h is not None]


def test_a_uniform_pilot_gives_every_review_the_same_weight(project: Project) -> None:
    annotate_and_critique(project)
    select_for_review(project.store, budget="auto", pilot_size=4, seed=0)
    review_selected_with_gold(project)
    w = review_weights(project.store, _reviewed_rows(project))
    assert len(w) == 4
    np.testing.assert_allclose(w, 1.0)


def test_reviews_the_critic_was_sure_of_stand_for_less_than_the_uniform_pilot(project: Project) -> None:
    """Pilot: 4 of 12 items at pi = 1/3. Next round: threshold picks among the rest with pi = 1
    (plus a uniform share): a sure pick stands for itself, a pilot review for three items. The
    pilot's items, recorded with review_prob 1 by the later round, keep their own round's pi."""
    store = project.store
    annotate_and_critique(project)
    select_for_review(store, budget="auto", pilot_size=4, seed=0)
    review_selected_with_gold(project)
    pilot = set(_reviewed_rows(project))
    select_for_review(store, budget="3", rule="threshold", uniform=0.0, seed=1)
    review_selected_with_gold(project)
    rows = _reviewed_rows(project)
    assert len(rows) == 7
    state = current_state(store)
    latest_pi = dict(zip(state.rowids.tolist(), state.review_prob.tolist(), strict=True))
    assert all(latest_pi[r] == 1.0 for r in rows)  # the ACT loss's pi: no use to refine
    w = dict(zip(rows, review_weights(store, rows).tolist(), strict=True))
    pilot_w = {w[r] for r in rows if r in pilot}
    sure_w = {w[r] for r in rows if r not in pilot}
    assert len(pilot_w) == 1 and len(sure_w) == 1
    assert pilot_w.pop() == pytest.approx(3 * sure_w.pop())
    assert np.mean(list(w.values())) == pytest.approx(1.0)


def test_a_tiny_drawing_probability_is_capped(project: Project) -> None:
    """One review drawn at pi = 0.001 must not outweigh the rest by a thousand."""
    store = project.store
    annotate_and_critique(project)
    rows = [it.rowid for it in store.iter_items()][:3]
    run_id = store.start_run("select", {"round": 1})
    store.add_selections(
        [
            {"item_rowid": r, "run_id": run_id, "round": 1, "selected": 1, "review_prob": pi}
            for r, pi in zip(rows, (0.001, 1.0, 1.0), strict=True)
        ]
    )
    w = review_weights(store, rows)
    assert w[0] / w[1] == pytest.approx(MAX_REVIEW_WEIGHT)
    assert w[1] == w[2]


def test_a_review_given_outside_the_queue_weighs_as_a_sure_pick(project: Project) -> None:
    annotate_and_critique(project)
    rows = [it.rowid for it in project.store.iter_items()][:2]
    np.testing.assert_allclose(review_weights(project.store, rows), 1.0)
    assert review_weights(project.store, []).size == 0
