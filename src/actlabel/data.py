"""Import (CSV, JSONL, Parquet, image folders) and export (CSV, JSONL, Parquet).

Import streams the file in batches and writes everything in one transaction: a bad row anywhere
stops the import with a one-line error naming the row, and nothing of that import is kept.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from actlabel.errors import UserError
from actlabel.images import image_problem
from actlabel.store import Store

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq"}
BATCH_ROWS = 20000
#: bytes of CSV / JSONL Arrow parses at a time. Its streaming readers parse about 32 blocks ahead
#: in their own threads (2 MB blocks held the whole of a 60 MB file), so this bounds the import's
#: memory; `_regroup` joins the small batches back to about BATCH_ROWS rows.
ARROW_BLOCK_BYTES = 1 << 18

EXPORT_COLUMNS_AFTER_INPUT = (
    "machine_label",
    "machine_confidence",
    "error_prob",
    "proposed_label",
    "critic_rationale",
    "selected",
    "review_prob",
    "reviewed",
    "human_label",
    "final_label",
    "label_source",
    "gold_label",
)


@dataclass(frozen=True)
class ImportResult:
    path: str
    rows: int
    new_items: int
    already_present: int
    columns: list[str]
    text_columns: list[str]
    image_column: str | None
    id_column: str | None = None
    gold_column: str | None = None
    #: what the user should know about this import (a remembered role this file lacks)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnRoles:
    text: list[str]
    image: str | None
    id: str | None
    gold: str | None


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------


def import_path(
    store: Store,
    path: str | Path,
    *,
    text_columns: Sequence[str] = (),
    image_column: str | None = None,
    id_column: str | None = None,
    gold_column: str | None = None,
    encoding: str = "utf-8",
    image_root: str | Path | None = None,
) -> ImportResult:
    """Import a table file or an image folder into the project. Re-importing the same file adds nothing.

    image_root: the folder image paths must resolve into (symlinks followed); default: the table's
    folder (or the image folder itself). The review app serves images only from these roots.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    root = _image_root(path, image_root)
    if path.is_dir():
        return _import_image_folder(store, path, root)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(
            f"{path}: unknown file type {suffix!r} (use .csv, .tsv, .jsonl, .parquet or an image folder)"
        )
    before = _file_state(path)
    if suffix in (".csv", ".tsv"):
        encoding = _sniff_encoding(path, encoding)
        columns, batches = _csv_batches(path, encoding, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        encoding = _sniff_encoding(path, encoding)
        columns, batches = _jsonl_batches(path, encoding)
    else:
        columns, batches = _parquet_batches(path)

    task = store.task
    roles, notes = _roles_for_file(
        path, columns, task, list(text_columns), image_column, id_column, gold_column
    )
    labels = set(task.label_names)
    run_id = store.start_run(
        "import", {"path": str(path.resolve()), "roles": roles.__dict__, "image_root": str(root)}
    )
    check_existing = store.count_items() > 0

    def load(batches: Iterator[tuple[int, dict]]) -> tuple[int, int]:
        rows = new = 0
        seen = _SeenIds()
        multi_label_names = task.label_names if task.multi_label else None
        prepared = (
            _batch_to_records(path, first_row, batch, roles, labels, seen, root, multi_label_names)
            for first_row, batch in batches
        )
        # a first import appends rows whose ids are unique among themselves (_SeenIds): the item_id
        # index is built once at the end
        with store.transaction(), store.deferred_item_index():
            try:
                for records in prepared:
                    if check_existing:
                        _check_conflicts(store, path, records)
                    new += store.insert_items(records, run_id)
                    rows += len(records)
            except (UserError, OSError, pa.ArrowInvalid) as exc:
                _check_unchanged(path, before)  # a file cut or grown under the reader: say that
                if isinstance(exc, UserError):
                    raise
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(
                    f"{path}: cannot be read ({reason}); nothing of this import was stored"
                ) from None
            # what was read is the file as it was when the import started, or none of it is kept
            _check_unchanged(path, before)
            if rows == 0:
                raise UserError(f"{path}: no rows to import")
            store.add_input_columns(roles.text + ([roles.image] if roles.image else []))
            if roles.image:
                _add_image_root(store, root)
            _remember_roles(store, roles)
        return rows, new

    try:
        fast = (
            _jsonl_arrow_batches(path, roles)
            if suffix in (".jsonl", ".ndjson") and encoding == "utf-8"
            else None
        )
        try:
            rows, new = load(fast if fast is not None else batches)
        except _ArrowCannot:
            # The Arrow reader met something only the exact reader handles (a number or object in a
            # text column, a line that is not an object...): its transaction rolled back, start over.
            rows, new = load(batches)
    except UserError as exc:
        _log_run_end(store, run_id, "failed", str(exc))
        raise
    except BaseException as exc:  # Ctrl+C, kill: the transaction rolled back, say so in the run log
        _log_run_end(store, run_id, "interrupted", f"{type(exc).__name__}: nothing of this import was stored")
        raise
    store.finish_run(run_id, "done", f"{rows} rows, {new} new")
    return ImportResult(
        str(path), rows, new, rows - new, columns, roles.text, roles.image, roles.id, roles.gold, tuple(notes)
    )


def _file_state(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _check_unchanged(path: Path, before: tuple[int, int, int]) -> None:
    """Refuse a file that was written, cut or replaced while it was being read: the rows read are
    then neither the old file nor the new one (a row cut in two still parses)."""
    try:
        now = _file_state(path)
    except OSError:
        now = (-1, 0, 0)
    if now != before:
        change = "was removed" if now[0] < 0 else f"went from {before[0]} to {now[0]} bytes"
        if now[0] == before[0] and now[0] >= 0:
            change = "was rewritten"
        raise UserError(
            f"{path}: the file changed while it was being imported (it {change}); nothing of this import "
            "was stored; re-run once the file is complete"
        )


def _log_run_end(store: Store, run_id: int, status: str, message: str) -> None:
    """Record how a failed import ended, if the store can still be written: with the disk full the
    import's own error is the one to report."""
    try:
        store.finish_run(run_id, status, message)
    except (UserError, sqlite3.Error):
        pass


# ---- where images may live -----------------------------------------------------------------------

IMAGE_ROOTS_META = "image_roots"


def _image_root(path: Path, image_root: str | Path | None) -> Path:
    if image_root is None:
        return (path if path.is_dir() else path.parent).resolve()
    root = Path(image_root)
    if not root.is_dir():
        raise UserError(f"--image-root {root}: no such folder")
    return root.resolve()


def _add_image_root(store: Store, root: Path) -> None:
    roots = image_roots(store)
    if str(root) not in roots:
        store.set_meta(IMAGE_ROOTS_META, json.dumps([*roots, str(root)]))


def image_roots(store: Store) -> list[str]:
    """The folders images were imported from (resolved): the review app serves files only inside
    these and the project folder, so a symlink swapped in after import cannot leak other files."""
    raw = store.get_meta(IMAGE_ROOTS_META)
    return json.loads(raw) if raw else []


def image_is_servable(store: Store, image_path: str) -> bool:
    """True when `image_path` (symlinks followed now, not at import) lies inside an image root or
    the project folder."""
    try:
        real = Path(image_path).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    roots = [store.root.resolve(), *(Path(r) for r in image_roots(store))]
    return real.is_file() and any(real.is_relative_to(r) for r in roots)


# ---- column roles ------------------------------------------------------------------------------


def _roles_for_file(
    path: Path,
    columns: list[str],
    task: Any,
    text_columns: list[str],
    image_column: str | None,
    id_column: str | None,
    gold_column: str | None,
) -> tuple[ColumnRoles, list[str]]:
    """Roles for this file: what the user passed (must exist), else what the first import fixed.

    Remembered id and gold columns are used when the file has them and dropped when it does not, so
    unlabelled items can follow a labelled set (the notes say so). Remembered text and image columns
    are the input itself: a file without them is refused, naming where the role came from.
    """
    available = set(columns)
    notes: list[str] = []
    if not text_columns and task.text_columns:
        missing = [c for c in task.text_columns if c not in available]
        if missing and not image_column:
            raise UserError(
                f"{path}: the project's text column {missing[0]!r} (set by its first import) is not in this "
                f"file; pass --text COLUMN (columns: {', '.join(columns)})"
            )
        if not missing:
            text_columns = list(task.text_columns)
    if image_column is None and task.image_column:
        if task.image_column not in available:
            raise UserError(
                f"{path}: the project's image column {task.image_column!r} (set by its first import) is not "
                f"in this file; pass --image COLUMN (columns: {', '.join(columns)})"
            )
        image_column = task.image_column
    if id_column is None and task.id_column:
        if task.id_column in available:
            id_column = task.id_column
        else:
            notes.append(f"no id column {task.id_column!r} in this file: its items get content-hash ids")
    if gold_column is None and task.gold_column:
        if task.gold_column in available:
            gold_column = task.gold_column
        else:
            notes.append(f"no gold column {task.gold_column!r} in this file: its items have no gold label")
    return _resolve_roles(path, columns, text_columns, image_column, id_column, gold_column), notes


def _remember_roles(store: Store, roles: ColumnRoles) -> None:
    """The first import fixes the task's column roles, so later imports and exports agree."""
    task = store.task
    changed = False
    if not task.text_columns and roles.text:
        task.text_columns, changed = list(roles.text), True
    if task.image_column is None and roles.image:
        task.image_column, changed = roles.image, True
    if task.id_column is None and roles.id:
        task.id_column, changed = roles.id, True
    if task.gold_column is None and roles.gold:
        task.gold_column, changed = roles.gold, True
    if changed:
        store.set_task(task)


def _resolve_roles(
    path: Path,
    columns: list[str],
    text_columns: list[str],
    image_column: str | None,
    id_column: str | None,
    gold_column: str | None,
) -> ColumnRoles:
    available = set(columns)
    for role, name in [("--image", image_column), ("--id", id_column), ("--gold", gold_column)] + [
        ("--text", t) for t in text_columns
    ]:
        if name is not None and name not in available:
            raise UserError(f"{path}: {role} column {name!r} not found (columns: {', '.join(columns)})")
    # a column called "label" is not taken for gold: the user says so with --gold
    if not text_columns and image_column is None:
        text_columns = default_text_columns(columns, id_column, gold_column)
        if text_columns is None:
            raise UserError(
                f"{path}: say which column holds the text with --text (columns: {', '.join(columns)})"
            )
    return ColumnRoles(list(text_columns), image_column, id_column, gold_column)


def default_text_columns(
    columns: Sequence[str], id_column: str | None, gold_column: str | None
) -> list[str] | None:
    """The text column when the user names none (files here, DataFrames in frame.py): "text",
    else the only column that is neither the id nor the gold; None when that is not clear."""
    others = [c for c in columns if c not in (id_column, gold_column)]
    if "text" in others:
        return ["text"]
    return others if len(others) == 1 else None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _as_text(value: Any) -> str:
    """A non-string cell as the text a model reads: JSON for numbers, booleans, lists and objects
    (a Python repr such as `{'a': True}` is neither JSON nor what the file said)."""
    if type(value) is str:
        return value
    if isinstance(value, bool | int | float | list | dict):
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # keys that are not strings, values orjson does not know
            return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


#: every character Python's str.isspace() accepts (tests check the list): the Arrow checks below
#: must call a cell blank exactly when the row-by-row `str.strip()` would
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_RE2_SPACE = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE)
#: RE2: a cell holding some character that is not whitespace
_NOT_BLANK = f"[^{_RE2_SPACE}]"
#: RE2: a cell that starts or ends with whitespace
_NEEDS_STRIP = f"^[{_RE2_SPACE}]|[{_RE2_SPACE}]$"
#: RE2: what orjson escapes in a string (quote, backslash, control characters); every other
#: character it writes as the UTF-8 it is, so such a cell's JSON is the cell between quotes
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _is_arrow_text(values: Any) -> bool:
    return isinstance(values, pa.Array) and (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    )


def _batch_to_records(
    path: Path,
    first_row: int,
    batch: dict[str, Any],
    roles: ColumnRoles,
    labels: set[str],
    seen: _SeenIds,
    image_root: Path,
    multi_label_names: Sequence[str] | None = None,
) -> list[tuple[str, str, str | None, str | None]]:
    """Records for one batch: checked column-wise by Arrow compute and built without a JSON
    encoder call per row when the batch is plain text (the common case, and most of the import's
    speed); anything else (numbers, nulls, blank cells, images, an exact reader's Python lists,
    multi-label gold sets) goes through `_rows_to_records`, which also names the offending row."""
    if multi_label_names is None or not roles.gold:
        fast = _arrow_records(path, first_row, batch, roles, labels, seen)
        if fast is not None:
            return fast
    lists = {k: v.to_pylist() if isinstance(v, pa.Array) else v for k, v in batch.items()}
    return _rows_to_records(
        path, first_row, lists, roles, labels, seen, image_root, multi_label_names=multi_label_names
    )


def _arrow_records(
    path: Path,
    first_row: int,
    batch: dict[str, Any],
    roles: ColumnRoles,
    labels: set[str],
    seen: _SeenIds,
) -> list[tuple[str, str, str | None, str | None]] | None:
    """The records `_rows_to_records` would build, from Arrow arrays, or None where it must decide."""
    import pyarrow.compute as pc

    if roles.image or not roles.text:
        return None
    texts = [batch[name] for name in roles.text]
    raw_ids = batch[roles.id] if roles.id else None
    for v in texts if raw_ids is None else [*texts, raw_ids]:
        if (
            not _is_arrow_text(v)
            or v.null_count
            or not pc.all(pc.match_substring_regex(v, _NOT_BLANK)).as_py()
        ):
            return None
    gold = batch[roles.gold] if roles.gold else None
    if gold is not None:
        if not _is_arrow_text(gold) or pc.any(pc.match_substring_regex(gold, _NEEDS_STRIP)).as_py():
            return None
        if set(pc.unique(gold.drop_null()).to_pylist()) - labels - {""}:
            return None
    odumps = orjson.dumps
    # {"a":"<cell>","b":"<cell>"}: what orjson writes for cells that need no escape. Python
    # concatenation rather than Arrow's binary_join, whose first call maps 40 MB of kernels.
    columns = [v.to_pylist() for v in texts]
    keys = [odumps(name).decode() for name in roles.text]
    if len(columns) == 1:
        head = "{" + keys[0] + ':"'
        data_jsons = [head + v + '"}' for v in columns[0]]
    else:
        seps = ["{" + keys[0] + ':"', *('",' + k + ':"' for k in keys[1:])]
        data_jsons = [
            "".join([x for pair in zip(seps, row, strict=True) for x in pair]) + '"}'
            for row in zip(*columns, strict=True)
        ]
    needs: Any = None
    for v in texts:
        m = pc.match_substring_regex(v, _NEEDS_ESCAPE)
        needs = m if needs is None else pc.or_(needs, m)
    if pc.any(needs).as_py():
        for i in np.flatnonzero(needs.to_numpy(zero_copy_only=False)):
            data_jsons[i] = odumps({n: c[i] for n, c in zip(roles.text, columns, strict=True)}).decode()
    if raw_ids is None:
        ids = _content_ids(data_jsons, seen)
    else:
        ids = raw_ids.to_pylist()
        _check_user_ids(path, first_row, ids, roles, seen)
    golds = [None] * len(data_jsons) if gold is None else [g or None for g in gold.to_pylist()]
    return list(zip(ids, data_jsons, [None] * len(data_jsons), golds, strict=True))


def _check_user_ids(path: Path, first_row: int, ids: list[str], roles: ColumnRoles, seen: _SeenIds) -> None:
    """Refuse an id used twice in the file, naming the row; then remember this batch's ids."""
    if len(set(ids)) != len(ids) or not seen.isdisjoint(ids):
        local: set[str] = set()
        for i, item_id in enumerate(ids):
            if item_id in seen or item_id in local:
                raise UserError(
                    f"{path}: row {first_row + i}: duplicate id {item_id!r} in column {roles.id!r}"
                )
            local.add(item_id)
    seen.update(ids)


def _content_ids(data_jsons: list[str], seen: _SeenIds) -> list[str]:
    """Content-addressed ids: re-importing the same rows gives the same ids. Identical rows within
    one file stay distinct items (suffix ~2, ~3...)."""
    blake = hashlib.blake2b
    digests = b"".join([blake(d.encode(), digest_size=8).digest() for d in data_jsons])
    keys = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    # one hex() over the batch, cut in 16s by numpy: a .hex() per digest was a tenth of the import
    ids = np.frombuffer(digests.hex().encode(), dtype="S16").astype("U16").tolist()
    if not seen.add_hashes(keys, ids):
        ids = _dedupe_ids(ids, seen)
    return ids


def _rows_to_records(
    path: Path,
    first_row: int,
    batch: dict[str, list[Any]],
    roles: ColumnRoles,
    labels: set[str],
    seen: _SeenIds,
    image_root: Path,
    *,
    multi_label_names: Sequence[str] | None = None,
) -> list[tuple[str, str, str | None, str | None]]:
    """Validate a batch of rows and turn them into (item_id, data_json, image_path, gold) records.

    Column-wise list comprehensions rather than one loop with branches per row: import speed
    (100k+ rows/s) comes from here.
    """
    n = len(next(iter(batch.values()))) if batch else 0
    columns: list[tuple[str, list[str]]] = []
    for name in roles.text:
        values = batch[name]
        if not all(type(v) is str and v.strip() for v in values):
            for i, v in enumerate(values):
                if _is_blank(v):
                    raise UserError(f"{path}: row {first_row + i}: empty text in column {name!r}")
            values = [_as_text(v) for v in values]
        columns.append((name, values))
    image_paths: list[str | None] = [None] * n
    if roles.image:
        raw_images = batch[roles.image]
        base = path.parent
        for i, raw in enumerate(raw_images):
            if _is_blank(raw):
                raise UserError(f"{path}: row {first_row + i}: empty image path in column {roles.image!r}")
            image_paths[i] = _check_image(path, first_row + i, base / str(raw), image_root)
        columns.append((roles.image, [str(v) for v in raw_images]))
    # orjson: the stdlib encoder was a third of the import time.
    odumps = orjson.dumps
    if len(columns) == 1:
        key = odumps(columns[0][0]).decode() + ":"
        data_jsons = ["{" + key + odumps(v).decode() + "}" for v in columns[0][1]]
    else:
        names = [c for c, _ in columns]
        data_jsons = [
            odumps(dict(zip(names, row, strict=True))).decode()
            for row in zip(*(v for _, v in columns), strict=True)
        ]

    if roles.id:
        ids = []
        for i, raw_id in enumerate(batch[roles.id]):
            if _is_blank(raw_id):
                raise UserError(f"{path}: row {first_row + i}: empty id in column {roles.id!r}")
            ids.append(str(raw_id))
        _check_user_ids(path, first_row, ids, roles, seen)
    else:
        ids = _content_ids(data_jsons, seen)

    golds: list[str | None] = [None] * n
    if roles.gold and multi_label_names is not None:
        from actlabel import multilabel

        golds = [
            multilabel.parse(g, multi_label_names, f"{path}: row {first_row + i}: gold label set")
            for i, g in enumerate(batch[roles.gold])
        ]
    elif roles.gold:
        golds = [
            (g.strip() or None) if type(g) is str else (None if _is_blank(g) else str(g).strip())
            for g in batch[roles.gold]
        ]
        unknown = {g for g in golds if g is not None} - labels
        if unknown:
            i = next(i for i, g in enumerate(golds) if g in unknown)
            raise UserError(
                f"{path}: row {first_row + i}: gold label {golds[i]!r} is not one of the task's labels "
                f"({', '.join(sorted(labels)[:10])}{'...' if len(labels) > 10 else ''})"
            )
    return list(zip(ids, data_jsons, image_paths, golds, strict=True))


class _SeenIds:
    """The ids one import has used so far. Content-hash ids live in sorted uint64 arrays (8 bytes
    an id; a set of strings took ~100, the largest part of a million-row import's memory); user ids
    and ~k suffixes in a set. The arrays are chunks of at most CHUNK ids: merging every batch into
    one array copied it each time and held two copies at the peak (16 MB more at 1M rows)."""

    CHUNK = 1 << 18

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.other: set[str] = set()

    def _in_hashes(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(keys.shape, dtype=bool)
        for chunk in self.chunks:
            pos = np.minimum(np.searchsorted(chunk, keys), chunk.size - 1)
            found |= chunk[pos] == keys
        return found

    def add_hashes(self, keys: np.ndarray, ids: list[str]) -> bool:
        """Add a batch of content-hash ids; False (nothing added) if any repeats one already used."""
        order = np.sort(keys)
        if (order[1:] == order[:-1]).any() or self._in_hashes(order).any():
            return False
        if self.other and not self.other.isdisjoint(ids):
            return False
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last.size + order.size <= self.CHUNK:
            self.chunks[-1] = np.insert(last, np.searchsorted(last, order), order)
        else:
            self.chunks.append(order)
        return True

    def __contains__(self, item_id: str) -> bool:
        if item_id in self.other:
            return True
        if len(item_id) != 16:
            return False
        try:
            key = np.array([int(item_id, 16)], dtype=np.uint64)
        except ValueError:
            return False
        return bool(self._in_hashes(key)[0])

    def add(self, item_id: str) -> None:
        self.other.add(item_id)

    def update(self, item_ids: Iterable[str]) -> None:
        self.other.update(item_ids)

    def isdisjoint(self, item_ids: Iterable[str]) -> bool:
        return self.other.isdisjoint(item_ids)


def _dedupe_ids(ids: list[str], seen: _SeenIds) -> list[str]:
    out = []
    for item_id in ids:
        if item_id in seen:
            k = 2
            while f"{item_id}~{k}" in seen:
                k += 1
            item_id = f"{item_id}~{k}"
        seen.add(item_id)
        out.append(item_id)
    return out


def _check_image(table: Path, row_no: int, image: Path, root: Path) -> str:
    """The resolved path of a valid image inside `root`, else a one-line error naming the row."""
    where = f"{table}: row {row_no}"
    if not image.is_file():
        raise UserError(f"{where}: image {image} not found")
    resolved = image.resolve()
    if not resolved.is_relative_to(root):
        raise UserError(
            f"{where}: image {image} resolves to {resolved}, outside {root} (images must lie inside the "
            "table's folder, symlinks included; pass --image-root FOLDER to allow another folder)"
        )
    try:
        with resolved.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"{where}: image {image} unreadable ({exc.strerror})") from None
    if not _looks_like_image(head):
        raise UserError(f"{where}: {image} is not an image (unknown format)")
    problem = image_problem(resolved)
    if problem:
        raise UserError(f"{where}: image {image} {problem}")
    return str(resolved)


def _looks_like_image(head: bytes) -> bool:
    return (
        head.startswith(b"\x89PNG")
        or head.startswith(b"\xff\xd8\xff")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head.startswith(b"BM")
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or head[:4] in (b"II*\x00", b"MM\x00*")
    )


def _check_conflicts(
    store: Store, path: Path, records: list[tuple[str, str, str | None, str | None]]
) -> None:
    existing = store.existing_item_data([r[0] for r in records])
    for item_id, data_json, _image, gold in records:
        if item_id in existing:
            old_data, old_gold = existing[item_id]
            if old_data != data_json:
                raise UserError(f"{path}: item {item_id!r} is already stored with different content")
            if old_gold != gold and gold is not None:
                raise UserError(
                    f"{path}: item {item_id!r} is already stored with gold label {old_gold!r}, not {gold!r}"
                )


def _sniff_encoding(path: Path, encoding: str) -> str:
    """The encoding to read `path` with: a byte-order mark wins over the default UTF-8 (it is
    unambiguous), and a UTF-8 BOM is skipped so the first column keeps its name."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}") from None
    with path.open("rb") as fh:
        head = fh.read(4)
    if name == "utf-8" and head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if name in ("utf-8", "utf-32", "utf-32-le", "utf-32-be") and head.startswith(
        (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
    ):
        return "utf-32"
    if name in ("utf-8", "utf-16", "utf-16-le", "utf-16-be") and head.startswith(
        (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    ):
        return "utf-16"
    if name == "utf-8" and b"\x00" in head:  # UTF-8 text never holds NUL bytes; UTF-16 text is full of them
        guess = "utf-16-le" if head[1:2] == b"\x00" else "utf-16-be"
        raise UserError(
            f"{path}: this looks like UTF-16 text without a byte-order mark; pass --encoding {guess}"
        )
    return encoding


def _ascii_compatible(encoding: str) -> bool:
    """Whether a newline is the byte 0x0a in `encoding` (UTF-8, Latin-1...; not UTF-16/32), so a
    file can be split into lines before decoding and a bad byte blamed on its line."""
    return "\n".encode(encoding) == b"\n" and "a".encode(encoding) == b"a"


def _read_first_line(path: Path, encoding: str, limit: int = 1 << 24) -> str:
    """The first line, decoded alone: a text-mode read would decode a whole buffer and blame the
    header for a bad byte further down. Byte by byte, so multi-byte encodings (UTF-16) work too."""
    decoder = codecs.getincrementaldecoder(encoding)()
    out: list[str] = []
    with path.open("rb") as fh:
        for _ in range(limit):
            byte = fh.read(1)
            if not byte:
                out.append(decoder.decode(b"", final=True))
                break
            char = decoder.decode(byte)
            out.append(char)
            if char == "\n":
                break
    return "".join(out)


def _csv_batches(path: Path, encoding: str, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    try:
        first_line = _read_first_line(path, encoding)
        header = next(csv.reader([first_line.lstrip("\ufeff").rstrip("\r\n")], delimiter=delimiter), None)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: header is not valid {encoding} ({exc.reason}); pass --encoding") from None
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}") from None
    if not header:
        raise UserError(f"{path}: the file is empty (no header row)")
    if len(set(header)) != len(header):
        dupes = sorted({c for c in header if header.count(c) > 1})
        raise UserError(f"{path}: duplicate column names in the header: {', '.join(dupes)}")

    def batches() -> Iterator[tuple[int, dict]]:
        try:
            reader = pacsv.open_csv(
                path,
                # Arrow skips a UTF-8 BOM itself and decodes UTF-8 natively; other encodings go
                # through a Python transcoder.
                read_options=pacsv.ReadOptions(
                    encoding="utf8" if encoding == "utf-8-sig" else encoding,
                    block_size=ARROW_BLOCK_BYTES,
                ),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in header}, strings_can_be_null=False
                ),
            )
            yield from _regroup(reader)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise UserError(_locate_csv_problem(path, encoding, delimiter, len(header), exc)) from None

    return header, batches()


def _locate_csv_problem(path: Path, encoding: str, delimiter: str, ncols: int, exc: Exception) -> str:
    """pyarrow's errors carry no row number: re-read slowly to name the row (only on the error path)."""
    with path.open("rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (
            f"{path}: row {line - 1} (line {line}): not valid {encoding} text (byte 0x{raw[err.start]:02x}); "
            "pass --encoding (e.g. --encoding latin-1) if the file uses another encoding"
        )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    next(reader, None)
    try:
        for row_no, row in enumerate(reader, 1):
            if len(row) != ncols:
                return f"{path}: row {row_no} (line {reader.line_num}): expected {ncols} fields, found {len(row)}"
    except csv.Error as err:
        return f"{path}: row near line {reader.line_num}: malformed CSV ({err})"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{path}: malformed CSV ({first})"


def _jsonl_batches(path: Path, encoding: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    def lines() -> Iterator[tuple[int, str]]:
        if _ascii_compatible(encoding):
            # Split on bytes, decode per line: a bad byte is blamed on its own line.
            with path.open("rb") as fh:
                for line_no, raw in enumerate(fh, 1):
                    try:
                        yield line_no, raw.decode(encoding)
                    except UnicodeDecodeError as exc:
                        raise UserError(
                            f"{path}: line {line_no}: not valid {encoding} text ({exc.reason}); pass --encoding"
                        ) from None
            return
        line_no = 0
        try:
            with path.open(encoding=encoding, newline="") as fh:
                for line_no, line in enumerate(fh, 1):  # noqa: B007 - read in the except clause
                    yield line_no, line
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path}: near line {line_no + 1}: not valid {encoding} text ({exc.reason}); pass --encoding"
            ) from None

    columns: list[str] = []
    for line_no, line in lines():
        if line.strip():
            columns = list(_parse_json_line(path, line_no, line))
            break
    if not columns:
        raise UserError(f"{path}: the file has no JSON objects")

    def batches() -> Iterator[tuple[int, dict]]:
        cols: dict[str, list] = {c: [] for c in columns}
        start = 1
        row = 0
        for line_no, line in lines():
            if not line.strip():
                continue
            obj = _parse_json_line(path, line_no, line)
            row += 1
            for c in columns:
                cols[c].append(obj.get(c))
            if row - start + 1 >= BATCH_ROWS:
                yield start, cols
                cols = {c: [] for c in columns}
                start = row + 1
        if cols[columns[0]]:
            yield start, cols

    return columns, batches()


class _ArrowCannot(Exception):
    """The Arrow JSON reader cannot give exactly what the line-by-line reader gives for this file."""


def _jsonl_arrow_batches(path: Path, roles: ColumnRoles) -> Iterator[tuple[int, dict]]:
    """JSONL through Arrow's C++ reader (several times faster than a json.loads per line) when every
    role column holds strings or nulls; anything else raises _ArrowCannot and the caller re-reads
    the file with `_jsonl_batches`, which names the offending line."""
    import pyarrow.json as pajson

    needed = [c for c in dict.fromkeys([*roles.text, roles.image, roles.id, roles.gold]) if c is not None]
    schema = pa.schema([(c, pa.string()) for c in needed])
    try:
        reader = pajson.open_json(
            path,
            read_options=pajson.ReadOptions(block_size=ARROW_BLOCK_BYTES),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        yield from _regroup(reader)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _ArrowCannot(str(exc)) from None


def _parse_json_line(path: Path, line_no: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: line {line_no}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _parquet_batches(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    columns = pf.schema_arrow.names

    def batches() -> Iterator[tuple[int, dict]]:
        # one row group at a time: its decoded columns are the reader's memory
        yield from _regroup(pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False))

    return columns, batches()


def _regroup(record_batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, dict]]:
    """(first row number, column name -> Arrow array) in batches of about BATCH_ROWS rows: each
    batch costs a few fixed steps (one executemany, one merge of the seen ids), so batches of a few
    thousand rows, as small read blocks give, would spend the time there."""
    row = 1
    pending: list[pa.RecordBatch] = []
    size = 0

    def flush() -> tuple[int, dict]:
        table = pa.Table.from_batches(pending)
        return row, {name: table.column(name).combine_chunks() for name in table.schema.names}

    for record_batch in record_batches:
        pending.append(record_batch)
        size += record_batch.num_rows
        if size >= BATCH_ROWS:
            yield flush()
            row += size
            pending, size = [], 0
    if pending:
        yield flush()


def _import_image_folder(store: Store, folder: Path, root: Path) -> ImportResult:
    """An image folder: files at the top level have no gold label; each sub-folder is a class (gold label)."""
    labels = set(store.task.label_names)
    records = []
    for image in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = image.relative_to(folder)
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        gold = None
        if len(rel.parts) > 1:
            gold = rel.parts[0]
            if gold not in labels:
                raise UserError(f"{folder}: sub-folder {gold!r} is not one of the task's labels")
        records.append(
            (
                rel.as_posix(),
                json.dumps({"image": rel.as_posix()}),
                _check_image(folder, len(records) + 1, image, root),
                gold,
            )
        )
    if not records:
        raise UserError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    run_id = store.start_run(
        "import", {"path": str(folder.resolve()), "kind": "image-folder", "image_root": str(root)}
    )
    try:
        with store.transaction():
            if store.count_items():
                _check_conflicts(store, folder, records)
            new = store.insert_items(records, run_id)
            store.add_input_columns(["image"])
            _add_image_root(store, root)
            task = store.task
            if task.image_column is None:
                task.image_column = "image"
                store.set_task(task)
    except UserError as exc:
        store.finish_run(run_id, "failed", str(exc))
        raise
    except BaseException as exc:
        store.finish_run(run_id, "interrupted", f"{type(exc).__name__}: nothing of this import was stored")
        raise
    store.finish_run(run_id, "done", f"{len(records)} images, {new} new")
    return ImportResult(str(folder), len(records), new, len(records) - new, ["image"], [], "image")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def export_columns(store: Store) -> list[str]:
    return ["item_id", *store.input_columns(), *EXPORT_COLUMNS_AFTER_INPUT]


#: the columns that hold a label (a set in a multi-label project)
LABEL_COLUMNS = ("machine_label", "proposed_label", "human_label", "final_label", "gold_label")


def iter_export_batches(
    store: Store, batch: int = 20000, *, arrow_inputs: bool = False, sets: str = "list"
) -> Iterator[dict[str, Any]]:
    """The export table in column batches (DESIGN.md's columns, empty where a stage has not run).

    arrow_inputs: the input columns as Arrow string arrays, parsed from the stored JSON by Arrow's
    reader in one call per batch (a json loads per row was the slowest part of an export); the
    Python lists where some value is not a string.
    In a multi-label project the label columns carry sets: `sets="list"` gives Python lists (a
    list column in Parquet and JSONL), `sets="csv"` the `a|b` text CSV holds (`[]`: the empty
    set), `sets="stored"` the stored JSON text.
    """
    multi = store.task.multi_label
    if sets not in ("list", "csv", "stored"):
        raise ValueError(f"sets must be list, csv or stored, not {sets!r}")
    inputs = store.input_columns()
    names = export_columns(store)
    loads, dumps = orjson.loads, json.dumps
    for rows in store.iter_current(batch):
        (
            _rowid,
            item_id,
            data,
            gold,
            machine,
            confidence,
            _status,
            error_prob,
            proposed,
            rationale,
            selected,
            review_prob,
            human,
            _reviewer,
            _image,
        ) = (list(c) for c in zip(*rows, strict=True))
        out: dict[str, Any] = {"item_id": item_id}
        parsed_by_arrow = _input_arrays(data, inputs) if arrow_inputs else None
        if parsed_by_arrow is not None:
            out.update(parsed_by_arrow)
        else:
            parsed = [loads(d) for d in data]
            for c in inputs:
                values = [d.get(c) for d in parsed]
                out[c] = [v if v is None or type(v) is str else dumps(v) for v in values]
        out["machine_label"] = machine
        out["machine_confidence"] = confidence
        out["error_prob"] = error_prob
        out["proposed_label"] = proposed
        out["critic_rationale"] = rationale
        out["selected"] = selected
        # a review the design never drew (imported, or given outside the queue) is a human label
        # with pi = 1, outside the reweighted part (docs/statistics.md section 4)
        out["review_prob"] = [
            1.0 if h is not None and not s else p
            for s, p, h in zip(selected, review_prob, human, strict=True)
        ]
        out["reviewed"] = [0 if h is None else 1 for h in human]
        out["human_label"] = human
        out["final_label"] = [m if h is None else h for m, h in zip(machine, human, strict=True)]
        out["label_source"] = [
            "human" if h is not None else ("machine" if m is not None else None)
            for m, h in zip(machine, human, strict=True)
        ]
        out["gold_label"] = gold
        if multi and sets != "stored":
            from actlabel import multilabel

            convert = multilabel.decode if sets == "list" else multilabel.to_csv
            for c in LABEL_COLUMNS:
                out[c] = [None if v is None else convert(v) for v in out[c]]
        yield {c: out[c] for c in names}


def _input_arrays(data: list[str], inputs: list[str]) -> dict[str, pa.Array] | None:
    """The input columns of stored item JSON (one object a row, no raw newlines: JSON escapes
    them), or None where a value is not a string (the caller parses those rows in Python)."""
    import pyarrow.json as pajson

    if not inputs or not data:
        return None
    raw = "\n".join(data).encode()
    try:
        table = pajson.read_json(
            pa.BufferReader(raw),
            read_options=pajson.ReadOptions(block_size=len(raw) + 1, use_threads=False),
            parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([(c, pa.string()) for c in inputs]),
                unexpected_field_behavior="ignore",
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(data):
        return None
    return {c: table.column(c).combine_chunks() for c in inputs}


def _arrow_schema(columns: list[str], *, label_sets: bool = False) -> pa.Schema:
    types: dict[str, pa.DataType] = {
        "machine_confidence": pa.float64(),
        "error_prob": pa.float64(),
        "review_prob": pa.float64(),
        "selected": pa.int8(),
        "reviewed": pa.int8(),
    }
    if label_sets:
        types |= {c: pa.list_(pa.string()) for c in LABEL_COLUMNS}
    return pa.schema([(c, types.get(c, pa.string())) for c in columns])


def check_export_target(out: Path, *, force: bool) -> None:
    """An export never overwrites a file unless asked to: the file may be the only copy of
    earlier labels, or the user's own data."""
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file name")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such folder")


def export(store: Store, out: str | Path, *, force: bool = False) -> int:
    """Write the project's table to .csv, .jsonl or .parquet (by extension). Returns rows written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".parquet"):
        raise UserError(f"{out}: unknown export type {suffix!r} (use .csv, .jsonl or .parquet)")
    check_export_target(out, force=force)
    columns = export_columns(store)
    multi = store.task.multi_label
    schema = _arrow_schema(columns, label_sets=multi and suffix == ".parquet")
    sets = "csv" if suffix == ".csv" else "list"
    tmp = out.with_name(out.name + ".partial")
    n = 0
    try:
        if suffix == ".jsonl":
            with tmp.open("w", encoding="utf-8") as fh:
                odumps = orjson.dumps
                for batch in iter_export_batches(store, arrow_inputs=True, sets=sets):
                    batch = {k: v.to_pylist() if isinstance(v, pa.Array) else v for k, v in batch.items()}
                    keys = list(batch)
                    lines = [
                        odumps(dict(zip(keys, values, strict=True))).decode()
                        for values in zip(*batch.values(), strict=True)
                    ]
                    fh.write("\n".join(lines))
                    fh.write("\n")
                    n += len(lines)
        else:
            writer: Any = None
            try:
                for batch in iter_export_batches(store, arrow_inputs=True, sets=sets):
                    table = pa.table(batch, schema=schema)
                    if writer is None:
                        writer = (
                            pq.ParquetWriter(tmp, schema)
                            if suffix == ".parquet"
                            else pacsv.CSVWriter(tmp, schema)
                        )
                    writer.write_table(table)
                    n += table.num_rows
                if writer is None:  # no items: still write the header / schema
                    empty = pa.table({c: [] for c in columns}, schema=schema)
                    if suffix == ".parquet":
                        pq.write_table(empty, tmp)
                    else:
                        pacsv.write_csv(empty, tmp)
            finally:
                if writer is not None:
                    writer.close()
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
