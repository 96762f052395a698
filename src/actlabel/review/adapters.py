"""Review in Label Studio or Argilla instead of the built-in app: export the selected items, import the answers.

Export writes the selected items that have no human review yet, most suspicious first, with the
machine label as a pre-filled suggestion and the critic's proposal and rationale alongside. Import
reads the tool's own export file back into `reviews` (append-only, the latest record wins), in one
transaction: a bad task or record anywhere stops the import with a one-line error and stores nothing.

Formats (from the tools' documentation; the assumptions are spelled out where a choice was made):

Label Studio (https://labelstud.io/guide/tasks, /guide/export):
- export: a JSON list of tasks `{"data": {...}, "predictions": [...]}` plus a labelling config
  `<OUT stem>.labelstudio.xml` next to it (paste it into the project's Labeling Interface).
  `data` holds `item_id`, `text` (the text columns joined by newlines), `image` (see below),
  `machine_label`, `proposed_label`, `error_prob`, `critic_note`. The prediction is a `choices`
  result from `label` to `text` (or `image` for image-only tasks) with
  `score = 1 - error_prob`: Label Studio treats the score as the prediction's confidence, so sorting
  the task list by prediction score ascending shows the most suspicious items first.
  Images: `image` is `/data/local-files/?d=<absolute path without the leading slash>`, which Label
  Studio serves when started with `LOCAL_FILES_SERVING_ENABLED=true` and
  `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/` and a Local Storage covering the image folder;
  `image_path` keeps the plain path.
- import: Label Studio's "JSON" export: a list of tasks with `data.item_id` and
  `annotations[]` of `{"result": [{"type": "choices", "from_name": "label",
  "value": {"choices": [LABEL]}}], "was_cancelled": bool, "completed_by": ID or {"id", "email"},
  "created_at", "updated_at", "lead_time": seconds}`. Cancelled (skipped) annotations and
  annotations without a choice are ignored; of the rest, the latest (`updated_at`, then
  `created_at`, then position) is the task's answer. `completed_by` becomes the reviewer
  (`labelstudio-user-<id>`, or the e-mail when the export expands the user), `lead_time` the duration.

Argilla 2.x (https://docs.argilla.io/latest/how_to_guides/record/):
- export: records as in `rg.Record(id=..., fields=..., metadata=..., suggestions=[rg.Suggestion(...)])`,
  as a JSON list (or JSONL when OUT ends in `.jsonl`): `{"id": item_id, "fields": {"text": ...,
  "critic": ...} (+ "image"), "metadata": {"item_id", "machine_label", "proposed_label",
  "error_prob", "review_prob"}, "suggestions": [{"question_name": "label", "value": machine_label,
  "score": 1 - error_prob, "agent": "actlabel-machine"}]}`. The dataset needs TextFields `text` and
  `critic` (ImageField `image` for images), a LabelQuestion `label` with the task's labels, and
  metadata properties for the metadata keys you want to filter on.
- import: records as `Dataset.records.to_json()` / `to_list(flatten=False)` writes them
  (`"responses": {"label": [{"value": LABEL, "user_id": ..., "status": "submitted"}]}`), or as the
  REST API returns them (`"responses": [{"values": {"label": {"value": LABEL}}, "status":
  "submitted", "user_id": ..., "updated_at": ...}]`); a JSON list, `{"records": [...]}`, or JSONL.
  Only submitted responses count (a response without a status is taken as submitted); the latest
  (`updated_at`, then position) is the record's answer. The item is found by `metadata.item_id`,
  else the record `id`.

Importing the same file twice adds nothing: an answer equal to the item's current review (same
reviewer, label and source) is not stored again, while a changed answer is appended and wins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from actlabel.errors import UserError
from actlabel.review.queue import ReviewItem, load_items, pending_rowids
from actlabel.store import Store

FORMATS = ("labelstudio", "argilla")
QUESTION = "label"  # the Choices / LabelQuestion name in both tools
MODEL_VERSION = "actlabel-machine"


# ---- export ---------------------------------------------------------------------------------


def export_for_tool(store: Store, out: str | Path, fmt: str) -> int:
    """Write the selected, not yet reviewed items for Label Studio or Argilla; returns how many."""
    if fmt not in FORMATS:
        raise UserError(f"unknown review tool format {fmt!r} (use one of {', '.join(FORMATS)})")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file name such as tasks.json")
    items = load_items(store, pending_rowids(store))
    if store.task.multi_label:  # the tools take a set as a list of choices
        from actlabel import multilabel

        items = [
            dataclasses.replace(it, machine_label=multilabel.decode(it.machine_label),
                                proposed_label=multilabel.decode(it.proposed_label))
            for it in items
        ]  # fmt: skip
    if fmt == "labelstudio":
        has_text = any(it.fields for it in items) or not any(it.image_path for it in items)
        has_image = any(it.image_path for it in items)
        tasks = [_labelstudio_task(it, "text" if has_text else "image") for it in items]
        _write_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1))
        _write_atomic(
            labelstudio_config_path(out),
            labelstudio_config(store.task.labels, has_text, has_image, multi_label=store.task.multi_label),
        )
    else:
        records = [_argilla_record(it) for it in items]
        if out.suffix.lower() in (".jsonl", ".ndjson"):
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            body = json.dumps(records, ensure_ascii=False, indent=1)
        _write_atomic(out, body)
    return len(items)


def labelstudio_config_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.labelstudio.xml")


def add_label_question(view: ET.Element, labels: list[Any], target: str, *, multi_label: bool) -> None:
    """The `label` question of a Label Studio view: one choice per label, its description as the
    hint; checkboxes (`choice="multiple"`) for a multi-label task."""
    choices = ET.SubElement(
        view,
        "Choices",
        name=QUESTION,
        toName=target,
        choice="multiple" if multi_label else "single",
        showInLine="true",
    )
    for label in labels:
        attrs = {"value": label.name}
        if label.description:
            attrs["hint"] = label.description
        ET.SubElement(choices, "Choice", attrs)


def labelstudio_config(
    labels: list[Any], has_text: bool = True, has_image: bool = False, *, multi_label: bool = False
) -> str:
    """The labelling interface: the item, the critic's note, one question `label` (single choice,
    or `choice="multiple"` for a multi-label task)."""
    view = ET.Element("View")
    if has_text:
        ET.SubElement(view, "Text", name="text", value="$text")
    if has_image:
        ET.SubElement(view, "Image", name="image", value="$image")
    ET.SubElement(view, "Header", value="Machine label and critic")
    ET.SubElement(view, "Text", name="critic", value="$critic_note")
    add_label_question(view, labels, "text" if has_text else "image", multi_label=multi_label)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def _shown(label: Any) -> str:
    if isinstance(label, list):  # a multi-label set
        return ", ".join(label) or "(no labels)"
    return label or "(none)"


def _critic_note(it: ReviewItem) -> str:
    parts = [f"machine label: {_shown(it.machine_label)}"]
    if it.proposed_label is not None:
        parts.append(f"critic proposes: {_shown(it.proposed_label)}")
    if it.error_prob is not None:
        parts.append(f"error probability {it.error_prob:.2f}")
    note = "; ".join(parts)
    return f"{note}. {it.rationale}" if it.rationale else note


def _confidence(it: ReviewItem) -> float | None:
    return None if it.error_prob is None else round(1.0 - float(it.error_prob), 6)


def _labelstudio_task(it: ReviewItem, to_name: str) -> dict[str, Any]:
    data: dict[str, Any] = {"item_id": it.item_id}
    if it.fields:
        data["text"] = it.text
    if it.image_path:
        data["image"] = "/data/local-files/?d=" + quote(it.image_path.lstrip("/"))
        data["image_path"] = it.image_path
    data |= {
        "machine_label": it.machine_label,
        "proposed_label": it.proposed_label,
        "error_prob": it.error_prob,
        "critic_note": _critic_note(it),
    }
    task: dict[str, Any] = {"data": data}
    if it.machine_label is not None:
        prediction: dict[str, Any] = {
            "model_version": MODEL_VERSION,
            "result": [
                {
                    "from_name": QUESTION,
                    "to_name": to_name,
                    "type": "choices",
                    "value": {
                        "choices": it.machine_label
                        if isinstance(it.machine_label, list)
                        else [it.machine_label]
                    },
                }
            ],
        }
        if (score := _confidence(it)) is not None:
            prediction["score"] = score
        task["predictions"] = [prediction]
    return task


def _argilla_record(it: ReviewItem) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if it.fields:
        fields["text"] = it.text
    if it.image_path:
        fields["image"] = it.image_path
    fields["critic"] = _critic_note(it)
    metadata = {
        "item_id": it.item_id,
        "machine_label": it.machine_label,
        "proposed_label": it.proposed_label,
        "error_prob": it.error_prob,
        "review_prob": it.review_prob,
    }
    record: dict[str, Any] = {
        "id": it.item_id,
        "fields": fields,
        # Argilla rejects null metadata values: leave unknown ones out.
        "metadata": {k: v for k, v in metadata.items() if v is not None},
        "suggestions": [],
    }
    if it.machine_label is not None:
        suggestion: dict[str, Any] = {
            "question_name": QUESTION,
            "value": it.machine_label,
            "agent": MODEL_VERSION,
        }
        if (score := _confidence(it)) is not None:
            suggestion["score"] = score
        record["suggestions"].append(suggestion)
    return record


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failed export never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReviewsResult:
    path: str
    fmt: str
    reviews: int  # new review records stored
    unchanged: int  # answers equal to the item's current review, not stored again
    skipped: int  # cancelled / discarded / draft answers
    unanswered: int  # tasks or records without a usable answer
    not_selected: int  # stored reviews of items that were not selected for review

    def __str__(self) -> str:
        line = f"imported {self.reviews} reviews from {self.path} ({self.fmt})"
        extra = []
        if self.unchanged:
            extra.append(f"{self.unchanged} already stored")
        if self.skipped:
            extra.append(f"{self.skipped} cancelled, discarded or draft answers skipped")
        if self.unanswered:
            extra.append(f"{self.unanswered} without an answer")
        if self.not_selected:
            extra.append(f"{self.not_selected} of items not selected for review")
        return line + (f"; {', '.join(extra)}" if extra else "")


@dataclass(frozen=True)
class _Answer:
    where: str  # "task 12" / "record 3", for error messages
    item_id: str
    label: str
    reviewer: str
    duration_ms: int | None


def import_from_tool(store: Store, file: str | Path, fmt: str) -> ImportReviewsResult:
    """Read a Label Studio JSON export or Argilla records back into reviews (one transaction)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown review tool format {fmt!r} (use one of {', '.join(FORMATS)})")
    path = Path(file)
    labels = task_labels(store)
    if fmt == "labelstudio":
        answers, skipped, unanswered = _labelstudio_answers(path, _read_json(path, jsonl_ok=False), labels)
    else:
        answers, skipped, unanswered = _argilla_answers(path, _read_json(path, jsonl_ok=True), labels)

    rowids: dict[str, int] = {}
    for answer in answers:
        if answer.item_id in rowids:
            raise UserError(f"{path}: {answer.where}: item {answer.item_id!r} appears twice")
        rowid = store.rowid_of(answer.item_id)
        if rowid is None:
            raise UserError(f"{path}: {answer.where}: item {answer.item_id!r} is not in this project")
        rowids[answer.item_id] = rowid

    current = store.latest("reviews", ("reviewer", "label", "source"), rowids=list(rowids.values()))
    selected = store.selected_now(list(rowids.values()))
    records, unchanged, not_selected = [], 0, 0
    for answer in answers:
        rowid = rowids[answer.item_id]
        if current.get(rowid) == (answer.reviewer, answer.label, fmt):
            unchanged += 1
            continue
        not_selected += rowid not in selected
        records.append(
            {
                "item_rowid": rowid,
                "reviewer": answer.reviewer,
                "label": answer.label,
                "source": fmt,
                "duration_ms": answer.duration_ms,
            }
        )
    if records:
        store.add_reviews(records)  # one transaction
    return ImportReviewsResult(str(path), fmt, len(records), unchanged, skipped, unanswered, not_selected)


def _read_json(path: Path, *, jsonl_ok: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an export file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not (jsonl_ok and len(lines) > 1 and lines[0].lstrip().startswith("{")):
            raise UserError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
    return out


def _time_key(entry: dict[str, Any], position: int) -> tuple[str, str, int]:
    # ISO-8601 timestamps from one export share a format, so they order correctly as strings.
    return (
        str(entry.get("updated_at") or ""),
        str(entry.get("created_at") or entry.get("inserted_at") or ""),
        position,
    )


class LabelSets(frozenset):
    """The label set of a multi-label task, in the task's order: answers are sets of these
    (Label Studio `choice="multiple"`, Argilla multi-label questions) stored in canonical form."""

    names: tuple[str, ...]

    def __new__(cls, names: Any) -> LabelSets:
        self = super().__new__(cls, names)
        self.names = tuple(names)
        return self


def task_labels(store: Store) -> set[str]:
    """What answers are checked against: the labels, or LabelSets for a multi-label task."""
    task = store.task
    return LabelSets(task.label_names) if task.multi_label else set(task.label_names)


def _label_from(value: Any, labels: set[str], path: Path, where: str) -> str:
    if isinstance(labels, LabelSets):
        from actlabel import multilabel

        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{path}: {where}: the answer {value!r} is not a list of label names")
        stored = multilabel.parse(value, labels.names, f"{path}: {where}")
        assert stored is not None  # a list is never blank
        return stored
    if isinstance(value, list):
        if len(value) != 1:
            raise UserError(f"{path}: {where}: expected exactly one label, got {len(value)}")
        value = value[0]
    if not isinstance(value, str):
        raise UserError(f"{path}: {where}: the answer {value!r} is not a label name")
    if value not in labels:
        raise UserError(f"{path}: {where}: label {value!r} is not one of the task's labels")
    return value


def _duration_ms(seconds: Any) -> int | None:
    if isinstance(seconds, int | float) and seconds >= 0:
        return int(round(seconds * 1000))
    return None


def _labelstudio_answers(path: Path, tasks: Any, labels: set[str]) -> tuple[list[_Answer], int, int]:
    if not isinstance(tasks, list):
        raise UserError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export)")
    answers, skipped, unanswered = [], 0, 0
    for n, task in enumerate(tasks, 1):
        where = f"task {task.get('id', f'#{n}')}" if isinstance(task, dict) else f"task #{n}"
        if not isinstance(task, dict):
            raise UserError(f"{path}: {where}: not a JSON object")
        data = task.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("item_id"), str):
            raise UserError(
                f"{path}: {where}: no data.item_id (export the tasks that `actlabel export` wrote)"
            )
        annotations = task.get("annotations")
        if annotations is None:
            raise UserError(
                f"{path}: {where}: no `annotations` list (export from Label Studio as JSON, not JSON-MIN or CSV)"
            )
        if not isinstance(annotations, list):
            raise UserError(f"{path}: {where}: `annotations` is not a list")
        candidates = []
        for pos, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise UserError(f"{path}: {where}: annotation {pos + 1} is not a JSON object")
            if ann.get("was_cancelled"):
                skipped += 1
                continue
            choice = _labelstudio_choice(ann, path, f"{where}, annotation {ann.get('id', pos + 1)}", labels)
            if choice is not None:
                candidates.append((_time_key(ann, pos), ann, choice))
        if not candidates:
            unanswered += 1
            continue
        _, ann, label = max(candidates, key=lambda c: c[0])
        answers.append(
            _Answer(
                where,
                data["item_id"],
                label,
                _labelstudio_user(ann.get("completed_by")),
                _duration_ms(ann.get("lead_time")),
            )
        )
    return answers, skipped, unanswered


def _labelstudio_choice(ann: dict[str, Any], path: Path, where: str, labels: set[str]) -> str | None:
    result = ann.get("result")
    if not isinstance(result, list):
        raise UserError(f"{path}: {where}: `result` is not a list")
    choices = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"]
    ours = [r for r in choices if r.get("from_name") == QUESTION] or choices
    if not ours:
        return None
    if len(ours) > 1:
        raise UserError(
            f"{path}: {where}: {len(ours)} choices results; expected one question named {QUESTION!r}"
        )
    value = ours[0].get("value")
    if not isinstance(value, dict) or "choices" not in value:
        raise UserError(f"{path}: {where}: the choices result has no value.choices")
    return _label_from(value["choices"], labels, path, where)


def _labelstudio_user(user: Any) -> str:
    if isinstance(user, dict):
        if user.get("email"):
            return str(user["email"])
        user = user.get("id")
    if isinstance(user, int | str) and str(user):
        return f"labelstudio-user-{user}"
    return "labelstudio"


def _argilla_records(path: Path, data: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    elif isinstance(data, dict) and ("fields" in data or "responses" in data):
        data = [data]  # a JSONL file with a single record parses as one object
    if not isinstance(data, list):
        raise UserError(f'{path}: expected Argilla records (a JSON list, {{"records": [...]}} or JSONL)')
    for n, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {n}: not a JSON object")
        yield n, record


def _argilla_answers(path: Path, data: Any, labels: set[str]) -> tuple[list[_Answer], int, int]:
    answers, skipped, unanswered = [], 0, 0
    for n, record in _argilla_records(path, data):
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        item_id = metadata.get("item_id", record.get("id"))
        where = f"record {n}" + (f" ({item_id})" if item_id is not None else "")
        if not isinstance(item_id, str):
            raise UserError(f"{path}: {where}: no metadata.item_id or id naming the item")
        responses = record.get("responses")
        candidates = []  # (time key, value, user_id)
        if isinstance(responses, dict):  # SDK shape: question -> [{value, user_id, status}]
            question = QUESTION if QUESTION in responses or len(responses) != 1 else next(iter(responses))
            entries = responses.get(question) or []
            if not isinstance(entries, list):
                raise UserError(f"{path}: {where}: responses.{question} is not a list")
            for pos, r in enumerate(entries):
                if not isinstance(r, dict) or "value" not in r:
                    raise UserError(f"{path}: {where}: response {pos + 1} has no value")
                if r.get("status", "submitted") != "submitted":
                    skipped += 1
                    continue
                candidates.append((_time_key(r, pos), r["value"], r.get("user_id")))
        elif isinstance(responses, list):  # REST API shape: [{values: {question: {value}}, status, user_id}]
            for pos, r in enumerate(responses):
                if not isinstance(r, dict) or not isinstance(r.get("values"), dict):
                    raise UserError(f"{path}: {where}: response {pos + 1} has no `values` object")
                if r.get("status", "submitted") != "submitted":
                    skipped += 1
                    continue
                values = r["values"]
                question = QUESTION if QUESTION in values or len(values) != 1 else next(iter(values))
                answer = values.get(question)
                if answer is None:
                    continue
                if not isinstance(answer, dict) or "value" not in answer:
                    raise UserError(f"{path}: {where}: response {pos + 1}: values.{question} has no value")
                candidates.append((_time_key(r, pos), answer["value"], r.get("user_id")))
        elif responses is not None:
            raise UserError(f"{path}: {where}: `responses` is neither an object nor a list")
        if not candidates:
            unanswered += 1
            continue
        _, value, user = max(candidates, key=lambda c: c[0])
        label = _label_from(value, labels, path, where)
        answers.append(_Answer(where, item_id, label, str(user) if user else "argilla", None))
    return answers, skipped, unanswered
