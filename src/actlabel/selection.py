"""Stage 3 against the store: read error_prob, call the pure rules in `actlabel.select`, record d and pi.

Every selection round writes one record per item (selected, review_prob): the latest record of an
item is exactly what the ACT loss needs. Rounds follow the sequential design of docs/statistics.md:
items reviewed earlier keep review_prob 1, a new round picks only among items never selected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class CurrentState:
    rowids: np.ndarray
    machine_label: list[str | None]
    error_prob: np.ndarray  # NaN where no critique
    selected: np.ndarray  # bool, latest selection record
    review_prob: np.ndarray  # NaN where never selected/recorded
    human_label: list[str | None]

    @property
    def reviewed(self) -> np.ndarray:
        return np.array([h is not None for h in self.human_label], dtype=bool)


def current_state(store: Store) -> CurrentState:
    """Every item's current state. Numbers go to NumPy batch by batch and each label is one shared
    string (sqlite3 makes a new one per row): Python lists of ints, floats and label copies took
    ~150 bytes an item, most of a million-item selection's memory."""
    rowids, error, selected, pi = [], [], [], []
    machine: list[str | None] = []
    human: list[str | None] = []
    shared: dict[str | None, str | None] = {}
    cols = store.CURRENT_COLUMNS
    i_m, i_s, i_e = cols.index("machine_label"), cols.index("annotation_status"), cols.index("error_prob")
    i_sel, i_pi, i_h = cols.index("selected"), cols.index("review_prob"), cols.index("human_label")
    nan = float("nan")
    for rows in store.iter_current():
        rowids.append(np.array([r[0] for r in rows], dtype=np.int64))
        error.append(np.array([nan if r[i_e] is None else r[i_e] for r in rows], dtype=float))
        selected.append(np.array([bool(r[i_sel]) for r in rows], dtype=bool))
        pi.append(np.array([nan if r[i_pi] is None else r[i_pi] for r in rows], dtype=float))
        machine.extend(shared.setdefault(r[i_m], r[i_m]) if r[i_s] == "ok" else None for r in rows)
        human.extend(shared.setdefault(r[i_h], r[i_h]) for r in rows)

    def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.array([], dtype=dtype)

    return CurrentState(
        joined(rowids, np.int64),
        machine,
        joined(error, float),
        joined(selected, bool),
        joined(pi, float),
        human,
    )


def _next_round(store: Store) -> int:
    return store.last_round() + 1


def _error_probs_for_selection(state: CurrentState) -> np.ndarray:
    """error_prob per item; items without a machine label must go to humans, so they count as 1."""
    e = state.error_prob.copy()
    no_label = np.array([m is None for m in state.machine_label], dtype=bool)
    missing = np.isnan(e) & ~no_label
    if missing.any():
        raise UserError(
            f"{int(missing.sum())} annotated items have no critique yet: run `actlabel critique` first"
        )
    e[no_label] = 1.0
    return np.clip(e, 0.0, 1.0)


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
    if all(m is None for m in state.machine_label):
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

    if str(budget).strip().lower() == "auto":
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
    index = {int(r): i for i, r in enumerate(state.rowids)}
    rows = [index[r] for r in pilot["rowids"] if r in index]
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
