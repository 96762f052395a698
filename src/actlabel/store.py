"""The project store: one SQLite file (WAL) per project folder.

Records are appended, never updated in place: each stage writes new rows and the current value of
an item is its latest row (highest id). A stage can therefore be re-run without touching the
others, and a crash loses at most the batch being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from actlabel.errors import NotAProject, ProjectBusy, UserError
from actlabel.task import Task

if TYPE_CHECKING:
    import numpy as np

DB_NAME = "actlabel.db"
LOCK_NAME = ".actlabel.lock"
FORMAT = "actlabel-project"
BUSY_TIMEOUT_S = 30.0
#: response-cache rows are written together once this many wait, or this many seconds after the first
CACHE_FLUSH_ROWS = 256
CACHE_FLUSH_SECONDS = 1.0
_PUT_CALL = "INSERT OR REPLACE INTO model_calls VALUES (?, ?, ?, ?, ?, ?)"
STAGE_TABLES = frozenset({"annotations", "critiques", "selections", "reviews"})
#: rowids bound per `IN (...)`: under SQLite's default limit of 999 variables
_IN_CHUNK = 900

# Each entry moves the schema from version i to i+1. Never edit a shipped entry: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        run_id INTEGER PRIMARY KEY,
        stage TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        started_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL DEFAULT 'running',
        calls INTEGER NOT NULL DEFAULT 0,
        cache_hits INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        message TEXT
    );
    CREATE TABLE items (
        rowid INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL UNIQUE,
        data TEXT NOT NULL,
        image_path TEXT,
        gold_label TEXT,
        run_id INTEGER NOT NULL
    );
    CREATE TABLE annotations (
        id INTEGER PRIMARY KEY,
        item_rowid INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        model TEXT NOT NULL,
        label TEXT,
        confidence REAL,
        reasoning TEXT,
        raw TEXT,
        status TEXT NOT NULL,
        error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX annotations_item ON annotations (item_rowid, id);
    CREATE TABLE critiques (
        id INTEGER PRIMARY KEY,
        item_rowid INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        model TEXT NOT NULL,
        strategy TEXT NOT NULL,
        error_prob REAL,
        proposed_label TEXT,
        rationale TEXT,
        raw TEXT,
        status TEXT NOT NULL,
        error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX critiques_item ON critiques (item_rowid, id);
    CREATE INDEX critiques_run ON critiques (run_id);
    CREATE TABLE selections (
        id INTEGER PRIMARY KEY,
        item_rowid INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        round INTEGER NOT NULL,
        selected INTEGER NOT NULL,
        review_prob REAL NOT NULL,
        round_prob REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX selections_item ON selections (item_rowid, id);
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        item_rowid INTEGER NOT NULL,
        reviewer TEXT NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL,
        duration_ms INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX reviews_item ON reviews (item_rowid, id);
    CREATE TABLE model_calls (
        key TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        response TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE leases (
        item_rowid INTEGER PRIMARY KEY,
        reviewer TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # Provider batch jobs (batch.py): the job id lives here so a restarted process picks it up.
    # batch_requests maps each submitted cache key to its job, with what parsing the answer needs
    # (the request's constrained choices) and, once collected, whether the provider answered it.
    """
    CREATE TABLE batch_jobs (
        job_id INTEGER PRIMARY KEY,
        stage TEXT NOT NULL,
        spec TEXT NOT NULL,
        provider_batch_id TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        request_count INTEGER NOT NULL,
        params TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX batch_jobs_status ON batch_jobs (spec, stage, status);
    CREATE TABLE batch_requests (
        job_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        choices TEXT,
        status TEXT NOT NULL DEFAULT 'submitted',
        error TEXT,
        PRIMARY KEY (job_id, key)
    );
    CREATE INDEX batch_requests_key ON batch_requests (key);
    """,
    # The annotator's probability of every label (JSON object label -> p), when it has them: the
    # label model (label_model.py) recalibrates and refines labels from them without new calls.
    """
    ALTER TABLE annotations ADD COLUMN probs TEXT;
    """,
    # Whether the item was selected for review when a review arrived from outside actlabel's own
    # queue (Label Studio live): 1 yes, 0 no (out of design: the statistics take review_prob 1 for
    # it), NULL not recorded (the review app and the simulator review selected items only).
    """
    ALTER TABLE reviews ADD COLUMN selected_when_reviewed INTEGER;
    """,
    # item_id unique through a named index instead of the column's UNIQUE constraint: a first
    # import into an empty project drops it, appends every row and builds it once by sorting
    # (`Store.deferred_item_index`), where inserting a million hashed ids into the index one by one
    # touched a random page each time (bench/bench_io.py). The same table otherwise, same rowids.
    """
    CREATE TABLE items_rebuilt (
        rowid INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL,
        data TEXT NOT NULL,
        image_path TEXT,
        gold_label TEXT,
        run_id INTEGER NOT NULL
    );
    INSERT INTO items_rebuilt (rowid, item_id, data, image_path, gold_label, run_id)
        SELECT rowid, item_id, data, image_path, gold_label, run_id FROM items ORDER BY rowid;
    DROP TABLE items;
    ALTER TABLE items_rebuilt RENAME TO items;
    CREATE UNIQUE INDEX items_item_id ON items (item_id);
    """,
]

#: SQLite's page cache of a connection, KiB (Store._connect says why this size), and the smaller
#: one of a first import, which appends rows and then builds the item_id index by sorting
#: (`Store.deferred_item_index`; the sort's memory follows the cache)
PAGE_CACHE_KIB = 16384
INDEX_BUILD_CACHE_KIB = 4096

#: A read-only project (status, export, report) at this schema or later opens without migrating:
#: the migrations after it change how items are stored, not what readers query.
READABLE_SCHEMA = 4


def _why_read_only(root: Path, db: Path) -> str | None:
    """Why this process cannot write the project, or None (SQLite needs the file and, for its WAL
    and lock files, the folder)."""
    if not os.access(db, os.W_OK):
        return f"{db} is not writable"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"the folder {root} is not writable"
    return None


@dataclass(frozen=True)
class Item:
    rowid: int
    item_id: str
    data: dict[str, Any]
    image_path: str | None
    gold_label: str | None

    @property
    def text(self) -> str:
        """All text fields joined; single-field tasks get the field as is."""
        return "\n".join(str(v) for k, v in self.data.items() if k != "__image__" and v is not None)


@dataclass(frozen=True)
class CurrentAnnotation:
    """An item's current machine label: its latest annotation record, when that one is ok."""

    id: int
    label: str
    confidence: float | None
    reasoning: str | None
    model: str
    probs: str | None
    run_id: int


class CurrentRow(NamedTuple):
    """One item with the latest record of every stage (`Store.iter_current`)."""

    rowid: int
    item_id: str
    data: str
    gold_label: str | None
    machine_label: str | None
    machine_confidence: float | None
    annotation_status: str | None
    error_prob: float | None
    proposed_label: str | None
    critic_rationale: str | None
    selected: int | None
    review_prob: float | None
    human_label: str | None
    reviewer: str | None
    image_path: str | None


@dataclass(frozen=True)
class LeaseRefused:
    """Why an item could not be leased: `holder` holds it until `expires_at`, or, with holder
    None, the item has a review already."""

    holder: str | None
    expires_at: float | None


def _current_record(alias: str, table: str) -> str:
    """The join condition that keeps, for each item `i`, its latest record of `table`: an index
    lookup on (item_rowid, id), which streams where a joined GROUP BY subquery was materialised
    whole (in memory, when the store kept SQLite's temporary files there) and grew with the
    project (bench/bench_scale.py)."""
    return f"{alias}.id = (SELECT max(id) FROM {table} WHERE item_rowid = i.rowid)"


#: Which critique feeds selection, and so status, export and the report: an item's latest
#: critique record of any strategy and model. A failed one leaves the item without error_prob, so
#: selection asks for a new critique instead of falling back to an older one.
SELECTION_CRITIQUE = _current_record("c", "critiques")

#: every item (rowid order) with its current annotation a, critique c, selection s and review r
_CURRENT_JOINS = f"""FROM items i
            LEFT JOIN annotations a ON {_current_record("a", "annotations")}
            LEFT JOIN critiques c ON {SELECTION_CRITIQUE}
            LEFT JOIN selections s ON {_current_record("s", "selections")}
            LEFT JOIN reviews r ON {_current_record("r", "reviews")}
            ORDER BY i.rowid"""

#: every item with the latest record of every stage, in Store.CURRENT_COLUMNS order (export,
#: status and the report read it; bench/bench_io.py's naive export runs the very same query)
CURRENT_QUERY = f"""
            SELECT i.rowid, i.item_id, i.data, i.gold_label,
                   a.label, a.confidence, a.status,
                   c.error_prob, c.proposed_label, c.rationale,
                   s.selected, s.review_prob,
                   r.label, r.reviewer, i.image_path
            {_CURRENT_JOINS}
"""


#: each stage table's record columns: those a record must give, then the optional ones with their
#: defaults (`Store._add_records`; created_at is stamped by the store)
_RECORD_COLUMNS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "annotations": (
        ("item_rowid", "run_id", "model", "label", "status"),
        {"confidence": None, "reasoning": None, "raw": None, "error": None, "probs": None},
    ),
    "critiques": (
        ("item_rowid", "run_id", "model", "strategy", "error_prob", "status"),
        {"proposed_label": None, "rationale": None, "raw": None, "error": None},
    ),
    "selections": (("item_rowid", "run_id", "round", "selected", "review_prob"), {"round_prob": None}),
    "reviews": (
        ("item_rowid", "reviewer", "label", "source"),
        {"duration_ms": None, "selected_when_reviewed": None},
    ),
}


class ResponseCache:
    """The content-addressed model response cache, as `models.cache.CachedBackend` expects it.

    Rows are buffered and written in one transaction per CACHE_FLUSH_ROWS rows or
    CACHE_FLUSH_SECONDS (a commit per call was the largest store cost of an endpoint run), and
    before any other write of the store, on `count`, `len` and `close`: so every answer is on disk
    before the records made from it, and an interrupted stage, which records its end in a
    transaction, keeps every answer it was given. A put inside a transaction joins it.
    """

    def __init__(self, store: Store):
        self._store = store

    def get(self, key: str) -> dict | None:
        pending = self._store._pending_calls.get(key)
        if pending is not None:
            return json.loads(pending[2])
        row = self._store.conn.execute("SELECT response FROM model_calls WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, spec: str, response: dict, input_tokens: int, output_tokens: int) -> None:
        store = self._store
        row = (key, spec, json.dumps(response), input_tokens, output_tokens, time.time())
        if store.conn.in_transaction:
            store._pending_calls.pop(key, None)  # or its older buffered answer would win on flush
            store.conn.execute(_PUT_CALL, row)
            return
        if not store._pending_calls:
            store._pending_since = time.monotonic()
        store._pending_calls[key] = row
        if (
            len(store._pending_calls) >= CACHE_FLUSH_ROWS
            or time.monotonic() - store._pending_since >= CACHE_FLUSH_SECONDS
        ):
            store.flush_calls()

    def __len__(self) -> int:
        self._store.flush_calls()
        return self._store.conn.execute("SELECT count(*) FROM model_calls").fetchone()[0]

    def copy_from(self, db: str | Path) -> int:
        """Add every answer another project's database holds that this one lacks (a benchmark pool
        re-imported under new ids keeps its paid answers). Returns how many were new."""
        store = self._store
        store.flush_calls()
        before = store.conn.total_changes
        store.conn.execute("ATTACH DATABASE ? AS src", (str(db),))
        try:
            with store.transaction():
                store.conn.execute("INSERT OR IGNORE INTO model_calls SELECT * FROM src.model_calls")
        finally:
            store.conn.execute("DETACH DATABASE src")
        return store.conn.total_changes - before


class Store:
    """One project: a folder holding `actlabel.db`. Open with `Store.open(dir)` or `Store.create(dir, task)`."""

    def __init__(self, root: Path, conn: sqlite3.Connection, read_only: str | None = None):
        self.root = root
        self.conn = conn
        #: why the project cannot be written (a read-only file or folder), or None
        self.read_only = read_only
        self._lock_fh: Any = None
        self._task: Task | None = None
        # response-cache rows not yet written (ResponseCache), by key
        self._pending_calls: dict[str, tuple[Any, ...]] = {}
        self._pending_since = 0.0

    # ---- lifecycle -------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so bulk writes are one transaction.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # A fixed page cache, so memory does not grow with the project: 128 MB made a 1M-row import
        # 100 MB bigger than a 100k one. Random (hashed) ids touch every page of the item_id index,
        # and what the cache cannot hold is spilled to the WAL and read back: at 1M rows, 8 MB
        # cost 40% more CPU than 32 MB, 16 MB about 10% (bench/bench_io.py).
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        return conn

    @classmethod
    def create(cls, root: str | Path, task: Task) -> Store:
        root = Path(root)
        if (root / DB_NAME).exists():
            raise UserError(f"{root} is already an actlabel project (delete {root / DB_NAME} to start over)")
        if root.exists() and not root.is_dir():
            raise UserError(f"{root} exists and is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, cls._connect(root / DB_NAME))
        store._migrate()
        with store.transaction():
            store.conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            store.conn.execute("INSERT INTO meta VALUES ('task', ?)", (task.to_json(),))
            store.conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
        return store

    @classmethod
    def open(cls, root: str | Path) -> Store:
        root = Path(root)
        db = root / DB_NAME
        if not db.is_file():
            raise NotAProject(
                f"{root} is not an actlabel project (no {DB_NAME}; create one with `actlabel init`)"
            )
        read_only = _why_read_only(root, db)
        try:
            conn = cls._connect(db) if read_only is None else cls._connect_read_only(db)
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise NotAProject(f"{db} is not a readable actlabel project ({exc})") from None
        if row is None or row[0] != FORMAT:
            raise NotAProject(f"{db} is not an actlabel project database")
        store = cls(root, conn, read_only)
        store._migrate()
        return store

    @staticmethod
    def _connect_read_only(db: Path) -> sqlite3.Connection:
        """Reading a project nobody may write (status, export, report still work). In a read-only
        folder SQLite cannot create the WAL index, so the file is opened as immutable."""
        for query in ("mode=ro", "mode=ro&immutable=1"):
            conn = sqlite3.connect(
                f"{db.resolve().as_uri()}?{query}", uri=True, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
        raise sqlite3.OperationalError("cannot open the database read-only")

    def close(self) -> None:
        try:
            self.flush_calls()
        finally:
            self.release_writer()
            self.conn.close()

    def flush_calls(self) -> None:
        """Write the buffered response-cache rows (ResponseCache) in one transaction."""
        if not self._pending_calls:
            return
        pending, self._pending_calls = self._pending_calls, {}
        try:
            with self.transaction() as conn:
                conn.executemany(_PUT_CALL, pending.values())
        except BaseException:
            self._pending_calls = pending | self._pending_calls  # kept for the next attempt
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise UserError(
                f"{self.root} was written by a newer actlabel (schema {version} > {len(MIGRATIONS)}); upgrade actlabel"
            )
        if self.read_only and READABLE_SCHEMA <= version < len(MIGRATIONS):
            return
        for target in range(version, len(MIGRATIONS)):
            with self.transaction():
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {target + 1}")

    # ---- concurrency -----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on error so nothing half-written stays."""
        if self.conn.in_transaction:  # nested: the outer transaction owns commit/rollback
            yield self.conn
            return
        # Buffered answers first, in their own transaction: a rollback of this one keeps them.
        self.flush_calls()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ProjectBusy(
                    f"{self.root}: the project is busy (another process is writing); try again"
                ) from None
            raise self._read_only_error(exc) from None
        try:
            yield self.conn
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.OperationalError):
                raise self._write_error(exc) from None
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # a failed COMMIT (disk full) can leave the transaction open: end it, keep nothing
                self._rollback()
                raise self._write_error(exc) from None

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _write_error(self, exc: sqlite3.OperationalError) -> Exception:
        """A one-line UserError for what the user can fix (a read-only project, a full disk)."""
        if "full" in str(exc):  # SQLITE_FULL: "database or disk is full"
            return UserError(
                f"{self.root}: the disk is full ({exc}); the write was rolled back and nothing of it was "
                "stored; free some space and re-run"
            )
        return self._read_only_error(exc)

    def _read_only_error(self, exc: sqlite3.OperationalError) -> Exception:
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            return exc
        why = self.read_only or f"{self.root / DB_NAME}: {exc}"
        return UserError(f"{self.root}: the project is read-only ({why}); nothing was written")

    def acquire_writer(self, command: str) -> None:
        """Take the project's writer lock for a stage command; a second writer is told who holds it."""
        if self._lock_fh is not None:
            return
        if self.read_only:
            raise UserError(
                f"{self.root}: the project is read-only ({self.read_only}); `actlabel {command}` needs to write to it"
            )
        path = self.root / LOCK_NAME
        try:
            fh = open(path, "a+")  # noqa: SIM115 - held for the life of the command
        except OSError as exc:
            raise UserError(f"{self.root}: cannot take the writer lock {path} ({exc.strerror})") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ProjectBusy(f"{self.root}: the project is busy ({holder}); wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} is running `actlabel {command}`")
        fh.flush()
        self._lock_fh = fh

    def release_writer(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # ---- meta / task -----------------------------------------------------------------------
    @property
    def task(self) -> Task:
        if self._task is None:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'task'").fetchone()
            self._task = Task.from_json(row[0])
        return self._task

    def set_task(self, task: Task) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('task', ?)", (task.to_json(),))
        self._task = task

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def response_cache(self) -> ResponseCache:
        return ResponseCache(self)

    # ---- runs ------------------------------------------------------------------------------
    def start_run(self, stage: str, params: dict[str, Any] | None = None) -> int:
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO runs (stage, params, started_at) VALUES (?, ?, ?)",
                (stage, json.dumps(params or {}, sort_keys=True, default=str), time.time()),
            )
        return int(cur.lastrowid)

    def finish_run(
        self, run_id: int, status: str = "done", message: str | None = None, **usage: float
    ) -> None:
        allowed = {"calls", "cache_hits", "failures", "input_tokens", "output_tokens", "cost"}
        unknown = set(usage) - allowed
        if unknown:
            raise ValueError(f"unknown usage fields {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in usage)
        with self.transaction():
            self.conn.execute(
                f"UPDATE runs SET finished_at = ?, status = ?, message = ?{', ' + sets if sets else ''} WHERE run_id = ?",
                (time.time(), status, message, *usage.values(), run_id),
            )

    def runs(self, stage: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs" + (" WHERE stage = ?" if stage else "") + " ORDER BY run_id"
        cur = self.conn.execute(sql, (stage,) if stage else ())
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    # ---- items -----------------------------------------------------------------------------
    def insert_items(self, rows: Iterable[tuple[str, str, str | None, str | None]], run_id: int) -> int:
        """Insert (item_id, data_json, image_path, gold_label) rows; existing item_ids are kept as they are.

        Must be called inside `transaction()` by bulk importers so a failed import leaves nothing behind.
        Returns how many rows were new.
        """
        before = self.conn.total_changes
        # run_id goes into the SQL as an integer literal, so the rows bind as they come: a generator
        # that adds it to each row was a tenth of the import time.
        self.conn.executemany(
            "INSERT OR IGNORE INTO items (item_id, data, image_path, gold_label, run_id)"
            f" VALUES (?, ?, ?, ?, {int(run_id)})",
            rows,
        )
        return self.conn.total_changes - before

    @contextlib.contextmanager
    def deferred_item_index(self) -> Iterator[bool]:
        """Inside a transaction: while the items table is empty, drop the item_id index and build it
        again at the end, once, by sorting (at a million rows the SQLite work took 2.41 s this way
        against 3.26 s inserting each hashed id into the index). Yields whether it did; the caller then inserts ids that are already unique
        among themselves (a repeated one fails the index build, and the transaction rolls back).
        On an error inside, the transaction's rollback restores the index with the rest."""
        assert self.conn.in_transaction, "deferred_item_index needs an open transaction"
        deferred = self.count_items() == 0 and self._has_index("items_item_id")
        if not deferred:
            yield False
            return
        self.conn.execute("DROP INDEX items_item_id")
        # Appending rows touches the table's last pages only, and the build sorts every id in runs
        # as large as the page cache, merged from temporary files: with 4 MB the peak stays flat,
        # and the build is faster too (0.73 s against 0.87 s at 1M rows with 16 MB).
        self.conn.execute(f"PRAGMA cache_size=-{INDEX_BUILD_CACHE_KIB}")
        try:
            yield True
            try:
                self.conn.execute("CREATE UNIQUE INDEX items_item_id ON items (item_id)")
            except sqlite3.IntegrityError as exc:
                raise UserError(f"{self.root}: an item id repeats within the import ({exc})") from None
        finally:
            self.conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")

    def _has_index(self, name: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
            ).fetchone()
            is not None
        )

    def existing_item_data(self, item_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """item_id -> (data_json, gold_label) for those already stored, to detect conflicting re-imports."""
        out: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(item_ids), 900):
            chunk = item_ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for item_id, data, gold in self.conn.execute(
                f"SELECT item_id, data, gold_label FROM items WHERE item_id IN ({marks})", chunk
            ):
                out[item_id] = (data, gold)
        return out

    def gold_labels(self) -> dict[int, str]:
        """rowid -> gold label, for the items imported with one."""
        return dict(self.conn.execute("SELECT rowid, gold_label FROM items WHERE gold_label IS NOT NULL"))

    def has_images(self) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM items WHERE image_path IS NOT NULL LIMIT 1").fetchone()
            is not None
        )

    def image_path_of(self, rowid: int) -> str | None:
        row = self.conn.execute("SELECT image_path FROM items WHERE rowid = ?", (rowid,)).fetchone()
        return None if row is None else row[0]

    def count_items(self) -> int:
        return self.conn.execute("SELECT count(*) FROM items").fetchone()[0]

    def _item(self, row: tuple) -> Item:
        return Item(row[0], row[1], json.loads(row[2]), row[3], row[4])

    def iter_items(self, rowids: Sequence[int] | None = None, batch: int = 2000) -> Iterator[Item]:
        if rowids is None:
            last = 0
            while True:
                rows = self.conn.execute(
                    "SELECT rowid, item_id, data, image_path, gold_label FROM items WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch),
                ).fetchall()
                if not rows:
                    return
                for row in rows:
                    yield self._item(row)
                last = rows[-1][0]
        else:
            for start in range(0, len(rowids), 900):
                chunk = list(rowids[start : start + 900])
                marks = ",".join("?" * len(chunk))
                by_id = {
                    row[0]: row
                    for row in self.conn.execute(
                        f"SELECT rowid, item_id, data, image_path, gold_label FROM items WHERE rowid IN ({marks})",
                        chunk,
                    )
                }
                for rowid in chunk:
                    if rowid in by_id:
                        yield self._item(by_id[rowid])

    def get_item(self, rowid: int) -> Item | None:
        row = self.conn.execute(
            "SELECT rowid, item_id, data, image_path, gold_label FROM items WHERE rowid = ?", (rowid,)
        ).fetchone()
        return None if row is None else self._item(row)

    def rowid_of(self, item_id: str) -> int | None:
        row = self.conn.execute("SELECT rowid FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return None if row is None else row[0]

    def item_rowids(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT rowid FROM items ORDER BY rowid")]

    def input_columns(self) -> list[str]:
        """The imported input columns, in import order (from the first item of each import)."""
        raw = self.get_meta("input_columns")
        return json.loads(raw) if raw else []

    def add_input_columns(self, columns: Sequence[str]) -> None:
        current = self.input_columns()
        merged = current + [c for c in columns if c not in current]
        if merged != current:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('input_columns', ?)", (json.dumps(merged),)
            )

    # ---- stage records ---------------------------------------------------------------------
    def add_annotations(self, records: Iterable[dict[str, Any]]) -> None:
        self._add_records("annotations", records)

    def add_critiques(self, records: Iterable[dict[str, Any]]) -> None:
        self._add_records("critiques", records)

    def add_selections(self, records: Iterable[dict[str, Any]]) -> None:
        self._add_records("selections", records)

    def _add_records(self, table: str, records: Iterable[dict[str, Any]]) -> None:
        """Insert stage records (dicts by column name) in one transaction, each stamped with this
        moment; the optional columns a record leaves out take their defaults (_RECORD_COLUMNS)."""
        required, optional = _RECORD_COLUMNS[table]
        columns = (*required, *optional, "created_at")
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        base = {**optional, "created_at": time.time()}
        with self.transaction():
            self.conn.executemany(sql, (base | r for r in records))

    def add_review(
        self, item_rowid: int, label: str, *, reviewer: str, source: str, duration_ms: int | None = None
    ) -> int:
        label = self.review_label(item_rowid, label)
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO reviews (item_rowid, reviewer, label, source, duration_ms, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (item_rowid, reviewer, label, source, duration_ms, time.time()),
            )
        return int(cur.lastrowid)

    def add_reviews(self, records: Iterable[dict[str, Any]]) -> None:
        # every label checked before anything is written
        rows = [r | {"label": self.review_label(r["item_rowid"], r["label"])} for r in records]
        self._add_records("reviews", rows)

    def review_label(self, item_rowid: int, label: Any) -> str:
        """The stored form of a review's label, or UserError when it is not the task's: one of
        the labels, or for a multi-label task a set of them (multilabel.parse), empty allowed."""
        task = self.task
        if task.multi_label:
            from actlabel import multilabel

            stored = multilabel.parse(label, task.label_names, f"item {item_rowid}: review")
            if stored is None:
                raise UserError(f"item {item_rowid}: review has no label set (submit [] for the empty set)")
            return stored
        if label not in task.label_names:
            raise UserError(f"item {item_rowid}: review label {label!r} is not one of the task's labels")
        return label

    # ---- the current record of each item ----------------------------------------------------
    # Records are appended, so "the current X of an item" is always its record with the highest id
    # among those a query admits. Every module asks for it here, by name, instead of writing the
    # GROUP BY itself.

    def latest(
        self,
        table: str,
        columns: Sequence[str],
        where: str | None = None,
        params: Sequence[Any] = (),
        rowids: Sequence[int] | None = None,
    ) -> dict[int, tuple]:
        """item_rowid -> the chosen columns of its latest record in `table` among those matching
        `where` (SQL with `?` bound to `params`), for every item or only `rowids`.

        SQLite's bare-column max(): the other columns come from the row holding max(id)."""
        if table not in STAGE_TABLES:
            raise ValueError(f"unknown stage table {table!r}")
        cols = ", ".join(columns)
        conditions = [where] if where else []
        if rowids is None:
            sql = f"SELECT item_rowid, max(id), {cols} FROM {table}"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            return {row[0]: row[2:] for row in self.conn.execute(sql + " GROUP BY item_rowid", tuple(params))}
        out: dict[int, tuple] = {}
        rowids = list(rowids)
        for start in range(0, len(rowids), _IN_CHUNK):
            chunk = rowids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT item_rowid, max(id), {cols} FROM {table} WHERE " + " AND ".join(
                [*conditions, f"item_rowid IN ({marks})"]
            )
            for row in self.conn.execute(sql + " GROUP BY item_rowid", (*params, *chunk)):
                out[row[0]] = row[2:]
        return out

    def current_annotations(self, *, with_probs: bool = False) -> dict[int, CurrentAnnotation]:
        """item_rowid -> its latest annotation, for the items where that one is ok (in rowid order).
        `probs` is read only `with_probs`: the distributions are most of the table's bytes."""
        probs = "a.probs" if with_probs else "NULL"
        rows = self.conn.execute(
            f"SELECT a.item_rowid, a.id, a.label, a.confidence, a.reasoning, a.model, {probs}, a.run_id "
            "FROM annotations a JOIN (SELECT item_rowid, max(id) AS id FROM annotations GROUP BY item_rowid) l "
            "ON a.id = l.id WHERE a.status = 'ok' ORDER BY a.item_rowid"
        )
        return {r[0]: CurrentAnnotation(*r[1:]) for r in rows}

    def iter_current_annotations(
        self, *, limit: int | None = None, batch: int = 20000
    ) -> Iterator[list[tuple]]:
        """Batches of (rowid, annotation id, label, confidence, probs, gold_label) for the items
        whose latest annotation is ok, in rowid order, streamed: memory is one batch at any size."""
        sql = (
            "SELECT i.rowid, a.id, a.label, a.confidence, a.probs, i.gold_label FROM items i "
            f"JOIN annotations a ON {_current_record('a', 'annotations')} WHERE a.status = 'ok' ORDER BY i.rowid"
        )
        cur = self.conn.execute(sql + (f" LIMIT {int(limit)}" if limit is not None else ""))
        while rows := cur.fetchmany(batch):
            yield rows

    def annotations_by_id(self, ids: Iterable[int], columns: Sequence[str]) -> dict[int, tuple]:
        """annotation id -> `columns` of that record (a critic reading what its target's annotation stored)."""
        ids = [int(i) for i in ids]
        cols = ", ".join(columns)
        out: dict[int, tuple] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            out.update(
                {
                    r[0]: r[1:]
                    for r in self.conn.execute(
                        f"SELECT id, {cols} FROM annotations WHERE id IN ({marks})", chunk
                    )
                }
            )
        return out

    def reviewer_totals(self) -> list[tuple[str, int, str, float | None]]:
        """(reviewer, reviews, the sources they came through joined by commas, mean duration in ms)."""
        return self.conn.execute(
            "SELECT reviewer, count(*), group_concat(DISTINCT source), avg(duration_ms) FROM reviews GROUP BY reviewer"
        ).fetchall()

    def gold_and_machine_labels(self) -> list[tuple[str, str]]:
        """(gold label, current machine label) of the items that have both."""
        return self.conn.execute(
            "SELECT i.gold_label, a.label FROM items i JOIN annotations a ON "
            + _current_record("a", "annotations")
            + " WHERE a.status = 'ok' AND i.gold_label IS NOT NULL"
        ).fetchall()

    def iter_run_annotations(
        self, run_id: int, columns: Sequence[str], where: str = "", batch: int = 20000
    ) -> Iterator[list[tuple]]:
        """Batches of (item_rowid, *columns) of each item's latest annotation among those one run
        wrote (and matching `where`, SQL), in item_rowid order: paged on the (item_rowid, id)
        index, so a pass over a million-item run holds one batch."""
        cols = ", ".join(columns)
        sql = (
            f"SELECT item_rowid, max(id), {cols} FROM annotations WHERE run_id = ? AND item_rowid > ?"
            + (f" AND {where}" if where else "")
            + " GROUP BY item_rowid ORDER BY item_rowid LIMIT ?"
        )
        last = 0
        while rows := self.conn.execute(sql, (run_id, last, batch)).fetchall():
            yield [(r[0], *r[2:]) for r in rows]
            last = rows[-1][0]

    def gold_agreement(self) -> tuple[int, int]:
        """(items whose current ok machine label equals their gold label, items with both): counted
        in SQL, where a (gold, machine) pair per item was ~170 bytes an item in Python."""
        n, agree = self.conn.execute(
            "SELECT count(*), coalesce(sum(a.label = i.gold_label), 0) FROM items i JOIN annotations a ON "
            + _current_record("a", "annotations")
            + " WHERE a.status = 'ok' AND i.gold_label IS NOT NULL"
        ).fetchone()
        return int(agree), int(n)

    def iter_pending_annotation_rowids(
        self, done_runs: Iterable[int], batch: int = 20000
    ) -> Iterator[list[int]]:
        """Batches of the rowids, in rowid order, of the items whose latest annotation is not an ok
        one from `done_runs` (none yet, failed, or made with other settings). Paged by rowid, so
        memory is one batch however many items there are, and records written while the caller
        works on a batch do not move the next page."""
        runs = ",".join(str(int(r)) for r in done_runs)
        sql = (
            "SELECT i.rowid FROM items i LEFT JOIN annotations a ON "
            + _current_record("a", "annotations")
            + f" WHERE i.rowid > ? AND NOT coalesce(a.status = 'ok' AND a.run_id IN ({runs}), 0)"
            " ORDER BY i.rowid LIMIT ?"
        )
        last = 0
        while rows := self.conn.execute(sql, (last, batch)).fetchall():
            yield [r[0] for r in rows]
            last = rows[-1][0]

    def current_reviews(self, rowids: Sequence[int] | None = None) -> dict[int, str]:
        """item_rowid -> the label of its latest review (the human label)."""
        return {r: v[0] for r, v in self.latest("reviews", ("label",), rowids=rowids).items()}

    def current_selections(self, *, chosen_only: bool = False) -> dict[int, tuple[bool, float]]:
        """item_rowid -> (selected, review_prob) of its latest selection record; with `chosen_only`,
        of its latest record that selected it (the probability it was reviewed with)."""
        where = "selected = 1" if chosen_only else None
        return {
            r: (bool(selected), pi)
            for r, (selected, pi) in self.latest("selections", ("selected", "review_prob"), where).items()
        }

    def selected_now(self, rowids: Sequence[int] | None = None) -> set[int]:
        """The items whose latest selection record chose them for review."""
        return {
            r
            for r, (selected,) in self.latest("selections", ("selected",), rowids=rowids).items()
            if selected
        }

    def selected_for_review(self) -> list[tuple[int, float | None, bool]]:
        """(rowid, error_prob of its selection critique, whether it has a review) of every item
        whose latest selection record chose it."""
        return [
            (rowid, e, bool(reviewed))
            for rowid, e, reviewed in self.conn.execute(
                """
                WITH latest AS MATERIALIZED (
                    SELECT item_rowid AS rowid, max(id) AS id, selected FROM selections GROUP BY item_rowid
                )
                SELECT i.rowid, c.error_prob, EXISTS (SELECT 1 FROM reviews r WHERE r.item_rowid = i.rowid)
                FROM latest i LEFT JOIN critiques c ON """
                + SELECTION_CRITIQUE
                + " WHERE i.selected = 1"
            )
        ]

    def latest_critiques(
        self,
        columns: Sequence[str],
        *,
        strategy: str | None = None,
        model: str | None = None,
        ok_only: bool = True,
    ) -> dict[int, tuple]:
        """item_rowid -> `columns` of its latest critique by `strategy` (and `model`), ok ones only
        unless `ok_only` is false. Not the selection's critique: see `current_critique_counts`."""
        conditions, params = (["status = 'ok'"] if ok_only else []), []
        if strategy is not None:
            conditions.append("strategy = ?")
            params.append(strategy)
        if model is not None:
            conditions.append("model = ?")
            params.append(model)
        return self.latest("critiques", columns, " AND ".join(conditions) or None, params)

    def latest_critiques_per_critic(self, columns: Sequence[str]) -> dict[tuple[str, str], dict[int, tuple]]:
        """(strategy, model) -> item_rowid -> `columns` of its latest ok critique with an error_prob
        by that critic: every critic's own current opinion (ensembles, learned features)."""
        cols = ", ".join(columns)
        out: dict[tuple[str, str], dict[int, tuple]] = {}
        for row in self.conn.execute(
            f"SELECT item_rowid, max(id), strategy, model, {cols} FROM critiques "
            "WHERE status = 'ok' AND error_prob IS NOT NULL GROUP BY item_rowid, strategy, model"
        ):
            out.setdefault((row[2], row[3]), {})[row[0]] = row[4:]
        return out

    def critics_newest_first(self, strategy: str | None = None) -> Iterator[tuple[str, str]]:
        """(strategy, model) of every ok critique record (only `strategy`'s, when given), newest first."""
        sql = "SELECT strategy, model FROM critiques WHERE status = 'ok'"
        args = (strategy,) if strategy else ()
        if strategy:
            sql += " AND strategy = ?"
        yield from self.conn.execute(sql + " ORDER BY id DESC", args)

    def has_machine_labels(self) -> bool:
        """Whether some item's latest annotation is ok: stops at the first (loading every current
        annotation for this took a dict of the whole table at 1M items)."""
        return (
            self.conn.execute(
                "SELECT 1 FROM items i JOIN annotations a ON "
                + _current_record("a", "annotations")
                + " WHERE a.status = 'ok' LIMIT 1"
            ).fetchone()
            is not None
        )

    def current_status_counts(self, table: str) -> dict[str, int]:
        """status -> how many items have a latest record in `table` (annotations or critiques) with
        that status. For critiques this is the selection's critique (SELECTION_CRITIQUE): an older
        failed record that a later one replaced does not count."""
        if table not in {"annotations", "critiques"}:
            raise ValueError(f"unknown stage table {table!r}")
        current = SELECTION_CRITIQUE if table == "critiques" else _current_record("c", table)
        return dict(
            self.conn.execute(
                f"SELECT c.status, count(*) FROM items i JOIN {table} c ON {current} GROUP BY c.status"
            ).fetchall()
        )

    def run_status_counts(self, table: str, run_id: int) -> dict[str, int]:
        """status -> how many records one annotate or critique run wrote."""
        if table not in {"annotations", "critiques"}:
            raise ValueError(f"unknown stage table {table!r}")
        # Counted here from a streamed cursor: with no index on run_id, SQLite's GROUP BY sorted
        # every record of the run first (~40 MB at a million, in memory when the store kept SQLite's
        # temporary files there).
        counts: dict[str, int] = {}
        cur = self.conn.execute(f"SELECT status FROM {table} WHERE run_id = ?", (run_id,))
        while rows := cur.fetchmany(20000):
            for (status,) in rows:
                counts[status] = counts.get(status, 0) + 1
        return counts

    def last_record_id(self, table: str) -> int:
        """The id of the newest record in a stage table, 0 when empty: changes whenever it grows."""
        if table not in STAGE_TABLES:
            raise ValueError(f"unknown stage table {table!r}")
        return int(self.conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)

    def records_per_item(self, table: str) -> dict[int, int]:
        """item_rowid -> how many records `table` holds for it (current or not): what a crash or
        a retry duplicated, what an interrupted run never wrote."""
        if table not in STAGE_TABLES:
            raise ValueError(f"unknown stage table {table!r}")
        return dict(self.conn.execute(f"SELECT item_rowid, count(*) FROM {table} GROUP BY item_rowid"))

    def reviewed_count(self) -> int:
        """How many items have a human label."""
        return int(self.conn.execute("SELECT count(DISTINCT item_rowid) FROM reviews").fetchone()[0])

    def round_records(self, rnd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rowids ascending, selected, round probability) of round `rnd`'s latest record per item.

        The round probability is the round's own inclusion probability (round_prob; older records
        without it wrote the same value as review_prob)."""
        import numpy as np  # not at module level: `actlabel --help` and the CLI's start stay light

        cur = self.conn.execute(
            "SELECT item_rowid, max(id), selected, coalesce(round_prob, review_prob) FROM selections"
            " WHERE round = ? GROUP BY item_rowid ORDER BY item_rowid",
            (rnd,),
        )
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        while rows := cur.fetchmany(10000):
            k = len(rows)
            parts.append((
                np.fromiter((r[0] for r in rows), dtype=np.int64, count=k),
                np.fromiter((bool(r[2]) for r in rows), dtype=bool, count=k),
                np.fromiter((r[3] for r in rows), dtype=float, count=k),
            ))  # fmt: skip
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=bool), np.empty(0)
        rowids, selected, prob = (np.concatenate(col) for col in zip(*parts, strict=True))
        return rowids, selected, prob

    def last_round(self) -> int:
        """The latest selection round (rounds are numbered 1, 2, ... without gaps), 0 before any."""
        return int(self.conn.execute("SELECT max(round) FROM selections").fetchone()[0] or 0)

    def distinct(self, table: str, columns: str) -> list[tuple]:
        """The distinct values of `columns` in a stage table, sorted (which models, which strategies)."""
        if table not in STAGE_TABLES:
            raise ValueError(f"unknown stage table {table!r}")
        return self.conn.execute(f"SELECT DISTINCT {columns} FROM {table} ORDER BY {columns}").fetchall()

    def failure_reasons(self, table: str, run_id: int, top: int = 3) -> list[tuple[int, str]]:
        """(count, error) of the most common failures a stage run recorded, most common first."""
        if table not in {"annotations", "critiques"}:
            raise ValueError(f"unknown stage table {table!r}")
        return [
            (n, error or "no reason recorded")
            for error, n in self.conn.execute(
                f"SELECT error, count(*) AS n FROM {table} WHERE run_id = ? AND status = 'failed'"
                " GROUP BY error ORDER BY n DESC, error LIMIT ?",
                (run_id, top),
            )
        ]

    def count(self, table: str, where: str = "") -> int:
        if table not in {"items", "annotations", "critiques", "selections", "reviews", "model_calls", "runs"}:
            raise ValueError(f"unknown table {table!r}")
        self.flush_calls()
        return self.conn.execute(
            f"SELECT count(*) FROM {table} {('WHERE ' + where) if where else ''}"
        ).fetchone()[0]

    # ---- review leases (review/queue.py) -------------------------------------------------------
    def take_lease(
        self, rowid: int, reviewer: str, expires_at: float, now: float, *, refuse_reviewed: bool = True
    ) -> LeaseRefused | None:
        """Lease (or renew) an item for a reviewer, across processes; None when taken, else why not:
        another reviewer's unexpired lease, or (with `refuse_reviewed`) a review already stored."""
        with self.transaction() as conn:
            if (
                refuse_reviewed
                and conn.execute("SELECT 1 FROM reviews WHERE item_rowid = ? LIMIT 1", (rowid,)).fetchone()
            ):
                return LeaseRefused(None, None)
            cur = conn.execute(
                "INSERT INTO leases (item_rowid, reviewer, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (item_rowid) DO UPDATE SET reviewer = excluded.reviewer, expires_at = excluded.expires_at"
                " WHERE leases.reviewer = excluded.reviewer OR leases.expires_at <= ?",
                (rowid, reviewer, expires_at, now),
            )
            if cur.rowcount == 1:
                return None
            holder, expires = conn.execute(
                "SELECT reviewer, expires_at FROM leases WHERE item_rowid = ?", (rowid,)
            ).fetchone()
            return LeaseRefused(holder, expires)

    def release_leases(self, held: Iterable[tuple[int, str]]) -> None:
        """Give back the (rowid, reviewer) leases."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM leases WHERE item_rowid = ? AND reviewer = ?", held)

    def save_leased_review(
        self, rowid: int, label: str, reviewer: str, source: str, duration_ms: int | None, created_at: float
    ) -> int | None:
        """Append a review (`label` in its stored form) and give back the reviewer's lease, in one
        transaction; the review id, or None when the item does not exist."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM items WHERE rowid = ?", (rowid,)).fetchone() is None:
                return None
            cur = conn.execute(
                "INSERT INTO reviews (item_rowid, reviewer, label, source, duration_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (rowid, reviewer, label, source, duration_ms, created_at),
            )
            conn.execute("DELETE FROM leases WHERE item_rowid = ? AND reviewer = ?", (rowid, reviewer))
        return int(cur.lastrowid)

    def last_reviewed_by(self, reviewer: str) -> int | None:
        """The rowid of the item this reviewer answered last."""
        row = self.conn.execute(
            "SELECT item_rowid FROM reviews WHERE reviewer = ? ORDER BY id DESC LIMIT 1", (reviewer,)
        ).fetchone()
        return None if row is None else row[0]

    # ---- provider batch jobs (batch.py) ------------------------------------------------------
    def add_batch_job(
        self,
        stage: str,
        spec: str,
        input_file_id: str,
        status: str,
        requests: Sequence[tuple[str, str | None]],
        params: dict[str, Any],
    ) -> int:
        """Store a job and its (cache key, choices) requests before the provider is asked to run
        it, so a restarted process finds it; returns its job_id."""
        now = time.time()
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO batch_jobs (stage, spec, provider_batch_id, input_file_id, status, created_at, "
                "updated_at, request_count, params) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                (stage, spec, input_file_id, status, now, now, len(requests), json.dumps(params)),
            )
            job_id = int(cur.lastrowid)
            self.conn.executemany(
                "INSERT INTO batch_requests (job_id, key, choices) VALUES (?, ?, ?)",
                ((job_id, k, c) for k, c in requests),
            )
        return job_id

    def batch_jobs(self, stage: str, spec: str, *, exclude: Sequence[str] = ()) -> list[tuple]:
        """(job_id, stage, spec, provider_batch_id, input_file_id, status, request_count) of the
        jobs of a stage and model whose status is not in `exclude`, oldest first."""
        marks = ",".join("?" * len(exclude))
        return self.conn.execute(
            "SELECT job_id, stage, spec, provider_batch_id, input_file_id, status, request_count FROM batch_jobs "
            f"WHERE stage = ? AND spec = ? AND status NOT IN ({marks}) ORDER BY job_id",
            (stage, spec, *exclude),
        ).fetchall()

    def set_batch_job_status(
        self,
        job_id: int,
        status: str,
        provider_batch_id: str | None = None,
        *,
        params: dict[str, Any] | None = None,
    ) -> None:
        sets, args = ["status = ?", "updated_at = ?"], [status, time.time()]
        if provider_batch_id is not None:
            sets.append("provider_batch_id = ?")
            args.append(provider_batch_id)
        if params is not None:
            sets.append("params = ?")
            args.append(json.dumps(params))
        with self.transaction():
            self.conn.execute(f"UPDATE batch_jobs SET {', '.join(sets)} WHERE job_id = ?", (*args, job_id))

    def batch_request_choices(self, job_id: int) -> dict[str, str | None]:
        """cache key -> the constrained choices of each request of a job."""
        return dict(self.conn.execute("SELECT key, choices FROM batch_requests WHERE job_id = ?", (job_id,)))

    def record_batch_answers(self, job_id: int, answered: Iterable[str], errors: dict[str, str]) -> None:
        """Which requests of a collected job the provider answered, and why the others failed."""
        with self.transaction():
            self.conn.executemany(
                "UPDATE batch_requests SET status = 'ok' WHERE job_id = ? AND key = ?",
                ((job_id, k) for k in answered),
            )
            self.conn.executemany(
                "UPDATE batch_requests SET status = 'failed', error = ? WHERE job_id = ? AND key = ?",
                ((e, job_id, k) for k, e in errors.items()),
            )

    def failed_batch_keys(self, spec: str) -> set[str]:
        """Cache keys a collected batch of this model failed."""
        return {
            k
            for (k,) in self.conn.execute(
                "SELECT r.key FROM batch_requests r JOIN batch_jobs j ON j.job_id = r.job_id "
                "WHERE j.spec = ? AND r.status = 'failed'",
                (spec,),
            )
        }

    # ---- the current state of every item, for export / status / report ---------------------
    CURRENT_COLUMNS = CurrentRow._fields

    def iter_current(self, batch: int = 10000) -> Iterator[list[tuple]]:
        """Batches of rows in CURRENT_COLUMNS order: each item with the latest record of every stage."""
        cur = self.conn.execute(CURRENT_QUERY)
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield rows

    def iter_selection_rows(self, batch: int = 10000) -> Iterator[list[tuple]]:
        """Batches of (rowid, machine_label, annotation_status, error_prob, selected, review_prob,
        human_label) in rowid order: what selection reads of every item. Without the item's data
        and the critique's rationale a batch is a tenth of `iter_current`'s (10,000 of its rows
        were 15 MB, the largest part of a million-item selection's peak)."""
        sql = f"""
            SELECT i.rowid, a.label, a.status, c.error_prob, s.selected, s.review_prob, r.label
            {_CURRENT_JOINS}
        """
        cur = self.conn.execute(sql)
        while rows := cur.fetchmany(batch):
            yield rows

    def iter_current_rows(self, batch: int = 10000) -> Iterator[list[CurrentRow]]:
        """`iter_current` with each row named (a NamedTuple: as cheap as the tuple it wraps)."""
        make = CurrentRow._make
        for rows in self.iter_current(batch):
            yield [make(r) for r in rows]
