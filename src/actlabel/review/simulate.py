"""A simulated reviewer: answers the selected items with their imported gold labels.

It stands in for humans in benchmarks and demos (how much does the ACT pipeline gain for a given
budget?) and, with `error_rate`, models imperfect reviewers: each answer is, with that
probability, a uniformly drawn *other* label. Records go to the store exactly like human reviews,
with `source="simulated"` and `reviewer="simulated-gold"`, so every later stage treats them alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from actlabel.errors import UserError
from actlabel.review.queue import load_items, pending_rowids
from actlabel.store import Store

REVIEWER = "simulated-gold"
SOURCE = "simulated"


@dataclass(frozen=True)
class SimulationResult:
    reviewed: int
    agreed_with_machine: int
    agreed_with_proposal: int  # items whose critic proposed a label and the answer matched it
    wrong_answers: int  # answers deliberately different from gold (error_rate)
    error_rate: float

    def __str__(self) -> str:
        if self.reviewed == 0:
            return "simulated review: no selected items are waiting for review (run `actlabel select` first?)"
        return (
            f"simulated review: reviewed {self.reviewed} items with the gold labels"
            f" (error rate {self.error_rate:g}, {self.wrong_answers} wrong on purpose);"
            f" agreed with the machine label on {self.agreed_with_machine},"
            f" with the critic's proposal on {self.agreed_with_proposal}"
        )


def simulate_review(
    store: Store, *, source: str = "gold", error_rate: float = 0.0, seed: int = 0
) -> SimulationResult:
    """Review every selected, not yet reviewed item with its gold label, in one transaction.

    Items are answered in review order (most suspicious first) and the random stream is seeded, so a
    run is reproducible for a given store state and seed.
    """
    if source != "gold":
        raise UserError(f"unknown simulated reviewer {source!r} (only 'gold' is available)")
    if not 0.0 <= error_rate <= 1.0:
        raise UserError(f"error rate {error_rate} must be between 0 and 1")
    labels = store.task.label_names
    items = load_items(store, pending_rowids(store))
    if not items:
        return SimulationResult(0, 0, 0, 0, error_rate)
    missing = [it for it in items if it.gold_label is None]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(items)} selected items have no gold label (e.g. item {missing[0].item_id!r});"
            " import a file with --gold to simulate reviews"
        )
    multi = store.task.multi_label
    for it in items:
        if not multi and it.gold_label not in labels:
            raise UserError(
                f"item {it.item_id!r}: gold label {it.gold_label!r} is not one of the task's labels"
            )

    rng = random.Random(seed)
    records, agreed_machine, agreed_proposal, wrong = [], 0, 0, 0
    for it in items:
        label = it.gold_label
        # Draw for every item, not only when error_rate > 0, so the stream (and which items get a wrong
        # answer) does not depend on anything but the seed and the item order.
        if rng.random() < error_rate:
            if multi:  # a wrong set: one label flipped
                from actlabel import multilabel

                flipped = set(multilabel.decode(label) or ()) ^ {rng.choice(labels)}
                label = multilabel.encode(flipped, labels)
            else:
                label = rng.choice([lab for lab in labels if lab != it.gold_label])
            wrong += 1
        agreed_machine += label == it.machine_label
        agreed_proposal += it.proposed_label is not None and label == it.proposed_label
        records.append({"item_rowid": it.rowid, "reviewer": REVIEWER, "label": label, "source": SOURCE})
    store.add_reviews(records)
    return SimulationResult(len(records), agreed_machine, agreed_proposal, wrong, error_rate)
