"""The labelling task: label set (with optional descriptions), instructions, input fields, few-shot examples."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actlabel.errors import UserError
from actlabel.images import image_problem

MIN_LABELS = 2
MAX_LABELS = 1000


@dataclass(frozen=True)
class Label:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Example:
    """A few-shot example shown to the annotator; `image` is a path, absolute or relative to the project."""

    label: str  # in a multi-label task: the set as `a|b` (empty for the empty set)
    text: str = ""
    image: str = ""

    def label_set(self) -> list[str]:
        """The example's labels in a multi-label task (`a|b`; an empty string is the empty set)."""
        return [p.strip() for p in self.label.split("|")] if self.label.strip() else []


@dataclass
class Task:
    labels: list[Label]
    instructions: str = ""
    text_columns: list[str] = field(default_factory=list)
    image_column: str | None = None
    id_column: str | None = None
    gold_column: str | None = None
    examples: list[Example] = field(default_factory=list)
    #: each item takes a set of labels (multilabel.py: how sets are stored and written)
    multi_label: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def validate(self) -> None:
        names = [label.name for label in self.labels]
        if len(names) < MIN_LABELS:
            raise UserError(f"a task needs at least {MIN_LABELS} labels, got {len(names)}")
        if len(names) > MAX_LABELS:
            raise UserError(f"a task takes at most {MAX_LABELS} labels, got {len(names)}")
        seen: dict[str, str] = {}
        for i, name in enumerate(names, 1):
            if not name.strip():
                raise UserError(f"label {i} is empty")
            if name != name.strip():
                raise UserError(f"label {i} {name!r} has leading or trailing spaces")
            if "\n" in name:
                raise UserError(f"label {i} {name!r} contains a line break")
            if self.multi_label and ("|" in name or name.startswith("[")):
                raise UserError(
                    f"label {i} {name!r}: in a multi-label task a label cannot contain '|' or start with '['"
                )
            key = name.casefold()
            if key in seen:
                raise UserError(f"duplicate label {name!r} (labels must be unique, ignoring case)")
            seen[key] = name
        for label in self.labels:
            if "\n" in label.description:
                raise UserError(f"the description of label {label.name!r} must be one line")
        for i, ex in enumerate(self.examples, 1):
            if self.multi_label:
                unknown = [p for p in ex.label_set() if p not in seen.values()]
                if unknown:
                    raise UserError(
                        f"few-shot example {i}: label {unknown[0]!r} is not one of the task's labels"
                    )
            elif ex.label not in seen.values():
                raise UserError(f"few-shot example {i}: label {ex.label!r} is not one of the task's labels")
            if not ex.text.strip() and not ex.image:
                raise UserError(f"few-shot example {i}: it has neither text nor image")

    def to_json(self) -> str:
        data = asdict(self)
        if not self.multi_label:
            del data["multi_label"]  # single-label projects store exactly what they stored before
        return json.dumps(data, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Task:
        data = json.loads(text)
        data["labels"] = [Label(**label) for label in data["labels"]]
        data["examples"] = [Example(**ex) for ex in data.get("examples", [])]
        return cls(**data)


def parse_labels(spec: str) -> list[Label]:
    """Labels from the command line: `positive,negative,neutral` (descriptions come from a file)."""
    names = [part.strip() for part in spec.split(",")]
    if any(not n for n in names):
        raise UserError(f"--labels {spec!r} has an empty label (check for doubled or trailing commas)")
    return [Label(n) for n in names]


def read_labels_file(path: Path) -> list[Label]:
    """One label per line: `name` or `name: one-line description`. Blank lines and `#` comments are skipped."""
    labels = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: no such labels file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, description = line.partition(":")
        labels.append(Label(name.strip(), description.strip()))
    return labels


def read_examples_file(
    path: Path, *, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Few-shot examples from a CSV or JSONL file with a label column and a text and/or image column.

    Image paths are relative to the examples file (as image paths in an imported table are to the
    table); they are stored absolute, and checked here so a missing image fails `init`, not
    `annotate` an hour later.
    """
    if not path.exists():
        raise UserError(f"{path}: no such examples file")
    rows: list[tuple[str, Any]]  # (where, row)
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append((f"line {n}", json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
        else:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                rows = [(f"row {n}", row) for n, row in enumerate(reader, 1)]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV ({exc})") from None
    examples = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(
                f"{path}: {where}: expected an object with a {label_column!r} field, found "
                f"{json.dumps(row)[:40]}"
            )
        if label_column not in row or row[label_column] is None:
            raise UserError(f"{path}: {where}: no {label_column!r} column")
        image = row.get("image")
        examples.append(
            Example(
                label=_example_label(row[label_column]),
                text=_field_text(row.get(text_column)),
                image=_example_image(path, where, image) if image not in (None, "") else "",
            )
        )
    return examples


def _example_label(value: Any) -> str:
    """A JSONL list of labels (a multi-label example) becomes `a|b`, as a CSV cell writes it."""
    if isinstance(value, list):
        return "|".join(str(v).strip() for v in value)
    text = str(value).strip()
    return "" if text == "[]" else text


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _example_image(path: Path, where: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise UserError(f"{path}: {where}: the image must be a path, found {json.dumps(raw)[:40]}")
    image = (path.parent / raw).resolve()
    if not image.is_file():
        raise UserError(f"{path}: {where}: example image {raw!r} not found (looked for {image})")
    problem = image_problem(image)
    if problem:
        raise UserError(f"{path}: {where}: example image {raw!r} {problem}")
    return str(image)
