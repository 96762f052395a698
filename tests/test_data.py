from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actlabel.data import EXPORT_COLUMNS_AFTER_INPUT, export
from actlabel.errors import UserError
from actlabel.project import Project

from .conftest import LABELS, TWEETS, write_csv

# A 1x1 PNG Pillow decodes (import now checks images: the earlier bytes could not be decoded at all).
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a2d6c5d90000000049454e44ae426082"
)


def new_project(tmp_path: Path, name: str = "p") -> Project:
    return Project.init(tmp_path / name, LABELS)


def test_csv_import_is_idempotent(project: Project, tweets_csv: Path) -> None:
    assert project.store.count_items() == len(TWEETS)
    again = project.import_file(tweets_csv, text_columns=["text"], gold_column="gold")
    assert (again.new_items, again.already_present) == (0, len(TWEETS))
    assert project.store.count_items() == len(TWEETS)


def test_identical_rows_stay_distinct_items(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"text": "same"}, {"text": "same"}, {"text": "other"}])
    with new_project(tmp_path) as proj:
        assert proj.import_file(path).new_items == 3
        assert proj.import_file(path).new_items == 0


def test_jsonl_and_parquet_import(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text(
        "\n".join(json.dumps({"id": f"i{i}", "body": t, "y": g}) for i, (t, g) in enumerate(TWEETS)) + "\n"
    )
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": [t for t, _ in TWEETS], "y": [g for _, g in TWEETS]}), pqf)
    with new_project(tmp_path) as proj:
        r = proj.import_file(jl, text_columns=["body"], id_column="id", gold_column="y")
        assert r.new_items == len(TWEETS)
        assert proj.store.rowid_of("i3") is not None
    with new_project(tmp_path, "q") as proj:
        assert proj.import_file(pqf, text_columns=["body"], gold_column="y").new_items == len(TWEETS)
        golds = {it.gold_label for it in proj.store.iter_items()}
        assert golds == set(LABELS)


def test_table_with_image_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(PNG_1PX)
    path = write_csv(
        tmp_path / "t.csv", [{"img": f"imgs/{i}.png", "caption": f"photo {i}"} for i in range(3)]
    )
    with new_project(tmp_path) as proj:
        proj.import_file(path, text_columns=["caption"], image_column="img")
        items = list(proj.store.iter_items())
        assert all(Path(it.image_path).is_file() for it in items)
        assert items[0].data == {"caption": "photo 0", "img": "imgs/0.png"}


def test_image_folder_subfolders_are_gold(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label in ("positive", "negative"):
        (root / label).mkdir(parents=True)
        (root / label / "a.png").write_bytes(PNG_1PX)
    (root / "loose.png").write_bytes(PNG_1PX)
    with new_project(tmp_path) as proj:
        r = proj.import_file(root)
        assert r.new_items == 3
        golds = {it.item_id: it.gold_label for it in proj.store.iter_items()}
        assert golds == {"positive/a.png": "positive", "negative/a.png": "negative", "loose.png": None}
        assert proj.import_file(root).new_items == 0


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (
            "text,gold\nhello,positive\n,negative\n",
            {"gold_column": "gold"},
            r"row 2: empty text in column 'text'",
        ),
        (
            "text,gold\nhello,positive\nbye,angry\n",
            {"gold_column": "gold"},
            r"row 2: gold label 'angry' is not one",
        ),
        ("text,gold\nhello,positive\n", {"text_columns": ["body"]}, r"--text column 'body' not found"),
        (
            "text,gold\nhello,positive\nbye,negative,extra\n",
            {},
            r"row 2 \(line 3\): expected 2 fields, found 3",
        ),
        ("id,text\n1,hello\n1,bye\n", {"id_column": "id"}, r"row 2: duplicate id '1'"),
        ("", {}, r"empty"),
        ("a,a\n1,2\n", {}, r"duplicate column names"),
        ("body,other\nx,y\n", {}, r"say which column holds the text"),
    ],
)
def test_bad_csv_input_is_one_line_and_stores_nothing(
    tmp_path: Path, content: str, kwargs: dict, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=message) as info:
            proj.import_file(path, **kwargs)
        assert "\n" not in str(info.value)
        assert str(path) in str(info.value)
        assert proj.store.count_items() == 0


def test_non_utf8_names_the_row_and_encoding_option_works(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text\ncaf\u00e9 au lait\nna\u00efve\n".encode("latin-1"))
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=r"row 1 \(line 2\): not valid utf-8.*--encoding"):
            proj.import_file(path)
        assert proj.store.count_items() == 0
        proj.import_file(path, encoding="latin-1")
        assert sorted(it.data["text"] for it in proj.store.iter_items()) == ["café au lait", "naïve"]


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=r"bad.jsonl: line 2: not valid JSON"):
            proj.import_file(path)
        assert proj.store.count_items() == 0


def test_missing_and_unreadable_images(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    path = write_csv(tmp_path / "t.csv", [{"img": "nope.png"}])
    path2 = write_csv(tmp_path / "t2.csv", [{"img": "fake.png"}])
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=r"row 1: image .*nope.png not found"):
            proj.import_file(path, image_column="img")
        with pytest.raises(UserError, match=r"row 1: .*fake.png is not an image"):
            proj.import_file(path2, image_column="img")


def test_failed_reimport_keeps_what_was_stored(project: Project, tmp_path: Path) -> None:
    rows = [{"text": t, "gold": g} for t, g in TWEETS] + [{"text": "new one", "gold": "nonsense"}]
    bad = write_csv(tmp_path / "more.csv", rows)
    with pytest.raises(UserError, match="row 13: gold label 'nonsense'"):
        project.import_file(bad, text_columns=["text"], gold_column="gold")
    assert project.store.count_items() == len(TWEETS)


def test_conflicting_reimport_with_ids(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", [{"id": "1", "text": "hello"}])
    b = write_csv(tmp_path / "b.csv", [{"id": "1", "text": "changed"}])
    with new_project(tmp_path) as proj:
        proj.import_file(a, id_column="id")
        with pytest.raises(UserError, match=r"item '1' is already stored with different content"):
            proj.import_file(b, id_column="id")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_has_exactly_the_design_columns(project: Project, tmp_path: Path, suffix: str) -> None:
    store = project.store
    rowids = store.item_rowids()
    store.add_annotations(
        [
            {
                "item_rowid": r,
                "run_id": 1,
                "model": "m",
                "label": "neutral",
                "confidence": 0.5,
                "status": "ok",
            }
            for r in rowids
        ]
    )
    store.add_critiques(
        [
            {
                "item_rowid": rowids[0],
                "run_id": 2,
                "model": "c",
                "strategy": "cot",
                "error_prob": 0.9,
                "proposed_label": "positive",
                "rationale": "sounds happy",
                "status": "ok",
            }
        ]
    )
    store.add_selections(
        [
            {
                "item_rowid": r,
                "run_id": 3,
                "round": 1,
                "selected": int(r == rowids[0]),
                "review_prob": 1.0 if r == rowids[0] else 0.05,
            }
            for r in rowids
        ]
    )
    store.add_review(rowids[0], "positive", reviewer="ann", source="web")
    out = tmp_path / f"out{suffix}"
    assert export(store, out) == len(TWEETS)
    if suffix == ".csv":
        with out.open() as fh:
            rows = list(csv.DictReader(fh))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = pq.read_table(out).to_pylist()
    assert list(rows[0]) == ["item_id", "text", *EXPORT_COLUMNS_AFTER_INPUT]
    first = rows[0]
    assert first["human_label"] == "positive" and first["final_label"] == "positive"
    assert (
        first["label_source"] == "human" and str(first["reviewed"]) == "1" and str(first["selected"]) == "1"
    )
    assert float(first["error_prob"]) == 0.9 and first["critic_rationale"] == "sounds happy"
    second = rows[1]
    assert second["final_label"] == "neutral" and second["label_source"] == "machine"
    assert float(second["review_prob"]) == 0.05 and str(second["reviewed"]) == "0"
    assert second["error_prob"] in (None, "")  # empty where the stage has not run for the item
    assert {r["gold_label"] for r in rows} == set(LABELS)


def test_export_to_missing_folder_or_bad_suffix(project: Project, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        export(project.store, tmp_path / "nope" / "x.csv")
    with pytest.raises(UserError, match="unknown export type"):
        export(project.store, tmp_path / "x.xlsx")


def test_duplicate_id_across_batches_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import actlabel.data as data_mod

    monkeypatch.setattr(data_mod, "BATCH_ROWS", 2)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in [1, 2, 3, 1]))
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=r"row 4: duplicate id '1'"):
            proj.import_file(path, id_column="id")
        assert proj.store.count_items() == 0


def test_jsonl_arrow_reader_gives_exactly_what_the_line_reader_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actlabel.data as data_mod

    objs = [
        {"text": 'quote " and backslash \\ and tab \t', "gold": "positive", "extra": {"x": 1}},
        {"text": "line\nbreak, caf\u00e9, emoji \U0001f600, \u2028 separator", "gold": None},
        {"gold": "neutral", "text": "control \u0001 char and \u007f del"},
        {"text": "no gold at all"},
        {"text": "same"},
        {"text": "same"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(o, ensure_ascii=i % 2 == 0) for i, o in enumerate(objs)) + "\n\n  \n"
    )

    def stored(name: str) -> list[tuple]:
        with new_project(tmp_path, name) as proj:
            proj.import_file(path, gold_column="gold")
            return proj.store.conn.execute(
                "SELECT item_id, data, gold_label FROM items ORDER BY rowid"
            ).fetchall()

    arrow_calls = []
    real = data_mod._jsonl_arrow_batches
    monkeypatch.setattr(data_mod, "_jsonl_arrow_batches", lambda *a: arrow_calls.append(1) or real(*a))
    fast = stored("fast")
    assert arrow_calls, "the Arrow reader was not used"

    def cannot(*_a):
        raise data_mod._ArrowCannot("forced")
        yield  # a generator, like the real one

    monkeypatch.setattr(data_mod, "_jsonl_arrow_batches", cannot)
    exact = stored("exact")
    assert fast == exact and len(fast) == len(objs)


def test_identical_rows_in_different_batches_stay_distinct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actlabel.data as data_mod

    monkeypatch.setattr(data_mod, "BATCH_ROWS", 2)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a", "b", "a", "a", "c"]))

    def cannot(*_a):
        raise data_mod._ArrowCannot("forced")
        yield

    monkeypatch.setattr(data_mod, "_jsonl_arrow_batches", cannot)  # the line reader, in batches of 2
    with new_project(tmp_path) as proj:
        assert proj.import_file(path).new_items == 5
        ids = [r[0] for r in proj.store.conn.execute("SELECT item_id FROM items ORDER BY rowid")]
        assert ids[2] == ids[0] + "~2" and ids[3] == ids[0] + "~3" and len(set(ids)) == 5
        assert proj.import_file(path).new_items == 0
    monkeypatch.undo()  # the Arrow reader (one batch) gives the same ids
    with new_project(tmp_path, "q") as proj:
        proj.import_file(path)
        assert [r[0] for r in proj.store.conn.execute("SELECT item_id FROM items ORDER BY rowid")] == ids


TRICKY_CELLS = [
    'quote " and backslash \\ and tab \t',
    "line\nbreak, caf\u00e9, emoji \U0001f600, \u2028 separator",
    "control \u0001 char and \u007f del",
    "  padded with spaces  ",
    "\u3000ideographic space around\u3000",
    "plain",
    "plain",
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_arrow_records_equal_the_row_by_row_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The column-wise path stores exactly what the row-by-row one does (ids, JSON, gold)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    import actlabel.data as data_mod

    golds = ["positive", "", "neutral", None, "negative", "positive", "positive"]
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(len(TRICKY_CELLS))],
            "text": TRICKY_CELLS,
            "title": [f"title {i}" for i in range(len(TRICKY_CELLS))],
            "gold": golds,
        }
    )
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    elif suffix == ".parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))

    def stored(name: str, **roles) -> list[tuple]:
        with new_project(tmp_path, name) as proj:
            proj.import_file(path, gold_column="gold", **roles)
            return proj.store.conn.execute(
                "SELECT item_id, data, gold_label FROM items ORDER BY rowid"
            ).fetchall()

    used = []
    real = data_mod._arrow_records
    monkeypatch.setattr(data_mod, "_arrow_records", lambda *a: used.append(1) or real(*a))
    fast = [stored("fast1", text_columns=["text"]), stored("fast2", text_columns=["text", "title"])]
    fast.append(stored("fast3", text_columns=["text"], id_column="id"))
    assert used
    monkeypatch.setattr(data_mod, "_arrow_records", lambda *a: None)
    exact = [stored("exact1", text_columns=["text"]), stored("exact2", text_columns=["text", "title"])]
    exact.append(stored("exact3", text_columns=["text"], id_column="id"))
    assert fast == exact
    assert len({r[0] for r in fast[0]}) == len(TRICKY_CELLS)  # the two "plain" rows: distinct ids


@pytest.mark.parametrize("blank", ["", "   ", "\u3000", "\x1c\x1d", "\u2028 \t"])
def test_a_blank_text_cell_is_refused_by_the_column_wise_path_too(tmp_path: Path, blank: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["fine", "also fine", blank]}), path)
    with new_project(tmp_path) as proj:
        with pytest.raises(UserError, match=r"row 3: empty text in column 'text'"):
            proj.import_file(path)
        assert proj.store.count_items() == 0


def test_ids_and_json_unchanged_from_before_the_column_wise_path(tmp_path: Path) -> None:
    """Content ids are the blake2b of the item's JSON as earlier versions wrote it: a re-import
    into an older project finds the same items."""
    import hashlib

    path = tmp_path / "d.csv"
    path.write_text('text,gold\nhello "world",positive\n')
    with new_project(tmp_path) as proj:
        proj.import_file(path, gold_column="gold")
        [(item_id, data)] = proj.store.conn.execute("SELECT item_id, data FROM items").fetchall()
    assert data == '{"text":"hello \\"world\\""}'
    assert item_id == hashlib.blake2b(data.encode(), digest_size=8).hexdigest()
