"""Bad input at scale (issue 14): a file that grows or is cut during import, a disk that fills
mid-import, an endpoint that stalls. Each ends with one clear line or a retry, and the store is
unchanged or consistent (integrity_check ok, no partial batch)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from actlabel.annotate import annotate
from actlabel.errors import UserError
from actlabel.project import Project
from actlabel.testing.openai_server import Fault, OpenAICompatServer

from .conftest import LABELS, TWEETS
from .helpers_critic import annotate_responder
from .test_hostile import assert_one_line, cli


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"text": [f"row {i} of a file that is being written" for i in range(start, start + n)]})


def new_project(root: Path) -> Path:
    Project.init(root, LABELS).close()
    return root


def db_rows(root: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(root / "actlabel.db")) as conn:
        return conn.execute(sql).fetchall()


def assert_unchanged(root: Path, items: int = 0) -> None:
    assert db_rows(root, "SELECT count(*) FROM items") == [(items,)]
    assert db_rows(root, "PRAGMA integrity_check") == [("ok",)]


def change_after_first_batch(monkeypatch, change) -> None:
    """Run `change()` once the import has turned its first batch into records: the file changes
    under a reader that has already used part of it."""
    import actlabel.data as data_mod

    monkeypatch.setattr(data_mod, "BATCH_ROWS", 1000)
    real = data_mod._batch_to_records
    calls = {"n": 0}

    def then_change(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            change()
        return out

    monkeypatch.setattr(data_mod, "_batch_to_records", then_change)


# ---- a file that grows or is cut while it is read --------------------------------------------------


def test_a_file_that_grows_during_import_is_refused_and_nothing_is_stored(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "growing.csv"
    pacsv.write_csv(rows(5000), path)
    root = new_project(tmp_path / "proj")

    def append() -> None:
        with path.open("a") as fh:
            fh.write("".join(f"appended row {i}\n" for i in range(3000)))

    change_after_first_batch(monkeypatch, append)
    line = assert_one_line(cli("import", root, path), "changed while it was being imported", "nothing")
    assert "bytes" in line
    assert_unchanged(root)
    assert db_rows(root, "SELECT status FROM runs WHERE stage = 'import'") == [("failed",)]
    monkeypatch.undo()  # the complete file imports whole
    assert cli("import", root, path).exit_code == 0
    assert_unchanged(root, 8000)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_file_cut_during_import_is_refused_and_nothing_is_stored(
    tmp_path: Path, monkeypatch, suffix: str
) -> None:
    path = tmp_path / f"cut{suffix}"
    table = rows(5000)
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    elif suffix == ".parquet":
        pq.write_table(table, path, row_group_size=1000)
    else:
        path.write_text("".join(f'{{"text": "{t}"}}\n' for t in table.column("text").to_pylist()))
    root = new_project(tmp_path / "proj")
    # keep a third of the file, ending mid-row: the rows read so far are neither file
    change_after_first_batch(
        monkeypatch, lambda: path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    )
    r = cli("import", root, path)
    assert_one_line(r, str(path), "nothing of this import was stored")
    assert_unchanged(root)


# ---- a disk that fills ----------------------------------------------------------------------------


def test_a_full_database_mid_import_is_one_line_and_keeps_what_was_stored(tmp_path: Path) -> None:
    """SQLite's max_page_count makes the database file full at a chosen size: the same SQLITE_FULL a
    full disk gives, on any machine."""
    first = tmp_path / "first.csv"
    pacsv.write_csv(rows(100), first)
    big = tmp_path / "big.csv"
    pacsv.write_csv(rows(50_000, start=100), big)
    root = new_project(tmp_path / "proj")
    with Project(root) as proj:
        proj.import_file(first)
        pages = proj.store.conn.execute("PRAGMA page_count").fetchone()[0]
        proj.store.conn.execute(f"PRAGMA max_page_count = {pages + 200}")
        with pytest.raises(UserError, match="the disk is full") as err:
            proj.import_file(big)
        assert "\n" not in str(err.value) and "nothing of it was stored" in str(err.value)
        assert proj.store.count_items() == 100
        runs = proj.store.runs("import")
        assert [r["status"] for r in runs] == ["done", "failed"]
        assert "disk is full" in runs[-1]["message"]
    assert_unchanged(root, 100)
    assert db_rows(root, "SELECT count(*) FROM items WHERE data LIKE '%row 100 %'") == [(0,)]


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str):
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_that_fills_mid_import_is_one_line_and_the_store_stays_usable(tmp_path: Path) -> None:
    """A real full file system: a 2 MB tmpfs holds the project, the file would need ~15 MB."""
    big = tmp_path / "big.csv"
    pacsv.write_csv(rows(100_000), big)
    small = tmp_path / "small.csv"
    pacsv.write_csv(rows(50, start=500_000), small)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        root = new_project(disk / f"proj-{uuid.uuid4().hex[:6]}")
        assert cli("import", root, small).exit_code == 0
        r = cli("import", root, big)
        assert_one_line(r, "the disk is full", "nothing of it was stored")
        assert_unchanged(root, 50)
        # the space the failed import took is reusable: a small import still goes through
        again = tmp_path / "again.csv"
        pacsv.write_csv(rows(20, start=900_000), again)
        assert cli("import", root, again).exit_code == 0
        assert_unchanged(root, 70)
        export = cli("export", root, tmp_path / "out.csv")
        assert export.exit_code == 0, export.stderr


# ---- an endpoint that stalls ----------------------------------------------------------------------


def tweets_project(tmp_path: Path) -> Project:
    path = tmp_path / "tweets.csv"
    pacsv.write_csv(pa.table({"text": [t for t, _ in TWEETS], "gold": [g for _, g in TWEETS]}), path)
    proj = Project.init(tmp_path / "proj", LABELS)
    proj.import_file(path, gold_column="gold")
    return proj


def test_a_stalled_call_times_out_and_is_retried(tmp_path: Path) -> None:
    """The endpoint accepts the first call and sends no byte for 60 s: the client gives up after its
    read timeout and the retry answers; every item ends labelled."""
    with tweets_project(tmp_path) as proj:
        with OpenAICompatServer(responder=annotate_responder, faults={1: Fault("delay", seconds=60)}) as srv:
            start = time.monotonic()
            result = annotate(
                proj.store,
                model="openai/test-model",
                base_url=srv.base_url,
                progress=False,
                concurrency=4,
                backend_options={"timeout": 1.0},
            )
            elapsed = time.monotonic() - start
        assert elapsed < 30, elapsed
        assert result.done == len(TWEETS) and result.failed == 0
        assert srv.calls == len(TWEETS) + 1
        assert proj.store.count("annotations", "status = 'ok'") == len(TWEETS)
    assert db_rows(tmp_path / "proj", "PRAGMA integrity_check") == [("ok",)]


def test_an_endpoint_that_always_stalls_fails_each_item_with_one_line(tmp_path: Path) -> None:
    with tweets_project(tmp_path) as proj:
        with OpenAICompatServer(
            responder=annotate_responder, faults=lambda n, body: Fault("delay", seconds=60)
        ) as srv:
            start = time.monotonic()
            result = annotate(
                proj.store,
                model="openai/test-model",
                base_url=srv.base_url,
                progress=False,
                concurrency=len(TWEETS),
                limit=3,
                backend_options={"timeout": 0.5},
            )
            elapsed = time.monotonic() - start
        assert elapsed < 120, elapsed
        assert result.done == 0 and result.failed == 3
        # each item tried ends as one failed record, its reason one line naming the timeout
        [(count, reason)] = proj.failure_reasons("annotations", result.run_id)
        assert count == 3 and "timed out after 0.5 s" in reason and "\n" not in reason, reason
        failed = proj.store.conn.execute("SELECT item_rowid, status FROM annotations").fetchall()
        assert len(failed) == 3 and len({r for r, _ in failed}) == 3
        assert proj.store.count("annotations", "status = 'ok'") == 0
    assert db_rows(tmp_path / "proj", "PRAGMA integrity_check") == [("ok",)]
