"""The simulated reviewer answers the selected items with gold labels (optionally with errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from actlabel.cli import main
from actlabel.errors import UserError
from actlabel.review.simulate import simulate_review
from actlabel.store import Store

from .test_review_support import LABELS, make_project, reviews


def test_answers_every_selected_unreviewed_item_with_gold(tmp_path: Path) -> None:
    selected = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    root = make_project(tmp_path / "p", 12, selected=selected)
    with Store.open(root) as store:
        store.add_review(store.rowid_of("it0002"), "negative", reviewer="ann", source="human")
        result = simulate_review(store, source="gold")
        assert result.reviewed == 8
        # Machine labels are wrong on items 0, 3, 6 (and the critic proposes gold there).
        assert result.agreed_with_machine == 8 - 3
        assert result.agreed_with_proposal == 3
        assert "reviewed 8 items" in str(result) and "\n" not in str(result)
        # A second run finds nothing left.
        assert simulate_review(store).reviewed == 0
    recs = [r for r in reviews(root) if r["source"] == "simulated"]
    assert {r["reviewer"] for r in recs} == {"simulated-gold"}
    assert {r["item_id"]: r["label"] for r in recs} == {
        f"it{i:04d}": LABELS[i % 3] for i in selected if i != 2
    }


def test_error_rate_gives_other_labels_reproducibly(tmp_path: Path) -> None:
    results = []
    for k in range(2):
        root = make_project(tmp_path / f"p{k}", 300)
        with Store.open(root) as store:
            results.append((simulate_review(store, error_rate=0.3, seed=7), reviews(root)))
    (res_a, recs_a), (res_b, recs_b) = results
    assert [(r["item_id"], r["label"]) for r in recs_a] == [(r["item_id"], r["label"]) for r in recs_b]
    wrong = [r for r in recs_a if r["label"] != LABELS[int(r["item_id"][2:]) % 3]]
    assert res_a.wrong_answers == len(wrong)
    assert 60 <= len(wrong) <= 120  # ~90 expected of 300 at rate 0.3
    assert all(r["label"] in LABELS for r in wrong)
    # Another seed gives another pattern.
    root = make_project(tmp_path / "p2", 300)
    with Store.open(root) as store:
        simulate_review(store, error_rate=0.3, seed=8)
    assert [r["label"] for r in reviews(root)] != [r["label"] for r in recs_a]


def test_missing_gold_is_one_line_error_and_stores_nothing(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 10, gold=[0, 1, 2, 3, 4, 5, 6])
    with Store.open(root) as store:
        with pytest.raises(UserError) as info:
            simulate_review(store)
        assert "3 of 10 selected items have no gold label" in str(info.value)
        assert "\n" not in str(info.value)
        assert store.count("reviews") == 0


def test_nothing_selected_is_not_an_error_even_without_gold(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 5, selected=[], gold=False)
    with Store.open(root) as store:
        result = simulate_review(store)
    assert result.reviewed == 0 and "no selected items" in str(result)


def test_bad_arguments(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 3)
    with Store.open(root) as store:
        with pytest.raises(UserError, match="unknown simulated reviewer"):
            simulate_review(store, source="oracle")
        with pytest.raises(UserError, match="between 0 and 1"):
            simulate_review(store, error_rate=1.5)


def test_cli_review_simulate(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 9, selected=[0, 1, 2, 3])
    out = CliRunner().invoke(
        main, ["review", str(root), "--simulate", "gold", "--error-rate", "0", "--seed", "1"]
    )
    assert out.exit_code == 0, out.output
    assert "reviewed 4 items" in out.output
    assert len(reviews(root)) == 4
