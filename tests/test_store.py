from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from actlabel.errors import NotAProject, ProjectBusy, UserError
from actlabel.store import DB_NAME, MIGRATIONS, Store
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
