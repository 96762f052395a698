"""Label Studio and Argilla: export the selected items, import the tools' own export files back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from actlabel.cli import main
from actlabel.errors import UserError
from actlabel.review.adapters import export_for_tool, import_from_tool, labelstudio_config_path
from actlabel.store import Store

from .test_review_support import LABELS, error_prob_of, expected_order, make_project, reviews

SELECTED = [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "p", 12, selected=SELECTED)
    with Store.open(root) as store:
        store.add_review(store.rowid_of("it0003"), "neutral", reviewer="ann", source="human")
    return root


def _gold(item_id: str) -> str:
    return LABELS[int(item_id[2:]) % 3]


# ---- Label Studio -----------------------------------------------------------------------------


def _labelstudio_export(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Label Studio's JSON export looks like after people annotated the imported tasks.

    Per the Label Studio docs (Export > JSON): each task keeps `id`, `data`, `predictions`, and gains
    `annotations` with `result`, `completed_by`, `was_cancelled`, timestamps and `lead_time`.
    """
    out = []
    for n, task in enumerate(tasks, 1):
        item_id = task["data"]["item_id"]

        def ann(
            aid: int, label: str, user: Any, updated: str, cancelled: bool = False, n: int = n
        ) -> dict[str, Any]:
            return {
                "id": aid,
                "completed_by": user,
                "was_cancelled": cancelled,
                "ground_truth": False,
                "result": [
                    {
                        "id": f"r{aid}",
                        "type": "choices",
                        "from_name": "label",
                        "to_name": "text",
                        "origin": "manual",
                        "value": {"choices": [label]},
                    }
                ],
                "created_at": "2024-05-01T10:00:00.000000Z",
                "updated_at": updated,
                "lead_time": 4.25,
                "task": n,
                "project": 1,
            }

        annotations = []
        if n == 1:  # two annotators: the later one wins
            annotations = [
                ann(100, "neutral", 1, "2024-05-01T10:05:00.000000Z"),
                ann(101, _gold(item_id), {"id": 2, "email": "bo@example.org"}, "2024-05-01T10:09:00.000000Z"),
            ]
        elif n == 2:  # cancelled (skipped) only
            annotations = [ann(102, "negative", 1, "2024-05-01T10:06:00.000000Z", cancelled=True)]
        elif n != 3:  # task 3: not annotated yet
            annotations = [ann(103 + n, _gold(item_id), 1, "2024-05-01T10:07:00.000000Z")]
        out.append(
            {
                "id": n,
                "data": task["data"],
                "annotations": annotations,
                "predictions": task["predictions"],
                "drafts": [],
                "meta": {},
                "created_at": "2024-05-01T09:00:00Z",
                "updated_at": "2024-05-01T10:09:00Z",
                "inner_id": n,
                "total_annotations": len(annotations),
                "cancelled_annotations": 0,
                "total_predictions": 1,
                "comment_count": 0,
                "project": 1,
            }
        )
    return out


def test_labelstudio_export_tasks_and_config(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ls" / "tasks.json"
    with Store.open(root) as store:
        assert export_for_tool(store, out, "labelstudio") == 7
    tasks = json.loads(out.read_text())
    ids = [t["data"]["item_id"] for t in tasks]
    assert ids == [i for i in expected_order(12, SELECTED) if i != "it0003"]  # reviewed item left out
    first = tasks[0]
    i = int(first["data"]["item_id"][2:])
    assert first["data"]["text"] == f"text of item {i}"
    pred = first["predictions"][0]
    assert pred["model_version"] == "actlabel-machine"
    assert pred["score"] == pytest.approx(1 - error_prob_of(i))
    assert pred["result"][0]["type"] == "choices" and pred["result"][0]["from_name"] == "label"
    assert pred["result"][0]["value"]["choices"] == [first["data"]["machine_label"]]
    assert f"because of item {i}" in first["data"]["critic_note"]

    config = ET.fromstring(labelstudio_config_path(out).read_text())
    assert config.tag == "View"
    assert config.find("Text[@name='text']").get("value") == "$text"
    choices = config.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("label", "text")
    assert [c.get("value") for c in choices.findall("Choice")] == LABELS


def test_labelstudio_round_trip(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    with Store.open(root) as store:
        export_for_tool(store, out, "labelstudio")
    exported = tmp_path / "project-1-at-2024-05-01.json"
    tasks = _labelstudio_export(json.loads(out.read_text()))
    exported.write_text(json.dumps(tasks))
    with Store.open(root) as store:
        result = import_from_tool(store, exported, "labelstudio")
    assert (result.reviews, result.skipped, result.unanswered) == (
        5,
        1,
        2,
    )  # task 2 only cancelled, task 3 open
    assert "imported 5 reviews" in str(result)
    recs = [r for r in reviews(root) if r["source"] == "labelstudio"]
    by_item = {r["item_id"]: r for r in recs}
    first = tasks[0]["data"]["item_id"]
    assert by_item[first]["label"] == _gold(first) and by_item[first]["reviewer"] == "bo@example.org"
    assert tasks[1]["data"]["item_id"] not in by_item  # cancelled
    assert tasks[2]["data"]["item_id"] not in by_item  # not annotated
    assert all(r["label"] == _gold(r["item_id"]) for r in recs)
    assert {r["reviewer"] for r in recs} == {"bo@example.org", "labelstudio-user-1"}
    assert {r["duration_ms"] for r in recs} == {4250}
    # Importing the same file again adds nothing; a changed answer is appended and wins.
    with Store.open(root) as store:
        assert import_from_tool(store, exported, "labelstudio").reviews == 0
    tasks[3]["annotations"][0]["result"][0]["value"]["choices"] = [
        "negative" if _gold(tasks[3]["data"]["item_id"]) != "negative" else "positive"
    ]
    exported.write_text(json.dumps(tasks))
    with Store.open(root) as store:
        assert import_from_tool(store, exported, "labelstudio").reviews == 1
        latest = store.latest("reviews", ["label"])[store.rowid_of(tasks[3]["data"]["item_id"])][0]
    assert latest == tasks[3]["annotations"][0]["result"][0]["value"]["choices"][0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[4]["data"].update(item_id="nope"), "task 5: item 'nope' is not in this project"),
        (
            lambda t: t[4]["annotations"][0]["result"][0]["value"].update(choices=["great"]),
            "task 5, annotation 108: label 'great' is not one of the task's labels",
        ),
        (
            lambda t: t[4]["annotations"][0]["result"][0]["value"].update(choices=["positive", "negative"]),
            "expected exactly one label, got 2",
        ),
        (lambda t: t[4].pop("annotations"), "task 5: no `annotations` list"),
        (lambda t: t[4]["data"].pop("item_id"), "task 5: no data.item_id"),
        (lambda t: t.append("junk"), "task #8: not a JSON object"),
    ],
)
def test_labelstudio_bad_files_store_nothing(root: Path, tmp_path: Path, mutate: Any, message: str) -> None:
    out = tmp_path / "tasks.json"
    with Store.open(root) as store:
        export_for_tool(store, out, "labelstudio")
    tasks = _labelstudio_export(json.loads(out.read_text()))
    mutate(tasks)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tasks))
    before = len(reviews(root))
    with Store.open(root) as store, pytest.raises(UserError) as info:
        import_from_tool(store, bad, "labelstudio")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert len(reviews(root)) == before


def test_malformed_and_missing_files(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "data": ')
    with Store.open(root) as store:
        with pytest.raises(UserError, match=r"bad.json: not valid JSON \(.* line 1"):
            import_from_tool(store, bad, "labelstudio")
        with pytest.raises(UserError, match="expected a JSON list of tasks"):
            bad.write_text('{"id": 1}')
            import_from_tool(store, bad, "labelstudio")
        with pytest.raises(UserError, match="no such file"):
            import_from_tool(store, tmp_path / "missing.json", "argilla")
        with pytest.raises(UserError, match="unknown review tool format"):
            import_from_tool(store, bad, "prodigy")


def test_labelstudio_image_tasks(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 3, images=True)
    out = tmp_path / "tasks.json"
    with Store.open(root) as store:
        export_for_tool(store, out, "labelstudio")
    task = json.loads(out.read_text())[0]
    assert task["data"]["image"].startswith("/data/local-files/?d=")
    assert Path(task["data"]["image_path"]).is_file()
    config = ET.fromstring(labelstudio_config_path(out).read_text())
    assert config.find("Image[@name='image']").get("value") == "$image"


# ---- Argilla --------------------------------------------------------------------------------------


def test_argilla_export_records(root: Path, tmp_path: Path) -> None:
    with Store.open(root) as store:
        assert export_for_tool(store, tmp_path / "records.json", "argilla") == 7
        assert export_for_tool(store, tmp_path / "records.jsonl", "argilla") == 7
    records = json.loads((tmp_path / "records.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert records == lines
    rec = records[0]
    i = int(rec["metadata"]["item_id"][2:])
    assert rec["id"] == rec["metadata"]["item_id"]
    assert rec["fields"]["text"] == f"text of item {i}"
    assert rec["metadata"]["error_prob"] == pytest.approx(error_prob_of(i))
    (sug,) = rec["suggestions"]
    assert sug["question_name"] == "label" and sug["agent"] == "actlabel-machine"
    assert sug["value"] == rec["metadata"]["machine_label"]
    assert sug["score"] == pytest.approx(1 - error_prob_of(i))


def _argilla_sdk_export(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as Argilla 2.x `dataset.records.to_json()` writes them (Record.to_dict())."""
    out = []
    for n, rec in enumerate(records):
        gold = _gold(rec["metadata"]["item_id"])
        responses: dict[str, list[dict[str, Any]]] = {}
        if n == 0:
            responses = {"label": [{"value": gold, "user_id": "u-1", "status": "discarded"}]}
        elif n == 1:
            responses = {"label": [{"value": "neutral", "user_id": "u-2", "status": "draft"}]}
        elif n != 2:
            responses = {"label": [{"value": gold, "user_id": "u-1", "status": "submitted"}]}
        out.append(
            {
                "id": rec["id"],
                "fields": rec["fields"],
                "metadata": rec["metadata"],
                "suggestions": {
                    "label": {"value": rec["suggestions"][0]["value"], "score": 0.5, "agent": "x"}
                },
                "responses": responses,
                "vectors": {},
                "status": "completed" if responses else "pending",
                "_server_id": f"0000-{n}",
            }
        )
    return out


def _argilla_api_export(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as the Argilla REST API returns them (responses with `values`)."""
    out = []
    for rec in records:
        gold = _gold(rec["metadata"]["item_id"])
        out.append(
            {
                "id": "7b1c",
                "external_id": rec["id"],
                "fields": rec["fields"],
                "metadata": rec["metadata"],
                "responses": [
                    {
                        "values": {"label": {"value": "negative"}},
                        "status": "submitted",
                        "user_id": "u-3",
                        "updated_at": "2024-05-01T10:00:00",
                    },
                    {
                        "values": {"label": {"value": gold}},
                        "status": "submitted",
                        "user_id": "u-4",
                        "updated_at": "2024-05-02T10:00:00",
                    },
                ],
            }
        )
    return out


def test_argilla_round_trip_sdk_shape(root: Path, tmp_path: Path) -> None:
    with Store.open(root) as store:
        export_for_tool(store, tmp_path / "records.jsonl", "argilla")
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    exported = tmp_path / "argilla.json"
    exported.write_text(json.dumps(_argilla_sdk_export(records)))
    with Store.open(root) as store:
        result = import_from_tool(store, exported, "argilla")
    assert (result.reviews, result.skipped, result.unanswered) == (4, 2, 3)
    recs = [r for r in reviews(root) if r["source"] == "argilla"]
    assert len(recs) == 4 and all(r["label"] == _gold(r["item_id"]) for r in recs)
    assert {r["reviewer"] for r in recs} == {"u-1"}


def test_argilla_round_trip_api_shape_jsonl_latest_wins(root: Path, tmp_path: Path) -> None:
    with Store.open(root) as store:
        export_for_tool(store, tmp_path / "records.json", "argilla")
    records = json.loads((tmp_path / "records.json").read_text())
    exported = tmp_path / "argilla.jsonl"
    exported.write_text("".join(json.dumps(r) + "\n" for r in _argilla_api_export(records)))
    with Store.open(root) as store:
        assert import_from_tool(store, exported, "argilla").reviews == 7
        assert import_from_tool(store, exported, "argilla").reviews == 0
    recs = [r for r in reviews(root) if r["source"] == "argilla"]
    assert all(r["label"] == _gold(r["item_id"]) and r["reviewer"] == "u-4" for r in recs)


def test_argilla_bad_records_store_nothing(root: Path, tmp_path: Path) -> None:
    with Store.open(root) as store:
        export_for_tool(store, tmp_path / "records.json", "argilla")
    records = _argilla_sdk_export(json.loads((tmp_path / "records.json").read_text()))
    records[5]["responses"]["label"][0]["value"] = "meh"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"records": records}))
    with Store.open(root) as store, pytest.raises(UserError) as info:
        import_from_tool(store, bad, "argilla")
    assert f"record 6 ({records[5]['metadata']['item_id']}): label 'meh'" in str(info.value)
    records[5]["responses"]["label"][0]["value"] = "positive"
    records[6]["metadata"]["item_id"] = "ghost"
    bad.write_text(json.dumps(records))
    with (
        Store.open(root) as store,
        pytest.raises(UserError, match="record 7 .*item 'ghost' is not in this project"),
    ):
        import_from_tool(store, bad, "argilla")
    bad.write_text('{"fields": {}}\n{"fields": \n')
    with Store.open(root) as store, pytest.raises(UserError, match="line 2: not valid JSON"):
        import_from_tool(store, bad, "argilla")
    assert [r for r in reviews(root) if r["source"] == "argilla"] == []


# ---- through the command line ---------------------------------------------------------------------


def test_cli_export_and_import_reviews(root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tasks.json"
    res = runner.invoke(main, ["export", str(root), str(out), "--format", "labelstudio"])
    assert res.exit_code == 0, res.output
    assert "wrote 7 rows" in res.output
    exported = tmp_path / "ls-export.json"
    exported.write_text(json.dumps(_labelstudio_export(json.loads(out.read_text()))))
    res = runner.invoke(main, ["import-reviews", str(root), str(exported), "--format", "labelstudio"])
    assert res.exit_code == 0, res.output
    assert "imported 5 reviews" in res.output
    exported.write_text("[1, 2")
    res = runner.invoke(main, ["import-reviews", str(root), str(exported), "--format", "labelstudio"])
    assert res.exit_code != 0 and "not valid JSON" in res.output
