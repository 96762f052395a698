"""Stage 3 through the store: records, rounds, the pilot, and the residual-error estimate in status."""

from __future__ import annotations

import numpy as np
import pytest

from actlabel.errors import UserError
from actlabel.project import Project
from actlabel.residual import estimate_for_store
from actlabel.selection import current_state, select_for_review


def annotate_and_critique(project: Project, wrong_every: int = 3) -> None:
    """Machine labels: gold except every k-th item; error_prob high on exactly the wrong ones (plus noise)."""
    store = project.store
    labels = store.task.label_names
    rng = np.random.default_rng(0)
    anns, crits = [], []
    for k, item in enumerate(store.iter_items()):
        wrong = k % wrong_every == 0
        label = labels[(labels.index(item.gold_label) + 1) % 3] if wrong else item.gold_label
        anns.append({"item_rowid": item.rowid, "run_id": 1, "model": "m", "label": label, "status": "ok"})
        e = float(np.clip((0.8 if wrong else 0.2) + rng.normal(0, 0.05), 0, 1))
        crits.append(
            {
                "item_rowid": item.rowid,
                "run_id": 2,
                "model": "c",
                "strategy": "cot",
                "error_prob": e,
                "proposed_label": item.gold_label,
                "rationale": "r",
                "status": "ok",
            }
        )
    store.add_annotations(anns)
    store.add_critiques(crits)


def review_selected_with_gold(project: Project) -> int:
    store = project.store
    state = current_state(store)
    todo = [
        int(r)
        for r, s, h in zip(state.rowids, state.selected, state.human_label, strict=True)
        if s and h is None
    ]
    for item in store.iter_items(todo):
        store.add_review(item.rowid, item.gold_label, reviewer="t", source="simulated")
    return len(todo)


def test_threshold_selects_the_most_suspicious(project: Project) -> None:
    annotate_and_critique(project)
    summary = select_for_review(project.store, budget="4")
    assert summary.selected_now == 4 and summary.round == 1
    state = current_state(project.store)
    chosen_e = state.error_prob[state.selected]
    assert chosen_e.min() > state.error_prob[~state.selected].max()
    assert set(state.review_prob) == {0.0, 1.0}
    assert "4 of 12" in str(summary)


def test_selection_refuses_missing_critique_and_pending_reviews(project: Project) -> None:
    with pytest.raises(UserError, match="no critique yet"):
        store = project.store
        store.add_annotations(
            [
                {"item_rowid": r, "run_id": 1, "model": "m", "label": "neutral", "status": "ok"}
                for r in store.item_rowids()
            ]
        )
        select_for_review(store, budget="20%")


def test_rounds_keep_reviewed_items_and_refuse_while_pending(project: Project) -> None:
    annotate_and_critique(project)
    select_for_review(project.store, budget="3", uniform=0.3)
    with pytest.raises(UserError, match="not reviewed yet"):
        select_for_review(project.store, budget="2", uniform=0.3)
    review_selected_with_gold(project)
    s2 = select_for_review(project.store, budget="2", uniform=0.3, seed=1)
    assert s2.round == 2 and s2.selected_now == 2 and s2.selected_total == 5
    state = current_state(project.store)
    assert np.all(state.review_prob[state.reviewed] == 1.0)
    assert np.all(state.review_prob[~state.reviewed] > 0)


def test_budget_auto_runs_a_pilot_then_recommends(project: Project) -> None:
    annotate_and_critique(project)
    first = select_for_review(project.store, budget="auto", pilot_size=6)
    assert first.pilot and first.selected_now == 6 and "review the 6 pilot items" in str(first)
    with pytest.raises(UserError, match="not reviewed yet"):
        select_for_review(project.store, budget="auto")
    review_selected_with_gold(project)
    second = select_for_review(project.store, budget="auto", uniform=0.2)
    assert not second.pilot and "pilot:" in second.advice and second.budget >= 1


def test_residual_estimate_needs_uniform_share(project: Project) -> None:
    annotate_and_critique(project)
    assert estimate_for_store(project.store) is None
    select_for_review(project.store, budget="4")
    review_selected_with_gold(project)
    est = estimate_for_store(project.store)
    assert not est.identifiable and "--uniform" in est.note


def test_bad_budgets_are_one_line_errors(project: Project) -> None:
    annotate_and_critique(project)
    for bad in ["-3", "150%", "lots", "13"]:
        with pytest.raises(UserError, match="--budget"):
            select_for_review(project.store, budget=bad)
