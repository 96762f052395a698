"""Every critic by name: adding one is a module in critics/ and one entry in CRITICS below.

The stage (critique.py), the dry run (plan.py) and the CLI's --strategy help all read this table,
so none of them names a critic. Entries point at their implementation as "module:attribute" and
load it only when used, so the CLI can build its help without importing numpy or a model.

Kinds, by what the stage does with the critic:
- "llm": a `critics.base.Strategy` class, called once per item through the model stack;
- "offline": a function scoring every current machine label with no chat model,
  `(store, targets, *, run_id[, seed][, members]) -> (records, info)`, rescored in full each run;
- "streamed": an offline critic that writes its own records in batches,
  `(store, *, run_id, limit) -> (info, auroc, gold_errors, gold_items)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Critic:
    name: str
    #: "module:attribute" of the Strategy class or the scoring function
    entry: str
    kind: str = "llm"
    #: the critic of multi-label tasks (it judges label sets; it cannot be an ensemble member)
    multi_label: bool = False
    #: offline critics: the scoring function takes seed= / members=
    seeded: bool = False
    takes_members: bool = False
    #: the line `actlabel plan` prints for a critic that makes no model calls ({members}: the ensemble's)
    plan_line: str | None = None

    def load(self) -> Any:
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)


CRITICS: dict[str, Critic] = {
    c.name: c
    for c in (
        Critic("naive", "actlabel.critics.blackbox:NaiveCritic"),
        Critic("cot", "actlabel.critics.blackbox:CoTCritic"),
        Critic("mc", "actlabel.critics.blackbox:MCCritic"),
        Critic("devil", "actlabel.critics.blackbox:DevilCritic"),
        Critic("logit", "actlabel.critics.whitebox:LogitCritic"),
        Critic("cot-logit", "actlabel.critics.whitebox:CoTLogitCritic"),
        Critic("cot-ppl", "actlabel.critics.whitebox:CoTPPLCritic"),
        Critic(
            "consistency",
            "actlabel.critics.consistency:consistency_critique",
            kind="offline",
            seeded=True,
            plan_line="critic: consistency (label model + neighbours on MiniLM / EfficientNet features + the "
            "annotator's confidence; no reviews): no model calls",
        ),
        Critic(
            "learned",
            "actlabel.critics.learned:learned_critique",
            kind="offline",
            seeded=True,
            plan_line="critic: learned (an error model trained on reviewed items; MiniLM / EfficientNet "
            "features): no model calls",
        ),
        Critic(
            "ensemble",
            "actlabel.critics.ensemble:ensemble_critique",
            kind="offline",
            seeded=True,
            takes_members=True,
            plan_line="critic: ensemble of {members}: no model calls",
        ),
        Critic("confidence", "actlabel.critics.confidence:confidence_critique", kind="streamed"),
        Critic(
            "per-label", "actlabel.critics.per_label:per_label_critique", kind="offline", multi_label=True
        ),
    )
}

#: the critics of single-label tasks, LLM critics first (the order --help lists them in)
SINGLE_LABEL = tuple(c.name for c in CRITICS.values() if not c.multi_label)
LLM_CRITICS = tuple(c.name for c in CRITICS.values() if c.kind == "llm")
OFFLINE_CRITICS = tuple(c.name for c in CRITICS.values() if c.kind != "llm" and not c.multi_label)
MULTI_LABEL_CRITICS = tuple(c.name for c in CRITICS.values() if c.multi_label)


def strategy_help(default: str) -> str:
    """The CLI's --strategy help, from the table."""
    return (
        f"{', '.join(SINGLE_LABEL)} (ensemble:cot,logit picks its members); "
        f"{', '.join(MULTI_LABEL_CRITICS)} for multi-label tasks [default: {default}]."
    )
