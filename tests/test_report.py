"""`actlabel report`: a self-contained HTML file whose numbers match actlabel.metrics on the same data."""

# ruff: noqa: E402 - matplotlib is the optional `report` extra: skip before importing the report module

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from click.testing import CliRunner

from actlabel import metrics
from actlabel.cli import main
from actlabel.project import Project
from actlabel.report import render_report, write_report
from actlabel.residual import estimate_for_store
from actlabel.selection import current_state, select_for_review

from .conftest import write_csv

XSS_LABEL = "<script>alert(1)</script>"
# a label matplotlib would try to parse as TeX (and fail on) unless told it is plain text
TEX_LABEL = r"price $\nocommand{5}$"
LABELS = ["positive", TEX_LABEL, XSS_LABEL]
XSS_RATIONALE = 'odd wording <img src=x onerror="alert(2)">'
N_ITEMS = 60


def build_project(tmp_path: Path, *, gold: bool, review: bool = True, leave_pending: int = 0) -> Project:
    """A real project: import, machine labels (every 4th wrong), two critique strategies, a selection
    round with a uniform share, and reviews answered with the true label."""
    rng = np.random.default_rng(7)
    truth = [LABELS[k % 3] for k in range(N_ITEMS)]
    rows = [{"text": f"item number {k} says something", "gold": truth[k]} for k in range(N_ITEMS)]
    path = write_csv(tmp_path / "items.csv", rows if gold else [{"text": r["text"]} for r in rows])
    project = Project.init(tmp_path / "p", LABELS)
    project.import_file(path, text_columns=["text"], gold_column="gold" if gold else None)
    store = project.store
    items = list(store.iter_items())
    anns, naive, cot = [], [], []
    for k, item in enumerate(items):
        wrong = k % 4 == 0
        label = LABELS[(LABELS.index(truth[k]) + 1) % 3] if wrong else truth[k]
        anns.append(
            {"item_rowid": item.rowid, "run_id": 1, "model": "annotator", "label": label, "status": "ok"}
        )
        for records, noise, strategy in ((naive, 0.45, "naive"), (cot, 0.2, "cot")):
            e = float(np.clip((0.7 if wrong else 0.25) + rng.normal(0, noise), 0, 1))
            records.append(
                {
                    "item_rowid": item.rowid,
                    "run_id": 2,
                    "model": "critic",
                    "strategy": strategy,
                    "error_prob": e,
                    "proposed_label": truth[k],
                    "rationale": XSS_RATIONALE,
                    "status": "ok",
                }
            )
    store.add_annotations(anns)
    # naive first, so cot is every item's latest critique (the one selection and the report use)
    store.add_critiques(naive)
    store.add_critiques(cot)
    if review:
        select_for_review(store, budget="15", uniform=0.2, seed=0)
        state = current_state(store)
        todo = [int(r) for r, s in zip(state.rowids, state.selected, strict=True) if s]
        by_rowid = {item.rowid: k for k, item in enumerate(items)}
        for rowid in todo[: len(todo) - leave_pending]:
            store.add_review(rowid, truth[by_rowid[rowid]], reviewer="ana <admin>", source="simulated")
    return project


def arrays(project: Project) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(error_prob, machine, human, gold) from the store, independently of the report module."""
    e, m, h, g = [], [], [], []
    cols = project.store.CURRENT_COLUMNS
    for rows in project.store.iter_current():
        for r in rows:
            e.append(r[cols.index("error_prob")])
            m.append(r[cols.index("machine_label")])
            h.append(r[cols.index("human_label")])
            g.append(r[cols.index("gold_label")])
    return (
        np.array(e, dtype=float),
        np.array(m, dtype=object),
        np.array(h, dtype=object),
        np.array(g, dtype=object),
    )


def number(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', page)
    assert match, f"no #{element_id} in the report"
    return match.group(1)


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    # every src= is an embedded image, nothing is fetched
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page and "@import" not in page


def test_report_with_gold_matches_the_metrics(tmp_path: Path) -> None:
    project = build_project(tmp_path, gold=True, leave_pending=1)
    out = write_report(project.store, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    # label bars, confusion matrix, reliability diagram, budget curve
    assert page.count("data:image/png;base64,") >= 4
    assert "Needs gold labels" not in page

    e, m, h, g = arrays(project)
    wrong = m != g
    assert number(page, "critic-auroc") == f"{metrics.error_detection_auroc(e, wrong):.3f}"
    assert number(page, "critic-ece") == f"{metrics.expected_calibration_error(e, wrong):.3f}"
    assert number(page, "machine-accuracy") == f"{100 * (~wrong).mean():.1f}%"

    reviewed = np.array([x is not None for x in h])
    gain = metrics.annotation_quality_gain(~wrong, reviewed)
    saving = metrics.annotation_budget_saving(gain.errors_fixed, gain.budget, gain.n_errors, N_ITEMS)
    assert number(page, "aqg") == f"{100 * gain.aqg:.2f}%"
    assert number(page, "abs") == f"{100 * saving:.1f}%"

    est = estimate_for_store(project.store)
    assert est.identifiable
    assert number(page, "residual-estimate") == f"{est.estimate:,.1f}"

    # data strings are escaped, never live markup
    assert XSS_LABEL not in page and html.escape(XSS_LABEL) in page
    assert XSS_RATIONALE not in page and html.escape(XSS_RATIONALE) in page
    assert "ana &lt;admin&gt;" in page
    assert f"<td>{html.escape(TEX_LABEL)}</td>" in page  # drawn in the plots as plain text, no crash
    # one selected item left unreviewed is flagged
    assert "Selected but not reviewed: 1 item." in page
    # two critique strategies: a per-strategy table, each AUROC from its own latest critiques
    strategies = dict(
        project.store.conn.execute(
            "SELECT strategy, group_concat(error_prob) FROM (SELECT * FROM critiques ORDER BY id) GROUP BY strategy"
        ).fetchall()
    )
    assert set(strategies) == {"naive", "cot"}
    naive_e = np.array(strategies["naive"].split(","), dtype=float)
    naive_auroc = metrics.error_detection_auroc(naive_e, wrong)
    assert f"<td>naive</td><td class=num>{N_ITEMS}</td><td class=num>{naive_auroc:.3f}</td>" in page
    project.close()


def test_report_without_gold_says_what_needs_gold(tmp_path: Path) -> None:
    project = build_project(tmp_path, gold=False)
    page = render_report(project.store)
    assert_self_contained(page)
    # accuracy, budget curve (and the critic section's basis) say they need gold
    assert page.count("Needs gold labels") >= 3
    assert "needs the true label of every item" in page
    # the critic is judged on reviewed items against the human labels, and says so
    e, m, h, _ = arrays(project)
    rev = np.array([x is not None for x in h])
    auroc = metrics.error_detection_auroc(e[rev], m[rev] != h[rev])
    assert number(page, "critic-auroc") == f"{auroc:.3f}"
    assert "against human reviews" in page
    assert number(page, "human-agreement") == f"{100 * (m[rev] == h[rev]).mean():.1f}%"
    assert page.count("data:image/png;base64,") >= 3
    project.close()


def test_report_before_any_review_or_item(tmp_path: Path) -> None:
    project = build_project(tmp_path, gold=False, review=False)
    page = render_report(project.store)
    assert "No human reviews yet" in page and "No selection yet" in page
    assert "Needs gold labels" in page
    project.close()
    empty = Project.init(tmp_path / "empty", ["a", "b"])
    page = render_report(empty.store)
    assert "No items yet" in page and "No runs recorded yet" in page
    empty.close()


def test_downstream_table_from_meta(tmp_path: Path) -> None:
    project = build_project(tmp_path, gold=True)
    assert "produced by <code>actlabel demo</code>" in render_report(project.store)
    downstream = {
        "rows": [
            {"training data": "full human labels", "test accuracy": 0.71, "human reviews": 1200},
            {"training data": "ACT <threshold>", "test accuracy": 0.6925, "human reviews": 180},
        ],
        "note": "linear probe on frozen features & 5 seeds",
    }
    project.store.set_meta("downstream", json.dumps(downstream))
    page = render_report(project.store)
    section = page[page.index('<section id="downstream">') :]
    assert "<th>training data</th><th class=num>test accuracy</th><th class=num>human reviews</th>" in section
    assert "<td>full human labels</td><td class=num>71.00%</td><td class=num>1,200</td>" in section
    assert "ACT &lt;threshold&gt;" in section and "69.25%" in section
    assert "linear probe on frozen features &amp; 5 seeds" in section
    project.store.set_meta("downstream", "{not json")
    assert "could not be read" in render_report(project.store)
    project.close()


def test_cli_report_writes_the_file(tmp_path: Path) -> None:
    build_project(tmp_path, gold=True).close()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    assert (tmp_path / "p" / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_survives_odd_but_legal_states(tmp_path: Path) -> None:
    """Every machine label right (AUROC undefined), a failed annotation, a failed critique, a review
    given outside any selection round, and gold on only some items."""
    rows = [{"text": f"t{k}", "gold": LABELS[k % 3] if k < 8 else ""} for k in range(12)]
    project = Project.init(tmp_path / "p", LABELS)
    project.import_file(write_csv(tmp_path / "d.csv", rows), text_columns=["text"], gold_column="gold")
    store = project.store
    items = list(store.iter_items())
    store.add_annotations(
        {"item_rowid": it.rowid, "run_id": 1, "model": "a", "label": LABELS[k % 3], "status": "ok"}
        if k
        else {
            "item_rowid": it.rowid,
            "run_id": 1,
            "model": "a",
            "label": None,
            "status": "failed",
            "error": "x",
        }
        for k, it in enumerate(items)
    )
    store.add_critiques(
        {
            "item_rowid": it.rowid,
            "run_id": 2,
            "model": "c",
            "strategy": "cot",
            "error_prob": None if k == 1 else 0.1 * (k % 5),
            "status": "failed" if k == 1 else "ok",
        }
        for k, it in enumerate(items)
    )
    store.add_review(items[2].rowid, LABELS[2], reviewer="bo", source="app")
    page = render_report(store)
    assert_self_contained(page)
    assert number(page, "critic-auroc") == "n/a"
    assert "needs both right and wrong machine labels" in page
    assert "measured on</th><td>7 items with a machine label and a gold label" in page
    assert "No selection yet" in page
    assert number(page, "abs") == "n/a"
    project.close()


def test_item_text_with_markup_is_escaped_in_the_report(tmp_path: Path) -> None:
    text = "<script>alert('item')</script> & more"
    path = write_csv(tmp_path / "items.csv", [{"text": text}, {"text": "plain"}])
    project = Project.init(tmp_path / "p", ["a", "b"])
    project.import_file(path, text_columns=["text"])
    store = project.store
    items = list(store.iter_items())
    store.add_annotations(
        {"item_rowid": it.rowid, "run_id": 1, "model": "m", "label": "a", "status": "ok"} for it in items
    )
    store.add_critiques(
        {
            "item_rowid": it.rowid,
            "run_id": 2,
            "model": "c",
            "strategy": "cot",
            "error_prob": 0.9,
            "status": "ok",
        }
        for it in items
    )
    page = render_report(store)
    assert "<script" not in page
    # the suspicious-items table shows the text, escaped
    assert html.escape(text) in page
    project.close()
