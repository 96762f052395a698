"""Multi-label tasks: a set of labels per item, kept in the existing label columns.

A multi-label project (`Task.multi_label`) stores every label value (machine, gold, human,
proposed) as a canonical JSON list in the task's label order, e.g. `["earn","trade"]`; `[]` is
the empty set, NULL is "no label" as before. Canonical text means two equal sets are equal
strings, so the SQL and the code that compare labels (accuracy, critic AUROC, corrected items)
compare sets exactly without knowing. Single-label projects are unchanged.

Outside the store: a list column in Parquet and JSONL, `a|b` in CSV with `[]` for the empty set
(an empty cell stays "no label"). Import and review accept a list, a JSON list, or `a|b`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from actlabel.errors import UserError

SEPARATOR = "|"
#: how the empty set is written in CSV, where an empty cell already means "no label"
EMPTY_SET = "[]"


def encode(labels: Iterable[str], names: Sequence[str]) -> str:
    """The canonical stored form of a label set: a JSON list in the task's label order."""
    chosen = set(labels)
    return json.dumps([n for n in names if n in chosen], ensure_ascii=False, separators=(",", ":"))


def decode(stored: str | None) -> list[str] | None:
    """The stored form back to a list (None stays None: no label)."""
    return None if stored is None else list(json.loads(stored))


def is_stored_set(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[")


def _known(parts: Sequence[str], names: Sequence[str], where: str) -> list[str]:
    known = set(names)
    for part in parts:
        if part not in known:
            shown = ", ".join(list(names)[:10]) + ("..." if len(names) > 10 else "")
            raise UserError(f"{where}: label {part!r} is not one of the task's labels ({shown})")
    return list(parts)


def parse(value: Any, names: Sequence[str], where: str) -> str | None:
    """A label set given by a user (a cell, a form, a payload) in its stored form, or None when
    blank. Takes a list/tuple/array of labels, a JSON list (`["a","b"]`), or `a|b`; `[]` is the
    empty set. An unknown label raises UserError naming `where` and the label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple | set | frozenset):
        parts = [str(v).strip() for v in value]
    else:
        text = str(value).strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                raise UserError(f"{where}: {text[:40]!r} is not a JSON list of labels") from None
            if not isinstance(loaded, list) or not all(isinstance(v, str) for v in loaded):
                raise UserError(f"{where}: {text[:40]!r} is not a JSON list of label names")
            parts = [v.strip() for v in loaded]
        else:
            parts = [p.strip() for p in text.split(SEPARATOR)]
    if any(not p for p in parts):
        raise UserError(f"{where}: an empty label in {value!r} (check for doubled or trailing {SEPARATOR!r})")
    return encode(_known(parts, names, where), names)


def to_csv(stored: str | None) -> str | None:
    """`a|b` for CSV; the empty set as `[]`; None (no label) stays an empty cell."""
    labels = decode(stored)
    if labels is None:
        return None
    return SEPARATOR.join(labels) if labels else EMPTY_SET


def indicators(stored: Sequence[str | None], names: Sequence[str]) -> np.ndarray:
    """(n, L) 0/1 matrix of stored sets (a None row is all zeros: mask it yourself)."""
    index = {n: j for j, n in enumerate(names)}
    out = np.zeros((len(stored), len(names)), dtype=np.int8)
    for i, s in enumerate(stored):
        for label in decode(s) or ():
            out[i, index[label]] = 1
    return out


def from_indicators(rows: np.ndarray, names: Sequence[str]) -> list[str]:
    return [encode((n for n, on in zip(names, row, strict=True) if on), names) for row in rows]


def set_probability(p_yes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """P(the chosen set is exactly right) if labels are independent: prod_l P(label l decided right)."""
    right = np.where(chosen.astype(bool), p_yes, 1.0 - p_yes)
    return np.prod(right, axis=-1)


def item_error_prob(label_error_probs: np.ndarray) -> np.ndarray:
    """P(any label of the item is wrong) = 1 - prod_l (1 - e_l), labels taken as independent."""
    e = np.clip(np.asarray(label_error_probs, dtype=float), 0.0, 1.0)
    return 1.0 - np.prod(1.0 - e, axis=-1)
