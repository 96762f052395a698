"""`actlabel.label(df, ...)`: the whole ACT pipeline (annotate, critique, select) over a DataFrame.

    import pandas as pd, actlabel
    df = pd.DataFrame({"text": ["great phone", "awful service", "opens at 9"]})
    out = actlabel.label(df, labels=["positive", "negative", "neutral"], budget="20%")
    out[["text", "machine_label", "error_prob", "selected"]]

The rows go into a project folder (a temporary one, deleted afterwards, unless `directory` is given:
then it is kept, and a second call with the same folder pays for nothing already done, through the
stages' resume and the response cache). The result is a copy of the input with DESIGN.md's export
columns added (`item_id`, `machine_label`, `machine_confidence`, `error_prob`, `proposed_label`,
`critic_rationale`, `selected`, `review_prob`, `reviewed`, `human_label`, `final_label`,
`label_source`, `gold_label`), in the input's row order and index; a column of the same name in
the input is replaced in the copy (the input itself is never changed).

Hugging Face `datasets.Dataset` goes in and comes back as a Dataset (its features kept, the columns
added); without the `datasets` package only pandas is accepted.

Bad input (an empty frame, a missing column, a blank text, a gold label outside the label set, a
folder holding a project with other labels) is one UserError naming the row or column, raised
before anything is written.

Image columns may hold paths (relative to the working directory), PIL images, bytes, or the
`{"bytes": ..., "path": ...}` dicts of a Dataset's Image feature; the last three are written as
files under `<project>/images/` so the store keeps a path, as it does for every import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actlabel import data as data_io
from actlabel.errors import UserError
from actlabel.task import Example, Label

#: the columns `label()` adds, in DESIGN.md's order (the input columns are the caller's own)
OUTPUT_COLUMNS = ("item_id", *data_io.EXPORT_COLUMNS_AFTER_INPUT)
_INT_COLUMNS = ("selected", "reviewed")
_FLOAT_COLUMNS = ("machine_confidence", "error_prob", "review_prob")
INPUT_FILE = "frame-input.parquet"
IMAGE_FOLDER = "images"


@dataclass(frozen=True)
class _Roles:
    text: list[str]
    image: str | None
    id: str | None
    gold: str | None


def label(
    data: Any,
    *,
    labels: Sequence[str | Label] | Mapping[str, str],
    text: str | Sequence[str] | None = None,
    image: str | None = None,
    id: str | None = None,  # the same name as `actlabel import --id`
    gold: str | None = None,
    instructions: str = "",
    examples: Sequence[Example] = (),
    model: Any = None,
    base_url: str | None = None,
    critic_model: Any = None,
    strategy: str | None = None,
    multi_label: bool = False,
    budget: str | int | float = "10%",
    rule: str = "threshold",
    uniform: float = 0.05,
    seed: int = 0,
    concurrency: int | None = None,
    max_cost: float | None = None,
    directory: str | Path | None = None,
    progress: bool = True,
) -> Any:
    """Annotate, criticize and select `data` (a pandas DataFrame or a datasets.Dataset); return it labelled.

    labels: the label names, `Label`s, or a mapping name -> one-line description.
    text / image / id / gold: the columns with the text (one or several), image, stable item id and
        known-correct label, as `actlabel import` takes them; without `text` and `image` a column
        called `text` is used, or the only column there is.
    model / critic_model: a model spec (`openai/NAME` with `base_url`, `local/NAME`) or a ready
        backend object; None: the embedded default for the annotator, the annotator's model for the critic.
    strategy: the critic (None: `cot`, or `per-label` for a multi-label task).
    multi_label: each row takes a set of labels; the label columns come back as lists (gold: lists,
        `a|b` strings or JSON lists).
    budget: how many items to pick for human review: a count (500), a share (0.2 or "20%"), or "auto".
    directory: keep the project here (created if needed; an existing one must have the same labels
        and instructions, and its selection is kept rather than redrawn); None: a temporary folder.
    """
    frame, kind = _as_pandas(data)
    task_labels = _labels(labels)
    roles = _roles(frame, text, image, id, gold)
    names = [lab.name for lab in task_labels]
    _validate(frame, roles, names, multi_label=multi_label)
    budget_spec = _budget(budget, len(frame), fresh=directory is None or not Path(directory).exists())

    opts = {
        "model": model,
        "base_url": base_url,
        "critic_model": critic_model,
        "strategy": strategy or ("per-label" if multi_label else "cot"),
        "multi_label": multi_label,
        "budget": budget_spec,
        "rule": rule,
        "uniform": uniform,
        "seed": seed,
        "concurrency": concurrency,
        "max_cost": max_cost,
        "progress": progress,
        "kept": directory is not None,
    }

    def work() -> tuple[Any, dict[str, Any]]:
        if directory is not None:
            return _run(Path(directory), frame, roles, task_labels, instructions, examples, opts)
        with tempfile.TemporaryDirectory(prefix="actlabel-") as tmp:
            out, info = _run(Path(tmp) / "project", frame, roles, task_labels, instructions, examples, opts)
            info["directory"] = None
            return out, info

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        added, info = work()
    else:
        # A notebook runs its cells inside an event loop, where the stages' asyncio.run() cannot
        # start: run the pipeline in a worker thread with a loop of its own.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="actlabel") as pool:
            added, info = pool.submit(work).result()
    return _attach(data, kind, frame, added, info)


# ---- input ------------------------------------------------------------------------------------


def _as_pandas(data: Any) -> tuple[Any, str]:
    """(a pandas DataFrame of `data`, "pandas" | "dataset")."""
    module = type(data).__module__.split(".")[0]
    cls = type(data).__name__
    if module == "datasets":
        if cls != "Dataset":
            hint = " (pick a split, e.g. ds['train'])" if cls.endswith("Dict") else ""
            raise UserError(f"label() takes a datasets.Dataset, not a {cls}{hint}")
        return data.to_pandas(), "dataset"
    try:
        import pandas as pd
    except ModuleNotFoundError:
        raise UserError("label() needs pandas: pip install pandas") from None
    if isinstance(data, pd.DataFrame):
        return data, "pandas"
    raise UserError(
        f"label() takes a pandas DataFrame or a Hugging Face datasets.Dataset, not a {type(data).__name__}"
    )


def _labels(labels: Any) -> list[Label]:
    if isinstance(labels, str):
        raise UserError(f"labels must be a list of names, not the string {labels!r} (use a list)")
    if isinstance(labels, Mapping):
        return [Label(str(k), str(v or "")) for k, v in labels.items()]
    try:
        items = list(labels)
    except TypeError:
        raise UserError(f"labels must be a list of names, not {type(labels).__name__}") from None
    return [lab if isinstance(lab, Label) else Label(str(lab)) for lab in items]


def _roles(frame: Any, text: Any, image: str | None, id_col: str | None, gold: str | None) -> _Roles:
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise UserError(f"the DataFrame has duplicate column names: {', '.join(dupes)}")
    texts = [text] if isinstance(text, str) else list(text or [])
    shown = ", ".join(columns) if columns else "none"
    for role, name in [("image", image), ("id", id_col), ("gold", gold)] + [("text", t) for t in texts]:
        if name is not None and name not in columns:
            raise UserError(f"{role} column {name!r} not found (columns: {shown})")
    if not texts and image is None:
        texts = data_io.default_text_columns(columns, id_col, gold)
        if texts is None:
            raise UserError(f"say which column holds the text with text=... (columns: {shown})")
    return _Roles(texts, image, id_col, gold)


def _where(frame: Any, i: int) -> str:
    index = frame.index[i]
    return f"row {i + 1}" + ("" if index == i else f" (index {index!r})")


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ModuleNotFoundError:
        pass
    return isinstance(value, str) and not value.strip()


def _validate(frame: Any, roles: _Roles, names: list[str], *, multi_label: bool = False) -> None:
    """Everything import would refuse, named by DataFrame row, before anything is written."""
    from actlabel.task import Task

    Task(labels=[Label(n) for n in names], multi_label=multi_label)  # a bad label set fails here
    if len(frame) == 0:
        raise UserError("the DataFrame is empty: nothing to label")
    for column in roles.text:
        for i, value in enumerate(frame[column].tolist()):
            if _blank(value):
                raise UserError(f"{_where(frame, i)}: empty text in column {column!r}")
    if roles.image:
        for i, value in enumerate(frame[roles.image].tolist()):
            if _blank(value) or (
                isinstance(value, Mapping) and not (value.get("bytes") or value.get("path"))
            ):
                raise UserError(f"{_where(frame, i)}: no image in column {roles.image!r}")
    if roles.id:
        seen: set[str] = set()
        for i, value in enumerate(frame[roles.id].tolist()):
            if _blank(value):
                raise UserError(f"{_where(frame, i)}: empty id in column {roles.id!r}")
            if str(value) in seen:
                raise UserError(f"{_where(frame, i)}: duplicate id {str(value)!r} in column {roles.id!r}")
            seen.add(str(value))
    if roles.gold and multi_label:
        from actlabel import multilabel

        for i, value in enumerate(frame[roles.gold].tolist()):
            multilabel.parse(value, names, f"{_where(frame, i)}: gold label set in column {roles.gold!r}")
    elif roles.gold:
        allowed = set(names)
        for i, value in enumerate(frame[roles.gold].tolist()):
            if _blank(value):
                continue
            if str(value).strip() not in allowed:
                raise UserError(
                    f"{_where(frame, i)}: gold label {str(value).strip()!r} in column {roles.gold!r} is not one "
                    f"of the labels ({', '.join(names[:10])}{'...' if len(names) > 10 else ''})"
                )


def _budget(budget: Any, rows: int, *, fresh: bool) -> str:
    """The budget as `select` takes it, checked now rather than after the model calls were paid for."""
    from actlabel.select import budget_from_spec

    if isinstance(budget, bool):
        raise UserError(f"budget must be a count, a share or 'auto', not {budget!r}")
    if isinstance(budget, float):
        if not 0 <= budget <= 1:
            raise UserError(f"budget {budget} as a share must be between 0 and 1 (or give a count or '20%')")
        spec = f"{budget * 100:g}%"
    else:
        spec = str(budget).strip()
    if spec.lower() != "auto":
        try:
            # A kept project may hold more items than this frame: there only the form is checked.
            budget_from_spec(spec, rows if fresh else 10**12)
        except ValueError as exc:
            raise UserError(f"budget {spec}: {exc}") from None
    return spec


# ---- the project ------------------------------------------------------------------------------


def _open_project(
    root: Path,
    task_labels: list[Label],
    instructions: str,
    examples: Sequence[Example],
    *,
    multi_label: bool = False,
):
    from actlabel.project import Project
    from actlabel.store import DB_NAME

    if not (root / DB_NAME).exists():
        return Project.init(
            root, task_labels, instructions=instructions, examples=list(examples), multi_label=multi_label
        )
    project = Project(root)
    task = project.task
    try:
        if task.multi_label != multi_label:
            kind = "a multi-label" if task.multi_label else "a single-label"
            raise UserError(
                f"{root} is {kind} project: pass multi_label={task.multi_label} or use another directory"
            )
        if task.label_names != [lab.name for lab in task_labels]:
            raise UserError(
                f"{root} is a project with the labels {', '.join(task.label_names)}, not "
                f"{', '.join(lab.name for lab in task_labels)}: use another directory"
            )
        if instructions and task.instructions != instructions:
            raise UserError(f"{root} is a project with other instructions: use another directory")
    except BaseException:
        project.close()
        raise
    return project


def _check_roles(root: Path, task: Any, roles: _Roles) -> None:
    if task.text_columns and roles.text and list(task.text_columns) != roles.text:
        raise UserError(
            f"{root} holds items with the text columns {', '.join(task.text_columns)}, "
            f"not {', '.join(roles.text)}: use another directory"
        )
    if task.image_column and roles.image and task.image_column != roles.image:
        raise UserError(
            f"{root} holds items with the image column {task.image_column!r}, not {roles.image!r}"
        )


def _image_file(root: Path, value: Any) -> str:
    """A path for one image cell: a path as given (made absolute), anything else written under images/."""
    if isinstance(value, str | Path):
        return str(Path(value).expanduser().resolve())
    raw: bytes | None = None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            raw = bytes(value["bytes"])
        else:
            return str(Path(str(value["path"])).expanduser().resolve())
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        raw = buffer.getvalue()
    if raw is None:
        raise UserError(f"an image cell holds a {type(value).__name__}; use a path, PIL image or bytes")
    folder = root / IMAGE_FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / f"{hashlib.blake2b(raw, digest_size=12).hexdigest()}{_suffix(raw)}"
    if not path.exists():
        path.write_bytes(raw)
    return str(path)


def _image_root(paths: list[str]) -> str:
    """The folder holding every image of the frame: import admits images only inside one root
    (the review app serves nothing outside it), and these are the caller's own files."""
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def _suffix(raw: bytes) -> str:
    if raw.startswith(b"\x89PNG"):
        return ".png"
    if raw.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        return ".webp"
    return ".img"  # import's own check then names the row that holds no image


def _input_table(
    root: Path, frame: Any, roles: _Roles, names: Sequence[str] | None = None
) -> dict[str, list]:
    """The role columns as import reads them: text as str, images as paths, ids and gold as str or None."""
    table: dict[str, list] = {}
    for column in roles.text:
        table[column] = [v if type(v) is str else str(v) for v in frame[column].tolist()]
    if roles.image:
        table[roles.image] = [_image_file(root, v) for v in frame[roles.image].tolist()]
    if roles.id:
        table[roles.id] = [str(v) for v in frame[roles.id].tolist()]
    if roles.gold and names is not None:  # multi-label: the stored JSON list, which import reads
        from actlabel import multilabel

        table[roles.gold] = [
            multilabel.parse(v, names, f"row {i}") for i, v in enumerate(frame[roles.gold].tolist())
        ]
    elif roles.gold:
        table[roles.gold] = [None if _blank(v) else str(v).strip() for v in frame[roles.gold].tolist()]
    return table


def _run(
    root: Path,
    frame: Any,
    roles: _Roles,
    task_labels: list[Label],
    instructions: str,
    examples: Sequence[Example],
    opts: dict[str, Any],
) -> tuple[dict[str, list], dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    project = _open_project(root, task_labels, instructions, examples, multi_label=opts["multi_label"])
    try:
        # one lock for the whole call: the stages below nest inside it, so no other writer can
        # slip in between this import and the annotation of its rows
        _check_roles(root, project.task, roles)
        with project.writing("label (DataFrame)") as store:
            multi = store.task.label_names if store.task.multi_label else None
            table = _input_table(root, frame, roles, multi)
            path = root / INPUT_FILE
            pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in table.items()}), path)
            where = {"image_root": _image_root(table[roles.image])} if roles.image else {}
            project.import_file(
                path,
                text_columns=roles.text,
                image_column=roles.image,
                id_column=roles.id,
                gold_column=roles.gold,
                **where,
            )
            item_ids = _item_ids(store, table, roles)

            shared = {
                "concurrency": opts["concurrency"],
                "max_cost": opts["max_cost"],
                "progress": opts["progress"],
            }
            model, critic = opts["model"], opts["critic_model"]
            if opts["multi_label"]:
                critic = None  # the per-label critic reads the annotator's probabilities: no model
            elif critic is None and _model_kwargs(model).get("backend") is not None:
                critic = model  # self-criticism, as with a spec: its name alone would not load it again
            annotated = project.annotate(base_url=opts["base_url"], **_model_kwargs(model), **shared)
            criticized = project.critique(
                base_url=opts["base_url"],
                strategy=opts["strategy"],
                seed=opts["seed"],
                **_model_kwargs(critic),
                **shared,
            )
            _check_critique(project, criticized, kept=opts["kept"])
            summary = [str(annotated), str(criticized)]
            if store.count("selections") == 0:
                selected = project.select(
                    budget=opts["budget"], rule=opts["rule"], uniform=opts["uniform"], seed=opts["seed"]
                )
                summary.append(str(selected))
            else:
                summary.append(
                    f"kept the selection already in {root} (select again with `actlabel select {root}`)"
                )
            columns = _output_columns(store, item_ids)
        return columns, {"directory": str(root), "summary": summary}
    finally:
        project.close()


def _check_critique(project: Any, result: Any, *, kept: bool) -> None:
    """Selection needs an error probability for every labelled item: say why some have none."""
    if not getattr(result, "failed", 0) and not getattr(result, "stopped", None):
        return
    reasons = project.failure_reasons("critiques", result.run_id, 1) if result.run_id else []
    why = f" (most common: {reasons[0][1]})" if reasons else ""
    stopped = f"; stopped: {result.stopped}" if result.stopped else ""
    where = (
        f"call label() again to retry only those (the rest is kept in {project.root})"
        if kept
        else "pass directory=... to keep the work done and retry only those"
    )
    raise UserError(f"the critic failed on {result.failed} items{why}{stopped}: {where}")


def _model_kwargs(model: Any) -> dict[str, Any]:
    if model is None or isinstance(model, str):
        return {"model": model}
    if hasattr(model, "chat") and hasattr(model, "spec"):
        return {"backend": model}
    raise UserError(
        f"model must be a spec such as 'openai/NAME' or a backend object, not {type(model).__name__}"
    )


def _item_ids(store: Any, table: dict[str, list], roles: _Roles) -> list[str]:
    """The item id of every row: the id column, or the stored item with the same content.

    Matching by content rather than recomputing import's id rule keeps this right whatever that
    rule is; identical rows map, in order, onto the distinct items import made of them.
    """
    if roles.id:
        return list(table[roles.id])
    content = roles.text + ([roles.image] if roles.image else [])
    by_content: dict[tuple, list[str]] = {}
    for item in store.iter_items():
        by_content.setdefault(tuple(item.data.get(c) for c in content), []).append(item.item_id)
    taken: dict[tuple, int] = {}
    ids = []
    for row in zip(*(table[c] for c in content), strict=True):
        k = taken.get(row, 0)
        candidates = by_content.get(row, [])
        if k >= len(candidates):  # import stored every row or raised: this is a bug, not bad input
            raise RuntimeError(f"row content {row!r} was not found in the project after import")
        ids.append(candidates[k])
        taken[row] = k + 1
    return ids


def _output_columns(store: Any, item_ids: list[str]) -> dict[str, list]:
    wanted = set(item_ids)
    by_id: dict[str, tuple] = {}
    for batch in data_io.iter_export_batches(store):
        ids = batch["item_id"]
        cols = [batch[c] for c in OUTPUT_COLUMNS]
        for j, item_id in enumerate(ids):
            if item_id in wanted:
                by_id[item_id] = tuple(col[j] for col in cols)
    missing = [i for i in item_ids if i not in by_id]
    if missing:  # import stored every row or raised: this would be a bug, not bad input
        raise RuntimeError(f"{len(missing)} rows were not found in the project after import")
    rows = [by_id[i] for i in item_ids]
    return {c: [r[k] for r in rows] for k, c in enumerate(OUTPUT_COLUMNS)}


# ---- output -----------------------------------------------------------------------------------


def _attach(data: Any, kind: str, frame: Any, added: dict[str, list], info: dict[str, Any]) -> Any:
    if kind == "dataset":
        out = data.remove_columns([c for c in OUTPUT_COLUMNS if c in data.column_names])
        for name in OUTPUT_COLUMNS:
            out = out.add_column(name, added[name])
        return out
    import pandas as pd

    out = frame.copy()
    for name in OUTPUT_COLUMNS:
        values = added[name]
        if name in _INT_COLUMNS:
            out[name] = pd.array(values, dtype="Int8")
        elif name in _FLOAT_COLUMNS:
            out[name] = pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
        else:
            out[name] = pd.array(values, dtype="object")
    out.attrs["actlabel"] = info
    return out
