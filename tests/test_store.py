from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from actlabel.errors import NotAProject, ProjectBusy, UserError
from actlabel.store import DB_NAME, FORMAT, MIGRATIONS, Store
from actlabel.task import Label, Task


def make_task() -> Task:
    return Task(labels=[Label("a"), Label("b")])


def test_create_uses_wal_and_latest_schema(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.task.label_names == ["a", "b"]
    store.close()
    with Store.open(tmp_path / "p") as again:
        assert again.task.label_names == ["a", "b"]


def test_open_refuses_non_projects(tmp_path: Path) -> None:
    with pytest.raises(NotAProject, match="not an actlabel project"):
        Store.open(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotAProject):
        Store.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / DB_NAME).execute("CREATE TABLE x (y)").connection.close()
    with pytest.raises(NotAProject):
        Store.open(other)


def test_create_refuses_existing_project(tmp_path: Path) -> None:
    Store.create(tmp_path / "p", make_task()).close()
    with pytest.raises(UserError, match="already an actlabel project"):
        Store.create(tmp_path / "p", make_task())


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store.create(tmp_path / "p", make_task()).close()
    conn = sqlite3.connect(tmp_path / "p" / DB_NAME)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(UserError, match="newer actlabel"):
        Store.open(tmp_path / "p")


def schema_4_project(root: Path, items: list[tuple[str, str]]) -> None:
    """A project as the last release before the item_id index left the column wrote it."""
    root.mkdir()
    conn = sqlite3.connect(root / DB_NAME, isolation_level=None)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
    conn.execute("INSERT INTO meta VALUES ('task', ?)", (make_task().to_json(),))
    conn.execute("INSERT INTO runs (stage, started_at) VALUES ('import', 0)")
    conn.executemany(
        "INSERT INTO items (rowid, item_id, data, run_id) VALUES (?, ?, ?, 1)",
        [(10 + 3 * i, item_id, data) for i, (item_id, data) in enumerate(items)],
    )
    conn.close()


def test_schema_5_moves_item_id_uniqueness_to_a_named_index_and_keeps_every_row(tmp_path: Path) -> None:
    items = [("x", '{"text": "one"}'), ("y", '{"text": "two"}'), ("z", '{"text": "three"}')]
    schema_4_project(tmp_path / "p", items)
    with Store.open(tmp_path / "p") as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert store.conn.execute("SELECT rowid, item_id, data FROM items ORDER BY rowid").fetchall() == [
            (10, "x", '{"text": "one"}'),
            (13, "y", '{"text": "two"}'),
            (16, "z", '{"text": "three"}'),
        ]
        assert store._has_index("items_item_id")
        assert store.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with store.transaction():
            assert store.insert_items([("y", "{}", None, None), ("w", "{}", None, None)], 1) == 1
        with pytest.raises(sqlite3.IntegrityError):
            store.conn.execute("INSERT INTO items (item_id, data, run_id) VALUES ('x', '{}', 1)")


def test_a_first_import_builds_the_item_id_index_once_at_the_end(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    with store.transaction(), store.deferred_item_index() as deferred:
        assert deferred and not store._has_index("items_item_id")
        store.insert_items([(f"id{i}", "{}", None, None) for i in range(50)], 1)
    assert store._has_index("items_item_id") and store.count_items() == 50
    # a second import keeps the index and checks every id against it
    with store.transaction(), store.deferred_item_index() as deferred:
        assert not deferred and store._has_index("items_item_id")
        assert store.insert_items([("id3", "{}", None, None), ("new", "{}", None, None)], 2) == 1
    store.close()


def test_a_failed_first_import_keeps_the_index_and_no_row(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    with pytest.raises(RuntimeError), store.transaction(), store.deferred_item_index():
        store.insert_items([("a", "{}", None, None)], 1)
        raise RuntimeError("the file was cut")
    assert store._has_index("items_item_id") and store.count_items() == 0
    # ids repeated within a first import fail the index build: one line, nothing stored
    with (
        pytest.raises(UserError, match="repeats within the import"),
        store.transaction(),
        store.deferred_item_index(),
    ):
        store.insert_items([("a", "{}", None, None), ("a", "{}", None, None)], 1)
    assert store._has_index("items_item_id") and store.count_items() == 0
    store.close()


def test_latest_record_wins_and_old_records_stay(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    run = store.start_run("import")
    with store.transaction():
        store.insert_items([("x1", '{"text": "hi"}', None, None), ("x2", '{"text": "yo"}', None, "b")], run)
    r1, r2 = store.item_rowids()
    store.add_annotations([{"item_rowid": r1, "run_id": 1, "model": "m", "label": "a", "status": "ok"}])
    store.add_annotations([{"item_rowid": r1, "run_id": 2, "model": "m", "label": "b", "status": "ok"}])
    assert store.latest("annotations", ["label"]) == {r1: ("b",)}
    assert store.count("annotations") == 2
    store.add_review(r2, "a", reviewer="ann", source="web")
    store.add_review(r2, "b", reviewer="bob", source="web")
    assert store.latest("reviews", ["label", "reviewer"]) == {r2: ("b", "bob")}
    with pytest.raises(UserError, match="not one of the task's labels"):
        store.add_review(r2, "zzz", reviewer="bob", source="web")
    assert store.count("reviews") == 2
    assert store.records_per_item("annotations") == {r1: 2}
    assert store.records_per_item("reviews") == {r2: 2}
    with pytest.raises(ValueError, match="unknown stage table"):
        store.records_per_item("items; DROP TABLE items")


def test_named_queries_read_the_current_record_of_each_item(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    run = store.start_run("import")
    with store.transaction():
        store.insert_items([(f"x{i}", '{"text": "t"}', None, "a" if i else None) for i in range(3)], run)
    r0, r1, r2 = store.item_rowids()
    ann = {"model": "m", "run_id": 1}
    store.add_annotations(
        [
            ann | {"item_rowid": r0, "label": "a", "status": "ok", "confidence": 0.9},
            ann | {"item_rowid": r0, "label": "b", "status": "ok", "confidence": 0.6, "probs": '{"b": 0.6}'},
            ann | {"item_rowid": r1, "label": "a", "status": "ok"},
            ann | {"item_rowid": r1, "label": None, "status": "failed", "error": "timeout"},
            ann | {"item_rowid": r2, "label": "b", "status": "ok", "run_id": 2},
        ]
    )
    current = store.current_annotations()
    assert list(current) == [r0, r2]  # r1's latest annotation failed: no machine label
    assert (current[r0].label, current[r0].confidence, current[r2].run_id) == ("b", 0.6, 2)
    assert current[r0].probs is None and store.current_annotations(with_probs=True)[r0].probs == '{"b": 0.6}'
    assert store.has_machine_labels()
    assert store.latest("annotations", ("label",), "status = ?", ("ok",)) == {
        r0: ("b",),
        r1: ("a",),
        r2: ("b",),
    }
    assert store.latest("annotations", ("status",), rowids=[r1, r2]) == {r1: ("failed",), r2: ("ok",)}
    assert store.current_status_counts("annotations") == {"ok": 2, "failed": 1}
    assert store.run_status_counts("annotations", 1) == {"ok": 3, "failed": 1}

    crit = {"model": "c", "run_id": 3, "strategy": "naive"}
    store.add_critiques(
        [
            crit | {"item_rowid": r0, "error_prob": None, "status": "failed"},
            crit | {"item_rowid": r0, "error_prob": 0.2, "status": "ok"},
            crit | {"item_rowid": r1, "error_prob": 0.7, "status": "ok"},
            crit | {"item_rowid": r1, "error_prob": None, "status": "failed"},
            crit | {"item_rowid": r2, "error_prob": 0.4, "status": "ok", "strategy": "cot"},
        ]
    )
    # r0's failure was replaced; r1's latest critique failed, so it has no error_prob to select by
    assert store.current_status_counts("critiques") == {"ok": 2, "failed": 1}
    assert store.latest_critiques(("error_prob",), strategy="naive") == {r0: (0.2,), r1: (0.7,)}
    assert store.latest_critiques(("status",), strategy="naive", ok_only=False) == {
        r0: ("ok",),
        r1: ("failed",),
    }
    assert store.latest_critiques_per_critic(("error_prob",)) == {
        ("naive", "c"): {r0: (0.2,), r1: (0.7,)},
        ("cot", "c"): {r2: (0.4,)},
    }
    assert list(store.critics_newest_first()) == [("cot", "c"), ("naive", "c"), ("naive", "c")]

    assert store.last_round() == 0
    sel = {"run_id": 4, "round": 1}
    store.add_selections(
        [
            sel | {"item_rowid": r0, "selected": 1, "review_prob": 0.5},
            sel | {"item_rowid": r1, "selected": 1, "review_prob": 0.25},
            sel | {"item_rowid": r2, "selected": 0, "review_prob": 0.1},
            sel | {"item_rowid": r1, "selected": 0, "review_prob": 1.0, "round": 2},
        ]
    )
    assert store.last_round() == 2
    assert store.selected_now() == {r0}
    assert store.selected_now([r1, r2]) == set()
    assert store.current_selections()[r1] == (False, 1.0)
    assert store.current_selections(chosen_only=True)[r1] == (True, 0.25)
    store.add_review(r0, "a", reviewer="ann", source="web")
    store.add_review(r0, "b", reviewer="bob", source="web")
    assert store.current_reviews() == {r0: "b"} and store.reviewed_count() == 1
    assert store.selected_for_review() == [(r0, 0.2, True)]

    rows = [r for batch in store.iter_current_rows() for r in batch]
    assert [(r.item_id, r.machine_label, r.error_prob, r.selected, r.human_label) for r in rows] == [
        ("x0", "b", 0.2, 1, "b"),
        ("x1", None, None, 0, None),
        ("x2", "b", 0.4, 0, None),
    ]
    assert store.gold_labels() == {r1: "a", r2: "a"}
    assert store.gold_and_machine_labels() == [("a", "b")]  # r1's machine label failed
    assert store.gold_agreement() == (0, 1)
    store.close()


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    run = store.start_run("import")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_items([("x1", "{}", None, None)], run)
            raise RuntimeError("boom")
    assert store.count_items() == 0


def test_response_cache_roundtrip(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    cache = store.response_cache()
    assert cache.get("k") is None
    cache.put("k", "openai/x", {"text": "hello"}, 3, 1)
    assert cache.get("k") == {"text": "hello"}
    assert len(cache) == 1


def test_response_cache_copies_another_projects_answers_without_replacing_its_own(tmp_path: Path) -> None:
    source = Store.create(tmp_path / "src", make_task())
    source.response_cache().put("shared", "openai/x", {"text": "theirs"}, 3, 1)
    source.response_cache().put("only-theirs", "openai/x", {"text": "new"}, 3, 1)
    source.close()
    store = Store.create(tmp_path / "p", make_task())
    cache = store.response_cache()
    cache.put("shared", "openai/x", {"text": "ours"}, 3, 1)  # still buffered: flushed first, kept
    assert cache.copy_from(tmp_path / "src" / DB_NAME) == 1
    assert cache.get("shared") == {"text": "ours"}
    assert cache.get("only-theirs") == {"text": "new"}
    assert len(cache) == 2
    assert cache.copy_from(tmp_path / "src" / DB_NAME) == 0
    assert "src" not in [row[1] for row in store.conn.execute("PRAGMA database_list")]  # detached


def _rows_on_disk(root: Path) -> int:
    """model_calls rows another process would see now."""
    conn = sqlite3.connect(root / DB_NAME)
    try:
        return conn.execute("SELECT count(*) FROM model_calls").fetchone()[0]
    finally:
        conn.close()


def test_response_cache_writes_in_batches_and_before_any_other_write(tmp_path: Path) -> None:
    from actlabel.store import CACHE_FLUSH_ROWS

    store = Store.create(tmp_path / "p", make_task())
    cache = store.response_cache()
    for i in range(CACHE_FLUSH_ROWS - 1):
        cache.put(f"k{i}", "openai/x", {"text": str(i)}, 1, 1)
    assert _rows_on_disk(store.root) == 0  # buffered: one commit per batch, not per call
    assert cache.get("k3") == {"text": "3"}  # a buffered answer is still a hit
    cache.put("last", "openai/x", {"text": "last"}, 1, 1)
    assert _rows_on_disk(store.root) == CACHE_FLUSH_ROWS
    cache.put("more", "openai/x", {"text": "more"}, 1, 1)
    # any other write (an annotation batch, a run's end) first writes the answers it may be made from
    store.set_meta("x", "y")
    assert _rows_on_disk(store.root) == CACHE_FLUSH_ROWS + 1
    cache.put("on close", "openai/x", {"text": "c"}, 1, 1)
    store.close()
    assert _rows_on_disk(tmp_path / "p") == CACHE_FLUSH_ROWS + 2


def test_response_cache_put_in_a_transaction_commits_with_it(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    cache = store.response_cache()
    cache.put("k", "openai/x", {"text": "old"}, 1, 1)
    with pytest.raises(RuntimeError), store.transaction():
        cache.put("k2", "openai/x", {"text": "new"}, 1, 1)
        raise RuntimeError("boom")
    assert cache.get("k2") is None and cache.get("k") == {"text": "old"}
    with store.transaction():
        cache.put("k", "openai/x", {"text": "new"}, 1, 1)
    store.close()
    with Store.open(tmp_path / "p") as again:
        assert again.response_cache().get("k") == {"text": "new"}


def _hold_writer(root: str, ready, release) -> None:
    store = Store.open(root)
    store.acquire_writer("annotate")
    ready.set()
    release.wait(10)
    store.close()


def test_second_writer_is_told_the_project_is_busy(tmp_path: Path) -> None:
    Store.create(tmp_path / "p", make_task()).close()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_writer, args=(str(tmp_path / "p"), ready, release))
    proc.start()
    try:
        assert ready.wait(20)
        store = Store.open(tmp_path / "p")
        with pytest.raises(ProjectBusy, match=r"busy \(pid \d+ is running `actlabel annotate`\)"):
            store.acquire_writer("critique")
    finally:
        release.set()
        proc.join(20)
    time.sleep(0.05)
    store.acquire_writer("critique")  # free again once the first process is gone
    store.close()


def _write_reviews(root: str, n: int, who: str) -> None:
    store = Store.open(root)
    for i in range(n):
        store.add_review(1 + i % 2, "a", reviewer=who, source="web")
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "p", make_task())
    with store.transaction():
        store.insert_items([("x1", "{}", None, None), ("x2", "{}", None, None)], store.start_run("import"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_reviews, args=(str(tmp_path / "p"), 200, f"r{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.count("reviews") == 600
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
