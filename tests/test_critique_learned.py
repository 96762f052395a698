"""The learned critic on real MiniLM embeddings, the ensemble, and calibration on reviewed items.

The text set is synthetic but realistic: sentences about sports, cooking and finance. The scripted
annotator makes a systematic mistake a real LLM makes (sports or cooking sentences that talk about
money are labelled finance) plus a few random slips, so the machine errors are known.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from actlabel.annotate import annotate
from actlabel.critique import calibrate, critique
from actlabel.errors import UserError
from actlabel.metrics import error_detection_auroc
from actlabel.models.base import ChatRequest
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project

from .conftest import write_csv

TOPICS = ["sports", "cooking", "finance"]

SPORTS = (
    [
        "The striker",
        "Our goalkeeper",
        "The home team",
        "The coach",
        "The young sprinter",
        "The tennis champion",
        "The rookie pitcher",
        "The captain",
    ],
    [
        "scored twice in the second half",
        "won the final after extra time",
        "was injured during training",
        "broke the national record",
        "lost on penalties",
        "celebrated the league title",
        "missed the decisive free kick",
    ],
)
COOKING = (
    [
        "Simmer the onions",
        "Whisk the eggs",
        "Roast the vegetables",
        "Knead the dough",
        "Season the soup",
        "Fold in the cream",
        "Grill the fish",
        "Bake the bread",
    ],
    [
        "until golden brown",
        "with a pinch of salt",
        "for twenty minutes",
        "with fresh basil and garlic",
        "at a high temperature",
        "before adding the butter",
        "and serve it warm",
    ],
)
FINANCE = (
    [
        "The central bank",
        "Investors",
        "The stock market",
        "Bond yields",
        "The company's shares",
        "Inflation",
        "The quarterly earnings report",
        "Hedge funds",
    ],
    [
        "rose after the interest rate decision",
        "fell sharply after the announcement",
        "rallied to a record high",
        "beat analyst expectations",
        "worried traders about a recession",
        "climbed for the third month",
        "pushed the currency lower",
    ],
)
MONEY_COOKING = (
    [
        "Because saffron costs so much now",
        "To save money on butter",
        "Since the price of olive oil went up",
        "With salmon at twenty dollars a pound",
        "As vanilla got too expensive",
        "To cut my grocery bill",
    ],
    [
        "I cook lentil soup instead",
        "I bake with cheaper margarine",
        "I roast chickpeas for dinner",
        "I simmer a bean stew every Sunday",
    ],
)
MONEY_SPORTS = (
    [
        "The club paid a record transfer fee",
        "The team spent forty million euros",
        "The owners cut the wage budget",
        "Ticket prices doubled",
    ],
    [
        "to sign the striker",
        "for a new goalkeeper",
        "before the championship final",
        "after the team was relegated",
    ],
)


def topic_dataset(seed: int = 0) -> list[dict[str, str]]:
    """~170 sentences: text, gold topic, the scripted annotator's label (with known errors)."""
    rng = random.Random(seed)
    rows = []

    def add(parts: tuple[list[str], list[str]], gold: str, machine: str, n: int) -> None:
        combos = list(itertools.product(*parts))
        rng.shuffle(combos)
        for a, b in combos[:n]:
            rows.append({"text": f"{a} {b}.", "gold": gold, "machine": machine})

    add(SPORTS, "sports", "sports", 45)
    add(COOKING, "cooking", "cooking", 45)
    add(FINANCE, "finance", "finance", 45)
    add(MONEY_COOKING, "cooking", "finance", 16)  # systematic error: money talk -> finance
    add(MONEY_SPORTS, "sports", "finance", 14)
    # a few random slips no model can predict from the text
    for row in rng.sample(rows[:135], 5):
        row["machine"] = rng.choice([t for t in TOPICS if t != row["gold"]])
    rng.shuffle(rows)
    return rows


@pytest.fixture
def topic_project(tmp_path: Path):
    rows = topic_dataset()
    table = write_csv(tmp_path / "topics.csv", [{"text": r["text"], "gold": r["gold"]} for r in rows])
    proj = Project.init(tmp_path / "topics", TOPICS, instructions="What is the sentence about?")
    proj.import_file(table, text_columns=["text"], gold_column="gold")
    machine = {r["text"]: r["machine"] for r in rows}

    def annotator(request: ChatRequest) -> str:
        return machine[re.search(r"^text: (.*)$", request.messages[-1].plain_text, re.M).group(1)]

    annotate(proj.store, backend=ScriptedBackend(annotator, name="annotator"), progress=False)
    yield proj, rows
    proj.close()


def gold_and_machine(store) -> tuple[dict[int, str], dict[int, str]]:
    gold = dict(store.conn.execute("SELECT rowid, gold_label FROM items").fetchall())
    machine = dict(store.conn.execute("SELECT item_rowid, label FROM annotations").fetchall())
    return gold, machine


def review(store, rowids, gold) -> None:
    store.add_reviews(
        {"item_rowid": r, "label": gold[r], "reviewer": "test", "source": "test"} for r in rowids
    )


def latest_e(store, strategy: str) -> dict[int, float]:
    return {
        r[0]: r[2]
        for r in store.conn.execute(
            "SELECT item_rowid, max(id), error_prob FROM critiques WHERE strategy = ? GROUP BY item_rowid",
            (strategy,),
        )
    }


def test_learned_critic_needs_enough_reviews(topic_project) -> None:
    """Below its minimum the learned critic says so in one line and writes the zero-review
    consistency critic's scores instead of refusing (issue 12)."""
    pytest.importorskip("sentence_transformers")
    proj, _rows = topic_project
    store = proj.store
    gold, machine = gold_and_machine(store)
    review(store, list(gold)[:10], gold)
    result = critique(store, strategy="learned", progress=False)
    assert re.search(r"has 10 \(\d+ wrong machine labels, \d+ right\); it needs at least 20", result.notes[0])
    assert "consistency critic's scores" in result.notes[0] and result.done == len(gold)
    rationales = [
        r[0] for r in store.conn.execute("SELECT rationale FROM critiques WHERE strategy = 'learned'")
    ]
    assert rationales and all(r.startswith("zero-review fallback (10 reviews)") for r in rationales)


def test_learned_critic_on_real_embeddings_finds_the_systematic_errors(topic_project) -> None:
    pytest.importorskip("sentence_transformers")
    proj, rows = topic_project
    store = proj.store
    gold, machine = gold_and_machine(store)
    rowids = sorted(gold)
    rng = np.random.default_rng(0)
    reviewed = set(rng.choice(rowids, size=70, replace=False).tolist())
    review(store, reviewed, gold)
    result = critique(store, strategy="learned", progress=False)
    assert result.done == len(rowids) and result.model.startswith("learned/minilm-l6-v2")
    assert "cross-validated AUROC" in str(result)
    e = latest_e(store, "learned")
    held_out = [r for r in rowids if r not in reviewed]
    y = np.array([gold[r] != machine[r] for r in held_out])
    auc = error_detection_auroc(np.array([e[r] for r in held_out]), y)
    assert auc >= 0.85, auc
    # every item is scored, reviewed ones out of fold; proposals are labels or the machine label
    rows_db = store.conn.execute(
        "SELECT item_rowid, proposed_label, rationale, raw FROM critiques"
    ).fetchall()
    for rowid, proposed, rationale, raw in rows_db:
        assert proposed in TOPICS and "reviews" in rationale
        assert json.loads(raw)["out_of_fold"] == (rowid in reviewed)
    # on the systematic errors the label model should usually propose the right topic
    wrong_held = [r for r in held_out if gold[r] != machine[r]]
    proposals = dict((r, p) for r, p, *_ in rows_db)
    assert sum(proposals[r] == gold[r] for r in wrong_held) >= len(wrong_held) // 2
    # retraining with more reviews: reruns replace the records (latest wins)
    more = set(rng.choice([r for r in rowids if r not in reviewed], size=30, replace=False).tolist())
    review(store, more, gold)
    again = critique(store, strategy="learned", progress=False)
    assert "100 reviews" in str(again)


def _scripted_critics(store, gold_of_text) -> None:
    """Two LLM critics through the scripted backend: a miscalibrated cot and a logit critic."""

    def text_of(request: ChatRequest) -> tuple[str, str]:
        user = request.messages[-1].plain_text
        return re.search(r"^text: (.*)$", user, re.M).group(1), re.search(
            r'(?:Machine label: |Is ")(\w+)', user
        ).group(1)

    def cot(request: ChatRequest) -> str:
        text, machine = text_of(request)
        wrong = gold_of_text[text] != machine
        # always alarmed, more so when wrong: good ranking, bad calibration (ECE ~0.5)
        h = (sum(map(ord, text)) % 10) / 100
        return f"Correct label: {gold_of_text[text]}\nProbability wrong: {(0.85 if wrong else 0.6) + h:.2f}\nReason: x."

    def logit_answer(request: ChatRequest) -> str:
        if "Which label is correct" in request.messages[-1].plain_text:  # the proposal question
            return gold_of_text[re.search(r"^text: (.*)$", request.messages[-1].plain_text, re.M).group(1)]
        text, machine = text_of(request)
        return "no" if gold_of_text[text] != machine else "yes"  # "is the machine label correct?"

    def yes_no_probs(request: ChatRequest, answer: str) -> dict[str, float]:
        if request.choices == ("yes", "no"):
            return {"yes": 0.7, "no": 0.3} if answer == "yes" else {"yes": 0.3, "no": 0.7}
        return {c: 1.0 for c in request.choices}

    critique(store, backend=ScriptedBackend(cot, name="critic"), strategy="cot", progress=False)
    logit_backend = ScriptedBackend(logit_answer, name="critic", choice_logprobs=yes_no_probs)
    critique(store, backend=logit_backend, strategy="logit", progress=False)


def test_ensemble_mean_of_logits_then_stacked_on_reviews(topic_project) -> None:
    proj, rows = topic_project
    store = proj.store
    gold_of_text = {r["text"]: r["gold"] for r in rows}
    with pytest.raises(UserError, match="at least two critics"):
        critique(store, strategy="ensemble", progress=False)
    _scripted_critics(store, gold_of_text)
    result = critique(store, strategy="ensemble", progress=False)
    assert "mean of logits" in str(result) and result.done == len(rows)
    cot, logit, ens = latest_e(store, "cot"), latest_e(store, "logit"), latest_e(store, "ensemble")
    for r in list(ens)[:20]:
        z = (math.log(cot[r] / (1 - cot[r])) + math.log(logit[r] / (1 - logit[r]))) / 2
        assert ens[r] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)
    assert result.auroc > 0.9
    # members by name
    only = critique(store, strategy="ensemble:cot,logit@scripted/critic", progress=False)
    assert only.done == len(rows)
    with pytest.raises(UserError, match="no current critiques"):
        critique(store, strategy="ensemble:cot,mc", progress=False)
    gold, machine = gold_and_machine(store)
    review(store, sorted(gold)[:60], gold)
    stacked = critique(store, strategy="ensemble", progress=False)
    assert "stacked on 60 reviews" in str(stacked)


def test_calibrate_lowers_ece_and_writes_calibrated_critiques(topic_project) -> None:
    proj, rows = topic_project
    store = proj.store
    gold_of_text = {r["text"]: r["gold"] for r in rows}
    _scripted_critics(store, gold_of_text)
    gold, machine = gold_and_machine(store)
    with pytest.raises(UserError, match="needs at least 20"):
        calibrate(store, strategy="cot")
    review(store, sorted(gold)[:100], gold)
    result = calibrate(store, strategy="cot", method="isotonic")
    assert result.reviewed == 100 and result.ece_after < result.ece_before - 0.2
    assert "ECE" in str(result) and "cot+calibrated" in str(result)
    cal = latest_e(store, "cot+calibrated")
    raw = latest_e(store, "cot")
    assert len(cal) == len(rows) and all(0 <= v <= 1 for v in cal.values())
    # isotonic calibration is monotone: the ranking (and so AUROC) is kept up to ties
    ids = sorted(raw)
    assert all(cal[a] <= cal[b] + 1e-12 for a, b in itertools.combinations(ids, 2) if raw[a] < raw[b])
    platt = calibrate(store, strategy="cot", method="platt")
    assert platt.method == "platt" and platt.ece_after < platt.ece_before
    # the default critic is the latest one written that is not itself calibrated
    assert calibrate(store).strategy == "logit"
    with pytest.raises(UserError, match="isotonic or platt"):
        calibrate(store, method="beta")
