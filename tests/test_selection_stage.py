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


# ---------------------------------------------------------------------------------------------
# issue 12 item 7: reviews outside the design, and `--budget auto` with them


@pytest.fixture
def project40(tmp_path, tweets_csv) -> Project:  # noqa: ANN001
    """40 items (the 12 tweets, repeated with a number), gold labels included."""
    import csv

    rows = list(csv.DictReader(tweets_csv.open(encoding="utf-8")))
    path = tmp_path / "forty.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "gold"])
        w.writeheader()
        for k in range(40):
            r = rows[k % len(rows)]
            w.writerow({"text": f"{r['text']} #{k}", "gold": r["gold"]})
    proj = Project.init(tmp_path / "p40", ["positive", "negative", "neutral"], instructions="Sentiment.")
    proj.import_file(path, text_columns=["text"], gold_column="gold")
    yield proj
    proj.close()


def _review_by_hand(project: Project, positions: list[int], wrong: bool = False) -> None:
    store = project.store
    rowids = [int(r) for r in current_state(store).rowids]
    names = store.task.label_names
    for item in store.iter_items([rowids[k] for k in positions]):
        label = names[(names.index(item.gold_label) + 1) % 3] if wrong else item.gold_label
        store.add_review(item.rowid, label, reviewer="hand", source="import")


def test_out_of_design_reviews_export_pi_one_and_leave_the_estimate_alone(project40: Project) -> None:
    """Issue 12: a review outside the queue got the round's small review_prob (weight 1/p = 100 on
    its human label, -99 on its machine label) and the estimate said 92 errors left when 3 were."""
    from actlabel.data import iter_export_batches

    annotate_and_critique(project40, wrong_every=5)  # items 0, 5, 10, ... wrong (8 errors)
    select_for_review(project40.store, budget="6", uniform=0.2, seed=0)
    review_selected_with_gold(project40)
    state = current_state(project40.store)
    outside = [k for k in range(40) if not state.selected[k]][:3]
    _review_by_hand(project40, outside)
    est = estimate_for_store(project40.store)
    state = current_state(project40.store)
    wrong = np.array([k % 5 == 0 for k in range(40)])
    left = int((wrong & ~state.reviewed).sum())
    assert est.n_out_of_design == 3 and "outside the selection" in est.note
    assert est.lower <= left <= est.upper and abs(est.estimate - left) < 10, (est, left)
    batch = next(iter_export_batches(project40.store))
    rp = dict(zip(batch["item_id"], batch["review_prob"], strict=True))
    ids = list(batch["item_id"])
    for k in outside:
        assert rp[ids[k]] == 1.0
    in_design = [k for k in range(40) if state.selected[k] and state.review_prob[k] < 1]
    assert all(rp[ids[k]] < 1 for k in in_design)


def test_budget_auto_counts_reviews_outside_the_pilot(project40: Project) -> None:
    """40 items, 3 reviewed by hand, a 10-item pilot full of errors: the recommendation used to be
    30 (N - pilot) and select failed with "budget 30 is larger than the 27 items not yet reviewed"."""
    annotate_and_critique(project40, wrong_every=1)  # every machine label wrong
    _review_by_hand(project40, [1, 2, 3])
    first = select_for_review(project40.store, budget="auto", pilot_size=10, seed=0)
    assert first.pilot and first.selected_now == 10
    review_selected_with_gold(project40)
    second = select_for_review(project40.store, budget="auto", uniform=0.2)
    assert second.budget == 27 and second.selected_now == 27
    assert "x 27 unreviewed items" in second.advice


def test_pilot_items_without_a_machine_label_count_as_errors(project40: Project) -> None:
    annotate_and_critique(project40, wrong_every=1000)  # only item 0 wrong
    store = project40.store
    first = select_for_review(store, budget="auto", pilot_size=10, seed=0)
    state = current_state(store)
    pilot = np.flatnonzero(state.selected)
    failed = [int(state.rowids[k]) for k in pilot[:2] if k != 0]
    store.add_annotations(
        [{"item_rowid": r, "run_id": 3, "model": "m", "label": None, "status": "failed"} for r in failed]
    )
    review_selected_with_gold(project40)
    second = select_for_review(store, budget="auto", uniform=0.2)
    wrong_in_pilot = int(0 in pilot) + len(failed)
    assert f"pilot: {wrong_in_pilot}/10 machine labels wrong" in second.advice, (first, second.advice)


def test_status_line_says_how_many_uniform_reviews_halve_the_interval() -> None:
    from actlabel.cli import _residual_line
    from actlabel.metrics import residual_error_estimate
    from actlabel.select import select

    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.15
    e = np.clip(np.where(y, rng.beta(3, 2, 2000), rng.beta(1, 5, 2000)), 0, 1)
    sel = select(e, 300, rule="threshold", uniform=0.1, seed=0)
    d = sel.selected
    est = residual_error_estimate(np.where(d, y, -1), d, sel.review_prob, e)
    line = _residual_line(est)
    assert f"about {est.uniform_reviews_to_halve} more uniform reviews would halve the interval" in line
    from dataclasses import asdict

    low = asdict(est) | {"estimate": -3.2}  # the unbiased estimate can fall below 0 by chance
    assert "about 0 (unbiased estimate -3.2, below 0 by chance)" in _residual_line(low)


def test_current_state_labels_read_like_lists(project: Project) -> None:
    annotate_and_critique(project)
    store = project.store
    rowids = store.item_rowids()
    store.add_annotations(
        [{"item_rowid": rowids[1], "run_id": 1, "model": "m", "label": None, "status": "failed"}]
    )
    store.add_review(rowids[2], "neutral", reviewer="t", source="simulated")
    state = current_state(store)
    current = {r: a.label for r, a in store.current_annotations().items()}
    expected = [current.get(r) for r in rowids]
    assert list(state.machine_label) == expected and expected[1] is None
    assert [state.machine_label[i] for i in range(len(rowids))] == expected
    assert state.machine_label[1:3] == expected[1:3] and len(state.machine_label) == len(rowids)
    assert list(state.human_label) == [None, None, "neutral"] + [None] * (len(rowids) - 3)
    assert state.reviewed.tolist() == [k == 2 for k in range(len(rowids))]


def test_status_estimate_stands_on_every_round(project40: Project) -> None:
    """Issue 12 item 5: status used the last round's draw alone (a few items at a small pi), so
    the pilot's uniform reviews were wasted on the estimate; now every round counts."""
    from actlabel.metrics import residual_error_estimate
    from actlabel.residual import review_rounds

    annotate_and_critique(project40, wrong_every=4)
    store = project40.store
    select_for_review(store, budget="auto", pilot_size=10, seed=0)
    review_selected_with_gold(project40)
    for seed in (1, 2):
        select_for_review(store, budget="6", uniform=0.2, seed=seed)
        review_selected_with_gold(project40)
    state = current_state(store)
    rounds = review_rounds(store, state.rowids)
    assert [int(r.drawn.sum()) for r in rounds] == [10, 6, 6]
    assert rounds[0].population.all() and np.allclose(rounds[0].prob, 10 / 40)
    assert not (rounds[2].population & (rounds[0].drawn | rounds[1].drawn)).any()
    est = estimate_for_store(store)
    assert est.identifiable and "over 3 rounds" in est.note
    wrong = np.array([k % 4 == 0 for k in range(40)])
    left = int((wrong & ~state.reviewed).sum())
    assert est.lower <= left <= est.upper, (est, left)
    last_only = residual_error_estimate(
        np.where(state.reviewed, wrong, -1), state.reviewed, state.review_prob, state.error_prob
    )
    assert est.upper - est.lower < last_only.upper - last_only.lower
    # an item no round has a record for (imported later) has probability 0 in every round
    extra = review_rounds(store, np.append(state.rowids, state.rowids.max() + 1))
    assert all(r.prob[-1] == 0 and r.population[-1] for r in extra)
