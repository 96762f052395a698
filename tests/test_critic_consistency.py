"""The zero-review consistency critic and the stacked learned critic's fallback and weighting.

Data: the sports / cooking / finance sentences of test_critique_learned, labelled by a scripted
annotator that slips at random on 15% of them (no pattern a model can learn from the text) and is
less sure of itself on its slips, as a real model tends to be. The consistency critic has to find
the slips from the data alone: no review, no model call.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from actlabel.annotate import annotate
from actlabel.critics.consistency import (
    _probs_in_raw,
    calibrate_to_count,
    class_thresholds,
    confident_joint_errors,
    neighbour_probs,
    pool,
)
from actlabel.critics.learned import weighted_precision_at
from actlabel.critique import critique, default_strategy
from actlabel.errors import UserError
from actlabel.metrics import error_detection_auroc
from actlabel.models.base import ChatRequest
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project

from .conftest import write_csv
from .test_critique_learned import COOKING, FINANCE, SPORTS, TOPICS, gold_and_machine, latest_e, review

SLIP_RATE = 0.15


def slip_dataset(seed: int = 0) -> list[dict]:
    """~150 sentences with gold topics; the annotator's label is wrong on a random 15%."""
    import itertools

    rng = random.Random(seed)
    rows = []
    for parts, gold in ((SPORTS, "sports"), (COOKING, "cooking"), (FINANCE, "finance")):
        combos = list(itertools.product(*parts))
        rng.shuffle(combos)
        rows += [{"text": f"{a} {b}.", "gold": gold} for a, b in combos[:50]]
    for row in rows:
        wrong = rng.random() < SLIP_RATE
        row["machine"] = rng.choice([t for t in TOPICS if t != row["gold"]]) if wrong else row["gold"]
        # a slip is made with less confidence on average, with a wide overlap
        row["confidence"] = rng.uniform(0.4, 0.85) if wrong else rng.uniform(0.55, 1.0)
    rng.shuffle(rows)
    return rows


@pytest.fixture
def slip_project(tmp_path: Path):
    rows = slip_dataset()
    table = write_csv(tmp_path / "slips.csv", [{"text": r["text"], "gold": r["gold"]} for r in rows])
    proj = Project.init(tmp_path / "slips", TOPICS, instructions="What is the sentence about?")
    proj.import_file(table, text_columns=["text"], gold_column="gold")
    by_text = {r["text"]: r for r in rows}

    def text_of(request: ChatRequest) -> str:
        return re.search(r"^text: (.*)$", request.messages[-1].plain_text, re.M).group(1)

    def answer(request: ChatRequest) -> str:
        return by_text[text_of(request)]["machine"]

    def probs(request: ChatRequest, label: str) -> dict[str, float]:
        c = by_text[text_of(request)]["confidence"]
        return {t: (c if t == label else (1 - c) / 2) for t in request.choices}

    backend = ScriptedBackend(answer, name="annotator", choice_logprobs=probs)
    annotate(proj.store, backend=backend, progress=False)
    yield proj, rows
    proj.close()


def test_consistency_critic_finds_random_slips_with_no_review(slip_project) -> None:
    pytest.importorskip("sentence_transformers")
    proj, rows = slip_project
    store = proj.store
    gold, machine = gold_and_machine(store)
    assert store.count("reviews") == 0
    result = critique(store, strategy="consistency", progress=False)
    assert result.done == len(rows) and result.calls == 0
    assert result.model == "consistency/minilm-l6-v2+knn"
    assert "no reviews" in str(result) and "annotator" in str(result)
    e = latest_e(store, "consistency")
    ids = sorted(e)
    y = np.array([gold[r] != machine[r] for r in ids])
    scores = np.array([e[r] for r in ids])
    conf = dict(store.conn.execute("SELECT item_rowid, confidence FROM annotations").fetchall())
    auc_conf = error_detection_auroc(np.array([1 - conf[r] for r in ids]), y)
    auc = error_detection_auroc(scores, y)
    # the slips contradict the sentences' topics, which the label model and the neighbours see
    assert auc >= 0.95 and auc > auc_conf + 0.1, (auc, auc_conf)
    # the probabilities are calibrated in total to an estimate of the error count
    assert abs(scores.sum() - y.sum()) <= 0.5 * y.sum() + 3, (scores.sum(), y.sum())
    records = store.conn.execute(
        "SELECT item_rowid, proposed_label, rationale, raw FROM critiques"
    ).fetchall()
    proposals = {r: p for r, p, *_ in records}
    wrong = [r for r in ids if gold[r] != machine[r]]
    assert sum(proposals[r] == gold[r] for r in wrong) >= 0.8 * len(wrong)
    assert all(proposals[r] == machine[r] for r in ids if e[r] < 0.5)
    for _r, _p, rationale, raw in records:
        assert rationale.startswith("P(wrong)=") and "nearest neighbours" in rationale
        doc = json.loads(raw)
        assert set(doc["pooled"]) == set(TOPICS) and 0 <= doc["label_model"] <= 1
    # deterministic for a seed: a re-run writes the same probabilities
    critique(store, strategy="consistency", progress=False)
    again = latest_e(store, "consistency")
    assert all(again[r] == pytest.approx(e[r]) for r in ids)


def test_learned_critic_falls_back_then_stacks_with_weights(slip_project) -> None:
    pytest.importorskip("sentence_transformers")
    proj, rows = slip_project
    store = proj.store
    gold, machine = gold_and_machine(store)
    critique(store, strategy="consistency", progress=False)
    cons = latest_e(store, "consistency")
    ids = sorted(gold)
    review(store, ids[:10], gold)
    fallback = critique(store, strategy="learned", progress=False)
    assert fallback.model == "learned/consistency-fallback" and fallback.done == len(ids)
    assert len(fallback.notes) == 1 and "needs at least 20" in fallback.notes[0]
    assert "consistency critic's scores" in fallback.notes[0]
    learned = latest_e(store, "learned")
    assert all(learned[r] == pytest.approx(cons[r]) for r in ids)
    # reviews from a selection that favoured suspicious items: weighted by 1/review_prob
    rng = np.random.default_rng(1)
    e = np.array([cons[r] for r in ids])
    pi = np.clip(0.1 + 0.5 * e, 0, 1)
    chosen = [r for r, p in zip(ids, pi, strict=True) if rng.random() < p and r not in ids[:10]]
    run_id = store.start_run("select", {"test": True})
    store.add_selections(
        {
            "item_rowid": r,
            "run_id": run_id,
            "round": 1,
            "selected": 1,
            "review_prob": float(p),
            "round_prob": float(p),
        }
        for r, p in zip(ids, pi, strict=True)
        if r in chosen
    )
    store.finish_run(run_id, "done", None)
    review(store, chosen, gold)
    stacked = critique(store, strategy="learned", progress=False)
    line = stacked.notes[0]
    assert stacked.model.startswith("learned/minilm") and "weighted by 1/review_prob" in line
    for word in ("cross-validated AUROC", "AUPRC", "precision", "at the budget"):
        assert word in line
    auroc = float(re.search(r"AUROC (\d\.\d+)", line).group(1))
    assert auroc >= 0.85
    held = [r for r in ids if r not in set(chosen) | set(ids[:10])]
    y = np.array([gold[r] != machine[r] for r in held])
    after = latest_e(store, "learned")
    assert y.sum() >= 3
    assert error_detection_auroc(np.array([after[r] for r in held]), y) >= 0.9


def test_default_critic_is_consistency_for_embedded_annotators(slip_project) -> None:
    proj, _rows = slip_project
    store = proj.store
    assert default_strategy(store) == "cot"  # scripted/annotator: a chat model, not embedded
    run_id = store.start_run("annotate", {"model": "local/qwen2.5-0.5b"})
    rowid = store.conn.execute("SELECT min(rowid) FROM items").fetchone()[0]
    store.add_annotations(
        [
            {
                "item_rowid": r,
                "run_id": run_id,
                "model": "local/qwen2.5-0.5b",
                "label": "sports",
                "confidence": 0.9,
                "reasoning": None,
                "raw": "sports",
                "status": "ok",
                "error": None,
            }
            for r in range(rowid, rowid + 200)
            if store.conn.execute("SELECT 1 FROM items WHERE rowid = ?", (r,)).fetchone()
        ]
    )
    store.finish_run(run_id, "done", None)
    assert default_strategy(store) == "consistency"


def test_consistency_critic_needs_some_items(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "few.csv", [{"text": f"sentence {i}", "gold": "sports"} for i in range(5)])
    proj = Project.init(tmp_path / "few", TOPICS)
    proj.import_file(table, text_columns=["text"], gold_column="gold")
    annotate(proj.store, backend=ScriptedBackend("sports", name="a"), progress=False)
    with pytest.raises(UserError, match=r"has 5; it needs at least 20 annotated items"):
        critique(proj.store, strategy="consistency", progress=False)
    assert proj.store.count("critiques") == 0
    proj.close()


# ---- the pieces, on numbers worked out by hand --------------------------------------------------


def test_class_thresholds_normalise_a_hard_class() -> None:
    # class 1 is "hard": its items get low self-confidence everywhere; class 0 is easy
    q = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5], [0.55, 0.45]])
    machine = np.array([0, 0, 1, 1, 1])
    t = class_thresholds(q, machine)
    assert t == pytest.approx([0.85, (0.4 + 0.5 + 0.45) / 3])
    # raw q puts every class-1 item at or below 0.5 on its label; measured against its class's
    # threshold each is above, ranked by how sure it is relative to its class
    adjusted = pool([q], machine)
    own = adjusted[np.arange(5), machine]
    assert (own > 0.5).all() and own[3] > own[4] > own[2]
    # confident joint: item 2 has q(0)=0.6 < t0 and q(1)=0.4 < t1: no class clears its threshold
    assert confident_joint_errors(q, machine) == 0
    q2 = np.vstack([q, [0.95, 0.05]])
    assert confident_joint_errors(q2, np.r_[machine, 1]) == 1


def test_calibrate_to_count_keeps_order_and_hits_the_total() -> None:
    raw = np.array([0.01, 0.2, 0.5, 0.7, 0.99, 0.05])
    out = calibrate_to_count(raw, 2.0)
    assert out.sum() == pytest.approx(2.0, abs=1e-6)
    assert (np.argsort(out) == np.argsort(raw)).all()


def test_neighbour_votes_leave_the_item_out() -> None:
    X = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, 0.2], [0.0, 1.0], [0.1, 0.99], [0.2, 0.98]])
    machine = np.array([0, 0, 1, 1, 1, 1])  # item 2 sits with the 0s but is labelled 1
    probs, votes = neighbour_probs(X, machine, 2, k=2)
    assert votes[2].tolist() == [2.0, 0.0] and votes[0].tolist() == [1.0, 1.0]
    assert probs.sum(axis=1) == pytest.approx(np.ones(6))


def test_label_probabilities_are_read_from_annotation_raw() -> None:
    index = {"a": 0, "b": 1}
    assert _probs_in_raw('{"a": 0.25, "b": 0.75}', index).tolist() == [0.25, 0.75]
    assert _probs_in_raw('{"text_answer": "a", "pooled": {"a": 0.6, "b": 0.4}}', index).tolist() == [0.6, 0.4]
    assert _probs_in_raw("b", index) is None  # an LLM's plain answer
    assert _probs_in_raw('{"a": 0.5, "zebra": 0.5}', index) is None
    assert _probs_in_raw('{"a": "high"}', index) is None


def test_weighted_precision_at_a_budget() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.1])
    y = np.array([True, False, True, False])
    w = np.ones(4)
    assert weighted_precision_at(score, y, w, 0.5) == pytest.approx(0.5)
    assert weighted_precision_at(score, y, w, 0.25) == pytest.approx(1.0)
    # the top item stands for 3 items of the dataset: the top half is 3 parts error, 0.5 right
    w2 = np.array([3.0, 1.0, 1.0, 1.0])
    assert weighted_precision_at(score, y, w2, 0.5) == pytest.approx(1.0)
    assert weighted_precision_at(score, y, w2, 4 / 6) == pytest.approx(3 / 4)
    # ties at the cut count in proportion
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    assert weighted_precision_at(tied, y, w, 0.25) == pytest.approx(0.5)
