"""`actlabel run`: annotate + critique + select in one go, one review round per call.

Each call does what is due and stops where humans are needed:
1. annotate the items not labelled yet (resumable);
2. once reviews exist, relabel with what they taught (`annotate --refine`, cross-fitted);
3. criticize (the critic retrains on all reviews so far);
4. select the next round, unless the last one is not reviewed yet.

The budget is spent in `rounds` rounds after a uniform pilot when it is `auto` (the pilot's
reviews recommend the total, capped by --max-budget), or in `rounds` equal rounds of a fixed
total. Each later round is threshold (or the chosen rule) plus a uniform share, so every item
keeps review_prob > 0; the rounds' inclusion probabilities compose (sequential Horvitz-Thompson,
select.py). The plan is kept in the project, so `actlabel run DIR` again after reviewing continues.
"""

from __future__ import annotations

import json

from actlabel.models.spec import ModelSpec
from actlabel.options import RunOptions
from actlabel.store import Store

PLAN_META = "run_plan"
#: review rounds after the pilot, when not given (docs/statistics.md: a small last round costs
#: variance, so rounds are equal in size)
DEFAULT_ROUNDS = 2


def default_strategy(model: str | None, reviewed: int) -> str | None:
    """Embedded models, once reviews exist: the stacked learned critic (no model call; it falls
    back to the zero-review consistency critic below its minimum). Otherwise critique's own
    default (consistency for embedded models, the paper's CoT critic for endpoints)."""
    if model is None:
        return "learned" if reviewed > 0 else None
    embedded = ModelSpec.parse(model).offline
    return "learned" if embedded and reviewed > 0 else None


def run_pipeline(store: Store, opts: RunOptions) -> str:
    """Run what is due (see the module docstring) and return the stages' one-line summaries."""
    from actlabel import select as rules
    from actlabel.annotate import annotate
    from actlabel.critique import critique
    from actlabel.errors import UserError
    from actlabel.refine import MIN_REVIEWS, refine_labels
    from actlabel.selection import current_state, recommended_budget, select_for_review

    model, progress, seed = opts.model, opts.progress, opts.seed
    lines = [str(annotate(store, opts.annotate_options()))]
    reviewed = store.reviewed_count()
    multi = store.task.multi_label  # refine and the learned critic are single-label; its critic is per-label
    if not multi and reviewed >= MIN_REVIEWS and (model is None or ModelSpec.parse(model).can("embedded")):
        lines.append(str(refine_labels(store, progress=progress)))
    strategy = opts.strategy or (None if multi else default_strategy(model, reviewed))
    lines.append(str(critique(store, opts.critique_options(strategy))))

    state = current_state(store)
    pending = int((state.selected & ~state.reviewed).sum())
    if pending:
        lines.append(
            f"{pending} selected items wait for review: `actlabel review {store.root}`, then run again"
        )
        return "\n".join(lines)
    plan = json.loads(store.get_meta(PLAN_META) or "null")
    if plan is None:
        plan = {
            "budget": opts.budget,
            "rounds": opts.rounds or DEFAULT_ROUNDS,
            "max_budget": opts.max_budget,
            "total": None,
        }
        store.set_meta(PLAN_META, json.dumps(plan))
    n = store.count_items()
    auto = rules.is_auto_budget(plan["budget"])
    if auto and store.get_meta("pilot") is None:
        lines.append(str(select_for_review(store, budget="auto", seed=seed)))
        lines.append(f"review the pilot (`actlabel review {store.root}`), then run again")
        return "\n".join(lines)
    if plan["total"] is None:
        try:
            total = recommended_budget(store) if auto else rules.budget_from_spec(str(plan["budget"]), n)
            if plan.get("max_budget"):
                total = min(total, rules.budget_from_spec(str(plan["max_budget"]), n))
        except ValueError as exc:
            raise UserError(f"--budget: {exc}") from None
        plan["total"] = int(total)
        store.set_meta(PLAN_META, json.dumps(plan))
    left = plan["total"] - store.reviewed_count()
    done_rounds = store.last_round()
    main_rounds_done = done_rounds - (1 if auto else 0)
    rounds_left = max(1, plan["rounds"] - main_rounds_done)
    if left <= 0:
        lines.append(f"budget spent: {store.reviewed_count()} of {plan['total']} planned reviews done")
        return "\n".join(lines)
    size = -(-left // rounds_left)
    lines.append(
        str(
            select_for_review(
                store, budget=str(size), rule=opts.rule, uniform=opts.uniform, seed=seed + done_rounds
            )
        )
    )
    lines.append(
        f"round {main_rounds_done + 1} of {plan['rounds']}: review it (`actlabel review {store.root}`), then run again"
    )
    return "\n".join(lines)
