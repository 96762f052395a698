"""Stage 3 against the store: read error_prob, call the pure rules in `actlabel.select`, record d and pi.

Every selection round writes one record per item (selected, review_prob): the latest record of an
item is exactly what the ACT loss needs. Rounds follow the sequential design of docs/statistics.md:
items reviewed earlier keep review_prob 1, a new round picks only among items never selected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from actlabel import select as rules
from actlabel.errors import UserError
from actlabel.store import Store

PILOT_META = "pilot"


@dataclass(frozen=True)
class SelectionSummary:
    round: int
    rule: str
    budget: int
    selected_now: int
    selected_total: int
    items: int
    pilot: bool = False
    advice: str = ""

    def __str__(self) -> str:
        what = "uniform pilot" if self.pilot else f"{self.rule} rule"
        line = (
            f"round {self.round} ({what}): selected {self.selected_now} of {self.items} items for review "
            f"(budget {self.budget}; {self.selected_total} selected in all)"
        )
        return line + (f"\n{self.advice}" if self.advice else "")


class LabelColumn(Sequence[str | None]):
    """A label per item as a code into a few distinct strings (-1: none): 4 bytes an item, where
    a list of labels was 8 bytes a pointer plus its growth, and testing for "has a label" is one
    NumPy comparison instead of a Python loop over a million items."""

    def __init__(self, codes: np.ndarray, names: Sequence[str]):
        self.codes = codes
        self.names = tuple(names)

    def present(self) -> np.ndarray:
        return self.codes >= 0

    def __len__(self) -> int:
        return int(self.codes.size)

    @overload
    def __getitem__(self, index: int) -> str | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...
    def __getitem__(self, index: int | slice) -> str | None | list[str | None]:
        if isinstance(index, slice):
            return [self.names[c] if c >= 0 else None for c in self.codes[index].tolist()]
        code = int(self.codes[index])
        return self.names[code] if code >= 0 else None

    def __iter__(self) -> Iterator[str | None]:
        names = self.names
        for start in range(0, self.codes.size, 65536):
            for c in self.codes[start : start + 65536].tolist():
                yield names[c] if c >= 0 else None


@dataclass(frozen=True)
class CurrentState:
    rowids: np.ndarray  # ascending
    machine_label: LabelColumn  # None where the latest annotation is not ok
    error_prob: np.ndarray  # NaN where no critique
    selected: np.ndarray  # bool, latest selection record
    review_prob: np.ndarray  # NaN where never selected/recorded
    human_label: LabelColumn

    @property
    def reviewed(self) -> np.ndarray:
        return self.human_label.present()


def current_state(store: Store) -> CurrentState:
    """Every item's current state, read batch by batch into NumPy: numbers as arrays, labels as
    codes (LabelColumn). Python lists of ints, floats and label strings took ~150 bytes an item,
    most of a million-item selection's memory."""
    codes: dict[str, int] = {}

    def code(label: str | None) -> int:
        return -1 if label is None else codes.setdefault(label, len(codes))

    # Filled in place, sized by the item count: batches joined at the end held every array twice.
    # An import running beside a reader (status, report) may add rows: the arrays then grow.
    n = store.count_items()
    rowids, selected = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    error, pi = np.empty(n), np.empty(n)
    machine, human = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    nan = float("nan")
    filled = 0
    for rows in store.iter_selection_rows():
        end = filled + len(rows)
        if end > rowids.size:
            rowids, selected, error, pi, machine, human = (
                np.resize(a, end) for a in (rowids, selected, error, pi, machine, human)
            )
        k = len(rows)
        at = slice(filled, end)
        rowids[at] = np.fromiter((r[0] for r in rows), dtype=np.int64, count=k)
        machine[at] = np.fromiter((code(r[1]) if r[2] == "ok" else -1 for r in rows), dtype=np.int32, count=k)
        error[at] = np.fromiter((nan if r[3] is None else r[3] for r in rows), dtype=float, count=k)
        selected[at] = np.fromiter((bool(r[4]) for r in rows), dtype=bool, count=k)
        pi[at] = np.fromiter((nan if r[5] is None else r[5] for r in rows), dtype=float, count=k)
        human[at] = np.fromiter((code(r[6]) for r in rows), dtype=np.int32, count=k)
        filled = end
    names = list(codes)
    return CurrentState(
        rowids[:filled],
        LabelColumn(machine[:filled], names),
        error[:filled],
        selected[:filled],
        pi[:filled],
        LabelColumn(human[:filled], names),
    )


def _next_round(store: Store) -> int:
    return store.last_round() + 1


def _error_probs_for_selection(state: CurrentState) -> np.ndarray:
    """error_prob per item; items without a machine label must go to humans, so they count as 1.
    Written over state.error_prob, which the caller reads no further: a copy was one more array
    of N at the selection's peak."""
    e = state.error_prob
    no_label = ~state.machine_label.present()
    missing = np.isnan(e) & ~no_label
    if missing.any():
        raise UserError(
            f"{int(missing.sum())} annotated items have no critique yet: run `actlabel critique` first"
        )
    e[no_label] = 1.0
    return np.clip(e, 0.0, 1.0, out=e)


def _write_round(
    store: Store, state: CurrentState, result: rules.SelectionResult, rnd: int, params: dict
) -> None:
    run_id = store.start_run("select", params | {"round": rnd})
    store.add_selections(
        {
            "item_rowid": int(rowid),
            "run_id": run_id,
            "round": rnd,
            "selected": int(sel),
            "review_prob": float(pi),
            "round_prob": float(pi),
        }
        for rowid, sel, pi in zip(state.rowids, result.selected, result.review_prob, strict=True)
    )
    store.finish_run(run_id, "done", f"{result.n_selected} selected")


def select_for_review(
    store: Store,
    *,
    budget: str,
    rule: str = "threshold",
    uniform: float = 0.0,
    beta: float | None = None,
    seed: int = 0,
    pilot_size: int | None = None,
    max_budget: str | None = None,
) -> SelectionSummary:
    """Choose items for human review. `budget` is a count, a percentage, or `auto` (pilot first).

    `max_budget` (a count or a percentage of all items) caps what `auto` recommends.
    """
    state = current_state(store)
    n = state.rowids.size
    if n == 0:
        raise UserError(f"{store.root}: no items yet: import some first")
    if rule not in rules.RULES:
        raise UserError(f"unknown rule {rule!r} (use {', '.join(rules.RULES)})")
    if not state.machine_label.present().any():
        raise UserError(
            f"{store.root}: no item has a machine label, so there is nothing to select for review; "
            "run `actlabel annotate` first (`actlabel status` shows why annotations failed)"
        )
    reviewed = state.reviewed
    pending = state.selected & ~reviewed
    if pending.any():
        raise UserError(
            f"{int(pending.sum())} items selected earlier are not reviewed yet: review them first "
            f"(actlabel review {store.root}), then select again"
        )
    params = {"budget": budget, "rule": rule, "uniform": uniform, "beta": beta, "seed": seed}
    rnd = _next_round(store)
    beta_value = rules.DEFAULT_BETA if beta is None else beta

    if rules.is_auto_budget(budget):
        pilot = json.loads(store.get_meta(PILOT_META) or "null")
        if pilot is None:
            return _select_pilot(store, state, rnd, seed, pilot_size, params)
        b = _budget_from_pilot(store, state, pilot)
        advice = b.explanation
        added = b.budget
        if max_budget is not None:
            try:
                cap = rules.budget_from_spec(str(max_budget), n) - int(reviewed.sum())
            except ValueError as exc:
                raise UserError(f"--max-budget {max_budget}: {exc}") from None
            if cap < added:
                advice += f"; capped at {max(cap, 0)} by --max-budget {max_budget}"
                added = max(cap, 0)
    else:
        try:
            added = rules.budget_from_spec(str(budget), int((~reviewed).sum()))
        except ValueError as exc:
            raise UserError(f"--budget {budget}: {exc}") from None
        if added == 0:  # an empty round would only add a round number to the project
            raise UserError(
                f"--budget {budget} selects no item; give a count (e.g. 50) or a share (e.g. 20%)"
            )
        advice = ""

    if rule == "normalized" and added < 0.3 * n:
        advice = (advice + "\n" if advice else "") + (
            "advice: the normalized rule collapses at low budgets (paper, insight 7); prefer threshold or exponential"
        )
    if uniform == 0 and rnd > 1:
        advice = (advice + "\n" if advice else "") + (
            "advice: a later round without --uniform gives some items review_prob 0; the ACT loss then cannot "
            "correct for them (add --uniform 0.05)"
        )
    e = _error_probs_for_selection(state)
    try:
        if reviewed.any() or rnd > 1:
            prior = np.where(np.isnan(state.review_prob), 0.0, state.review_prob)
            result = rules.select_round(
                e, reviewed, prior, added, rule=rule, uniform=uniform, beta=beta_value, seed=seed
            )
        else:
            result = rules.select(e, added, rule=rule, uniform=uniform, beta=beta_value, seed=seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _write_round(store, state, result, rnd, params)
    return SelectionSummary(rnd, rule, added, result.n_selected, int(result.selected.sum()), n, advice=advice)


def _select_pilot(
    store: Store, state: CurrentState, rnd: int, seed: int, pilot_size: int | None, params: dict
) -> SelectionSummary:
    """`--budget auto`, first call: a uniform pilot whose reviews estimate the machine error rate."""
    n = state.rowids.size
    eligible = np.flatnonzero(~state.reviewed)
    size = pilot_size or int(min(len(eligible), max(30, math.ceil(0.05 * n)), 300))
    size = min(size, len(eligible))
    if size == 0:
        raise UserError("every item is reviewed already: nothing to select")
    chosen = eligible[rules.pilot_sample(len(eligible), size, seed=seed)]
    selected = state.reviewed.copy()
    selected[chosen] = True
    pi = np.where(state.reviewed, 1.0, size / len(eligible))
    result = rules.SelectionResult(
        selected=selected,
        review_prob=pi,
        rule="uniform-pilot",
        budget=size,
        uniform=1.0,
        seed=seed,
        newly_selected=np.isin(np.arange(n), chosen),
    )
    _write_round(store, state, result, rnd, params | {"pilot": True})
    store.set_meta(PILOT_META, json.dumps({"round": rnd, "rowids": [int(r) for r in state.rowids[chosen]]}))
    return SelectionSummary(
        rnd,
        "uniform",
        size,
        size,
        int(selected.sum()),
        n,
        pilot=True,
        advice=f"next: review the {size} pilot items, then run `actlabel select {store.root} --budget auto` again "
        "to get the recommended budget",
    )


def _budget_from_pilot(store: Store, state: CurrentState, pilot: dict) -> rules.BudgetRecommendation:
    # rowids ascend: a binary search per pilot item, not a dict of every item
    wanted = np.asarray(pilot["rowids"], dtype=np.int64)
    at = np.minimum(np.searchsorted(state.rowids, wanted), max(state.rowids.size - 1, 0))
    rows = at[state.rowids[at] == wanted].tolist() if state.rowids.size else []
    # a pilot item without a machine label (annotation failed) needs a human anyway: an error
    errors = sum(
        1
        for i in rows
        if state.human_label[i] is not None
        and (state.machine_label[i] is None or state.human_label[i] != state.machine_label[i])
    )
    missing = sum(1 for i in rows if state.human_label[i] is None)
    if missing:
        raise UserError(f"{missing} pilot items are not reviewed yet: review them first")
    try:
        # items reviewed outside the pilot (by hand, imported) are not left to review either
        n_reviewed = int(state.reviewed.sum())  # the pilot is complete here, so it is included
        return rules.recommend_budget(errors, len(rows), int(state.rowids.size), n_reviewed=n_reviewed)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def recommended_budget(store: Store) -> int:
    """All the reviews the pilot recommends (those made so far included): what a plan of several
    rounds spends in all (the demo, `actlabel run --rounds`)."""
    state = current_state(store)
    pilot = json.loads(store.get_meta(PILOT_META) or "null")
    if pilot is None:
        raise UserError("no pilot yet: run `actlabel select DIR --budget auto` and review it first")
    return _budget_from_pilot(store, state, pilot).budget + int(state.reviewed.sum())
