"""`actlabel demo`: the whole ACT pipeline on a real dataset with the embedded default models, offline.

Steps (each resumable: a re-run reuses the project and its model cache and finishes quickly):
 1. write a real labelled dataset into the project folder: a pool to label (gold kept for the
    simulated reviewer and for evaluation only), a held-out test set, few-shot examples;
 2. annotate the pool with the embedded model (text) or the few-shot image model (images);
 3. optionally (`--llm-critic logit`), criticize with the embedded LLM's yes/no token probabilities;
 4. select a uniform pilot (`--budget auto`), review it with the simulated reviewer;
 5. train the learned critic on those reviews (text embeddings or image features, the annotator's
    confidence, and the LLM critic's signal when there is one): the best critic offline in
    bench/bench_critics.py, and it needs no extra model pass;
 6. select the recommended budget with the threshold rule plus a uniform share, review it;
 7. train a downstream classifier on frozen features with full human labels, full machine
    labels and the ACT data (ACT loss), and compare test accuracy;
 8. write report.html and print a summary.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actlabel import datasets
from actlabel.errors import UserError
from actlabel.models.features import IMAGE_ANNOTATOR_SPEC
from actlabel.models.spec import ModelSpec
from actlabel.project import Project
from actlabel.store import DB_NAME
from actlabel.task import Example, Label

if TYPE_CHECKING:
    from actlabel.metrics import ResidualErrorEstimate


@dataclass(frozen=True)
class DemoSpec:
    name: str
    kind: str  # "text" | "image" | "image+text"
    default_size: int
    test_size: int
    shots_per_class: int
    instructions: str


SPECS = {
    "tweets": DemoSpec(
        "tweets", "text", 600, 1500, 3,
        "Classify the sentiment the author of the tweet expresses.",
    ),
    "reuters": DemoSpec(
        "reuters", "text", 300, 1000, 1,
        "Classify the Reuters newswire article by its main topic.",
    ),
    "fashion": DemoSpec(
        "fashion", "image", 600, 2000, 5,
        "Classify the clothing item in the product photo.",
    ),
    "fashion-captions": DemoSpec(
        "fashion-captions", "image+text", 600, 2000, 5,
        "Classify the clothing item from its product photo and its caption.",
    ),
}  # fmt: skip

# The demo's annotator: the smaller embedded model. It labels ~3.6x faster than local/default
# (docs/benchmarks.md, "Model backends"), which keeps the whole demo under 15 minutes on 2 cores;
# `--model local/default` runs the 1.5B model instead.
DEMO_MODEL = "local/qwen2.5-0.5b"
# Crowd agreement floor for the tweets: the gold labels stand in for careful human labels.
TWEETS_MIN_AGREEMENT = 0.6
# A later round's uniform share: every item keeps review_prob > 0, so the ACT loss stays
# unbiased and the residual-error estimate is identifiable.
UNIFORM_SHARE = 0.05
# Review rounds after the pilot: the critic and the labels learn from each round before the next.
DEMO_ROUNDS = 2


def _say(progress: bool, message: str) -> None:
    # The narrative always prints; `progress` only switches the live progress bars.
    del progress
    print(f"[demo] {message}", flush=True)


# ---- data preparation ---------------------------------------------------------------------


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _prepare_text(spec: DemoSpec, size: int, seed: int, folder: Path) -> dict[str, Any]:
    if spec.name == "tweets":
        ds = datasets.load_tweets(min_agreement=TWEETS_MIN_AGREEMENT)
        test_texts, test_labels = None, None
    else:
        ds = datasets.load_reuters_r8("train")
        test = datasets.load_reuters_r8("test")
        test_texts, test_labels = test.texts, test.labels
    n_shots = spec.shots_per_class * len(ds.label_names)
    test_n = 0 if test_texts is not None else spec.test_size
    pool_idx, shot_idx, test_idx = datasets.stratified_split(ds.labels, (size, n_shots * 4, test_n), seed)
    shots = [
        Example(label=ds.labels[i], text=ds.texts[i])
        for i in datasets.first_per_label(ds.labels, shot_idx, spec.shots_per_class)
    ]
    _write_rows(folder / "items.csv", [{"text": ds.texts[i], "gold": ds.labels[i]} for i in pool_idx])
    if test_texts is None:
        test_texts = [ds.texts[i] for i in test_idx]
        test_labels = [ds.labels[i] for i in test_idx]
    else:
        pick = np.random.default_rng(seed).permutation(len(test_texts))[: spec.test_size]
        test_texts = [test_texts[i] for i in pick]
        test_labels = [test_labels[i] for i in pick]
    _write_rows(
        folder / "test.csv", [{"text": t, "gold": g} for t, g in zip(test_texts, test_labels, strict=True)]
    )
    return {
        "labels": [Label(n, ds.descriptions.get(n, "")) for n in ds.label_names],
        "examples": shots,
        "source": ds.source,
        "import": {"text_columns": ["text"], "gold_column": "gold"},
    }


CAPTION_TEMPLATES = [
    "Product photo from an online clothing store.",
    "Item {k} of the new season catalogue.",
    "Photo of an item for sale.",
]


def _prepare_images(spec: DemoSpec, size: int, seed: int, folder: Path) -> dict[str, Any]:
    images, labels = datasets.load_fashion_mnist("t10k")
    names = datasets.FASHION_NAMES
    str_labels = [names[k] for k in labels]
    n_shots = spec.shots_per_class * len(names)
    pool_idx, shot_idx, test_idx = datasets.stratified_split(
        str_labels, (size, n_shots * 4, spec.test_size), seed
    )
    img_dir = folder / "images"
    img_dir.mkdir(exist_ok=True)
    rows = []
    for k, i in enumerate(pool_idx):
        path = img_dir / f"{int(i)}.png"
        if not path.exists():
            datasets.write_png(images[i], path)
        row = {"image": f"images/{int(i)}.png", "gold": str_labels[i]}
        if spec.kind == "image+text":
            # The captions are templates that carry no label information: the label is real, the
            # text is not (there is no offline image+text dataset with human labels).
            row["caption"] = CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)].format(k=k)
        rows.append(row)
    _write_rows(folder / "items.csv", rows)
    shots: list[Example] = []
    shot_dir = folder / "examples"
    shot_dir.mkdir(exist_ok=True)
    for i in datasets.first_per_label(str_labels, shot_idx, spec.shots_per_class):
        path = shot_dir / f"{i}.png"
        datasets.write_png(images[i], path)
        shots.append(
            Example(
                label=str_labels[i],
                image=str(path.resolve()),
                text=CAPTION_TEMPLATES[0] if spec.kind == "image+text" else "",
            )
        )
    np.save(folder / "test_images.npy", images[test_idx])
    np.save(folder / "test_labels.npy", labels[test_idx])
    roles: dict[str, Any] = {"image_column": "image", "gold_column": "gold"}
    if spec.kind == "image+text":
        roles["text_columns"] = ["caption"]
    return {
        "labels": [Label(n, d) for n, d in zip(names, datasets.FASHION_DESCRIPTIONS, strict=True)],
        "examples": shots,
        "source": "Fashion-MNIST t10k (Debian dataset-fashion-mnist)"
        + (
            ", with template captions (no label information in the text)" if spec.kind == "image+text" else ""
        ),
        "import": roles,
    }


def _open_or_create(root: Path, spec: DemoSpec, size: int, seed: int, progress: bool) -> Project:
    marker = root / "demo.json"
    wanted = {"dataset": spec.name, "size": size, "seed": seed}
    if (root / DB_NAME).exists():
        if not marker.exists() or json.loads(marker.read_text()) != wanted:
            raise UserError(
                f"{root} holds another project or demo settings; pass --dir NEW_FOLDER (or delete {root})"
            )
        _say(progress, f"reusing {root} (cached model calls make this fast)")
        return Project(root)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; pass --dir NEW_FOLDER")
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _say(progress, f"preparing {spec.name}: {size} items to label, a held-out test set, few-shot examples")
    prep = (_prepare_text if spec.kind == "text" else _prepare_images)(spec, size, seed, data_dir)
    project = Project.init(root, prep["labels"], instructions=spec.instructions, examples=prep["examples"])
    result = project.import_file(data_dir / "items.csv", **prep["import"])
    project.store.set_meta("demo_source", prep["source"])
    marker.write_text(json.dumps(wanted))
    _say(progress, f"imported {result.rows} items from {prep['source']}")
    return project


# ---- the pipeline ---------------------------------------------------------------------------


def _selected_unreviewed(project: Project) -> int:
    return project.status().selected_not_reviewed


def _review(project: Project, progress: bool, seed: int) -> None:
    if _selected_unreviewed(project):
        _say(progress, str(project.simulate_review(source="gold", error_rate=0.0, seed=seed)))


def _learn_from_reviews(project: Project, progress: bool) -> None:
    """What every round of reviews teaches: relabel (cross-fitted), then retrain the critic."""
    from actlabel.refine import MIN_REVIEWS

    if project.store.reviewed_count() >= MIN_REVIEWS:
        _say(progress, "refining the machine labels with the reviews so far")
        _say(progress, str(project.refine(progress=progress)))
    _say(progress, "training the critic on the reviews so far")
    _say(progress, str(project.critique(strategy="learned", progress=progress)))


def _main_budget(project: Project, max_budget: str) -> int:
    """All reviews the demo spends: the pilot's recommendation, capped by --max-budget."""
    from actlabel import select as rules

    n = project.store.count_items()
    cap = rules.budget_from_spec(str(max_budget), n)
    meta = project.store.get_meta("demo_budget")
    if meta is not None:
        return int(meta)
    from actlabel.selection import recommended_budget

    target = min(cap, recommended_budget(project.store))
    project.store.set_meta("demo_budget", str(target))
    return target


def _train_features(
    project: Project, spec: DemoSpec, root: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frozen features for the pool items and the test set, and the test labels (class indices)."""
    from actlabel.models import features

    names = project.task.label_names
    items = list(project.store.iter_items())
    if spec.kind == "text":
        with (root / "data" / "test.csv").open(encoding="utf-8") as fh:
            test = list(csv.DictReader(fh))
        train_x = features.cached_text_features([it.data["text"] for it in items], root)
        test_x = features.cached_text_features([r["text"] for r in test], root)
        test_y = np.array([names.index(r["gold"]) for r in test])
    else:
        train_x = features.cached_image_features([it.image_path for it in items], root)
        test_images = np.load(root / "data" / "test_images.npy")
        test_dir = root / "data" / "test_images"
        test_dir.mkdir(exist_ok=True)
        paths = []
        for k, img in enumerate(test_images):
            path = test_dir / f"{k}.png"
            if not path.exists():
                datasets.write_png(img, path)
            paths.append(str(path))
        test_x = features.cached_image_features(paths, root)
        test_y = np.load(root / "data" / "test_labels.npy")
    return train_x, test_x, test_y


def _downstream(
    project: Project, spec: DemoSpec, root: Path, seed: int, progress: bool
) -> list[dict[str, Any]]:
    from actlabel.downstream import compare_training_sets
    from actlabel.selection import current_state

    names = project.task.label_names
    state = current_state(project.store)
    golds = {it.rowid: it.gold_label for it in project.store.iter_items()}
    train_x, test_x, test_y = _train_features(project, spec, root)
    gold = np.array([names.index(golds[int(r)]) for r in state.rowids])
    reviewed = state.reviewed
    human = np.array([names.index(h) if h is not None else -1 for h in state.human_label])
    # An item the annotator failed on has no machine label: the reviewed label stands in, and an
    # unreviewed one cannot be used for training by any method.
    machine = np.array(
        [
            names.index(m) if m is not None else (human[k] if reviewed[k] else -1)
            for k, m in enumerate(state.machine_label)
        ]
    )
    keep = machine >= 0
    # "Machine labels alone" are the annotator's, before any review refined them: the refined
    # labels already carry what the reviews taught, so they belong to ACT, not to its baseline.
    from actlabel.refine import unrefined_labels

    alone = unrefined_labels(project.store)
    unrefined = np.array(
        [names.index(alone[int(r)]) if int(r) in alone else machine[k] for k, r in enumerate(state.rowids)]
    )
    pi = np.where(reviewed, np.nan_to_num(state.review_prob, nan=1.0), 1.0)
    _say(progress, "training downstream classifiers on frozen features (full human, full machine, ACT)")
    rows = compare_training_sets(
        train_x[keep], test_x, test_y, gold=gold[keep], machine=machine[keep], human=human[keep],
        reviewed=reviewed[keep], review_prob=pi[keep], n_classes=len(names), seed=seed,
        machine_alone=unrefined[keep],
    )  # fmt: skip
    table = [r.as_dict() for r in rows]
    table.append(
        _random_review_row(
            project,
            np.asarray(state.rowids)[keep],
            train_x[keep],
            test_x,
            test_y,
            gold[keep],
            unrefined[keep],
            int(reviewed[keep].sum()),
            seed,
        )
    )
    machine_acc = float((machine[keep] == gold[keep]).mean())
    final = np.where(reviewed, human, machine)
    note = (
        f"{spec.name}: linear classifier on frozen {'MiniLM text embeddings' if spec.kind == 'text' else 'EfficientNet-Lite0 image features'}"
        f", {int(keep.sum())} training items, {len(test_y)} held-out test items; machine label accuracy "
        f"{machine_acc:.3f}, final label accuracy {float((final[keep] == gold[keep]).mean()):.3f}"
    )
    project.store.set_meta("downstream", json.dumps({"rows": table, "note": note}))
    return table


#: seeds of the random-review baseline (its accuracy is their mean)
RANDOM_REVIEW_SEEDS = 3


def _random_review_row(
    project: Project,
    rowids: np.ndarray,
    train_x: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    gold: np.ndarray,
    unrefined: np.ndarray,
    budget: int,
    seed: int,
) -> dict[str, Any]:
    """The baseline ACT must beat: the same number of reviews spent uniformly at random, the
    machine labels refined with those reviews exactly as ACT's are (cross-fitted, nothing stored),
    trained with the same ACT loss (review_prob = budget / N for every item)."""
    from actlabel.downstream import LinearACTClassifier
    from actlabel.refine import MIN_REVIEWS, refined_distributions

    names = project.task.label_names
    n = len(gold)
    accs = []
    for s in range(RANDOM_REVIEW_SEEDS):
        rng = np.random.default_rng(seed + 1000 + s)
        reviewed = np.zeros(n, dtype=bool)
        reviewed[rng.choice(n, size=min(budget, n), replace=False)] = True
        machine = unrefined
        if reviewed.sum() >= MIN_REVIEWS:
            draw = {int(r): names[int(g)] for r, g, d in zip(rowids, gold, reviewed, strict=True) if d}
            ref = refined_distributions(project.store, draw)
            label_of = dict(zip(ref.rowids, ref.probs.argmax(axis=1), strict=True))
            machine = np.array([label_of.get(int(r), m) for r, m in zip(rowids, unrefined, strict=True)])
        pi = np.full(n, max(budget, 1) / n)
        clf = LinearACTClassifier(len(names), seed=seed)
        accs.append(
            clf.fit(train_x, machine, np.where(reviewed, gold, -1), reviewed, pi).score(test_x, test_y)
        )
    return {
        "training data": f"random review, same budget, labels refined the same way (mean of {RANDOM_REVIEW_SEEDS} draws)",
        "test accuracy": round(float(np.mean(accs)), 4),
        "human reviews": budget,
        "budget (share of items)": round(budget / n, 4),
    }


def gap_closed(human: float, machine: float, act: float) -> float | None:
    """(ACT - machine) / (human - machine): the share of the machine-to-human gap ACT closed."""
    return None if human - machine <= 1e-9 else (act - machine) / (human - machine)


def run_demo(
    *,
    dataset: str = "tweets",
    size: int | None = None,
    directory: str = "demo-project",
    model: str | None = None,
    seed: int = 0,
    max_budget: str = "20%",
    llm_critic: str | None = None,
    rounds: int = DEMO_ROUNDS,
    test_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    if dataset not in SPECS:
        raise UserError(f"unknown demo dataset {dataset!r} (use {', '.join(SPECS)})")
    spec = SPECS[dataset]
    if test_size is not None:
        import dataclasses

        spec = dataclasses.replace(spec, test_size=test_size)
    size = size or spec.default_size
    started = time.perf_counter()
    root = Path(directory)
    if model is None:
        # images: the few-shot image annotator; image+text: it pooled with the demo's text model
        model = {
            "text": DEMO_MODEL,
            "image": None,
            "image+text": ModelSpec.composite(IMAGE_ANNOTATOR_SPEC, DEMO_MODEL).text,
        }[spec.kind]
    elif spec.kind == "image+text" and ModelSpec.parse(model).can("embedded"):
        model = ModelSpec.composite(IMAGE_ANNOTATOR_SPEC, model).text
    elif spec.kind == "image" and ModelSpec.parse(model).can("embedded"):
        raise UserError(f"the {spec.name} demo labels images with the offline image annotator; omit --model")
    # the stages below nest in this one lock: the demo is one writer from its first stage to the report
    with _open_or_create(root, spec, size, seed, progress) as project, project.writing("demo"):
        _say(progress, "annotating every item with the embedded model")
        _say(progress, str(project.annotate(model=model, progress=progress)))
        # Before the pilot only: once reviews refine the labels, the learned critic takes over (an
        # LLM critic re-run on the refined labels would pay for new calls on every re-run).
        if llm_critic and spec.kind != "image" and project.store.last_round() == 0:
            _say(progress, f"criticizing with the embedded LLM ({llm_critic})")
            _say(progress, str(project.critique(model=model, strategy=llm_critic, progress=progress)))
        if project.store.last_round() == 0:
            _say(progress, str(project.select(budget="auto", seed=seed)))
        _review(project, progress, seed)
        if project.store.last_round() == 1:
            _learn_from_reviews(project, progress)
        target = _main_budget(project, max_budget)
        while project.store.last_round() <= rounds and project.store.reviewed_count() < target:
            left_rounds = rounds + 1 - project.store.last_round()
            size = max(1, -(-(target - project.store.reviewed_count()) // left_rounds))
            main_round = project.select(
                budget=str(size),
                rule="threshold",
                uniform=UNIFORM_SHARE,
                seed=seed + project.store.last_round(),
            )
            _say(progress, str(main_round))
            _review(project, progress, seed)
            _learn_from_reviews(project, progress)
        table = _downstream(project, spec, root, seed, progress)
        report = project.report(root / "report.html")
        status = project.status()
    elapsed = time.perf_counter() - started
    _print_summary(table, status, report, elapsed, progress)
    return {"downstream": table, "report": str(report), "elapsed_s": elapsed}


def residual_line(r: ResidualErrorEstimate) -> str:
    """The estimate is unbiased, hence unclipped (metrics.py): shown within what is possible, with
    the raw figure beside it when it falls outside, so the point never sits outside its interval."""
    shown = min(max(r.estimate, 0.0), float(r.n_unreviewed))
    raw = f", unbiased estimate {r.estimate:.0f}" if round(shown) != round(r.estimate) else ""
    return (
        f"errors left among the {r.n_unreviewed} unreviewed labels: about {shown:.0f} "
        f"(95% CI {r.lower:.0f} to {r.upper:.0f}{raw})"
    )


def _print_summary(
    table: list[dict[str, Any]], status: Any, report: Path, elapsed: float, progress: bool
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="Downstream test accuracy by training data")
    for col in table[0]:
        t.add_column(col)
    for row in table:
        t.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(t)
    human = table[0]["test accuracy"]
    machine = table[1]["test accuracy"]
    act = table[2]["test accuracy"]
    share = gap_closed(human, machine, act)
    closed = (
        f"ACT closed {100 * share:.0f}% of the machine-to-human gap"
        if share is not None
        else "machine labels trained as well as human labels (no gap to close)"
    )
    random_row = table[3] if len(table) > 3 else None
    console.print(
        f"{closed}: {100 * (act - human):+.1f} points from full human labels "
        f"with {table[2]['human reviews']} of {table[0]['human reviews']} items reviewed "
        f"({100 * table[2]['budget (share of items)']:.1f}%)"
        + (
            f"; random review at the same budget: {random_row['test accuracy']:.3f} "
            f"(ACT {'+' if act >= random_row['test accuracy'] else ''}{100 * (act - random_row['test accuracy']):.1f} points)"
            if random_row
            else ""
        )
    )
    if status.residual is not None and status.residual.identifiable:
        console.print(residual_line(status.residual))
    console.print(f"report: {report}   ({elapsed:.0f} s)")
