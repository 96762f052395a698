"""`actlabel run`: annotate + critique + select in one go, each stage resumable on its own."""

from __future__ import annotations

from typing import Any

from actlabel.store import Store


def run_pipeline(
    store: Store,
    *,
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    max_cost: float | None = None,
    max_total_tokens: int | None = None,
    limit: int | None = None,
    critic_model: str | None = None,
    strategy: str = "cot",
    cot: bool = False,
    budget: str = "auto",
    rule: str = "threshold",
    uniform: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Run stages 1-3 and return their one-line summaries. A budget or token cap stops it cleanly."""
    from actlabel.annotate import annotate
    from actlabel.critique import critique
    from actlabel.selection import select_for_review

    shared: dict[str, Any] = {
        "base_url": base_url, "concurrency": concurrency, "max_cost": max_cost,
        "max_total_tokens": max_total_tokens, "limit": limit, "progress": progress,
    }  # fmt: skip
    lines = [str(annotate(store, model=model, cot=cot, **shared))]
    result = critique(store, model=critic_model, strategy=strategy, **shared)
    lines.append(str(result))
    lines.append(str(select_for_review(store, budget=budget, rule=rule, uniform=uniform, seed=seed)))
    return "\n".join(lines)
