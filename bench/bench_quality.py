"""The evidence for issue 12: does a model trained on ACT data land close to one trained on full
human labels, on every real dataset the embedded defaults label offline?

    python bench/bench_quality.py prepare --datasets tweets60 --size 1000    # annotate a pool once
    python bench/bench_quality.py run --datasets fashion,tweets60 --seeds 5 --budgets 5,10,20,30

Pools (annotated ONCE into /tmp/quality-bench/pools/<name>-<size>; every run works on a copy of
the project folder, so the model calls and the frozen-feature cache are reused):
- fashion: Fashion-MNIST t10k, the few-shot EfficientNet image annotator (`annotate(store)` with
  the default model, as the demo), 5 examples per class;
- fashion-captions: the same images with template captions that carry NO label information
  (there is no offline image+text dataset with human labels), the composite image+text annotator;
- tweets60 / tweets80: CrowdFlower tweets at crowd agreement >= 0.6 / >= 0.8, local/qwen2.5-0.5b,
  3 examples per class. tweets80 is the subset of the tweets60 pool (and of its test set) whose
  agreement is >= 0.8, annotated with the same prompt (its model calls are served from the
  tweets60 project's response cache): one LLM pass labels both;
- r8: Reuters R8 (train split pool, test split held out), local/qwen2.5-0.5b, 1 example per class.

Per dataset, seed and budget: the ACT pipeline as the demo runs it (pilot with budget="auto",
simulated gold review, refine, stacked critic, rounds of rule + 5% uniform, each followed by
review, refine, critic retrain) for each rule; random review at the same budget; downstream
with the linear classifier and the MLP on the same frozen features.
Writes the `## Quality: ACT vs full human labels` section of docs/benchmarks.md and
docs/img/quality-*.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import machine_line, write_section  # noqa: E402

from actlabel import datasets  # noqa: E402
from actlabel.project import Project  # noqa: E402
from actlabel.task import Example, Label  # noqa: E402

WORK = Path("/tmp/quality-bench")
TEXT_MODEL = "local/qwen2.5-0.5b"
TWEETS_INSTRUCTIONS = "Classify the sentiment the author of the tweet expresses."
R8_INSTRUCTIONS = "Classify the Reuters newswire article by its main topic."
FASHION_INSTRUCTIONS = "Classify the clothing item in the product photo."
FASHION_CAPTION_INSTRUCTIONS = "Classify the clothing item from its product photo and its caption."
TEXT_TEST = 1500
R8_TEST = 1000
IMAGE_TEST = 2000
POOL_SEED = 0


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _shots(texts: list[str], labels: list[str], idx: np.ndarray, per_class: int) -> list[Example]:
    out: list[Example] = []
    count: dict[str, int] = {}
    for i in idx:
        lab = labels[i]
        if count.get(lab, 0) < per_class:
            count[lab] = count.get(lab, 0) + 1
            out.append(Example(label=lab, text=texts[i]))
    return out


def _init(root: Path, ds: datasets.TextDataset, instructions: str, shots: list[Example]) -> Project:
    labels = [Label(n, ds.descriptions.get(n, "")) for n in ds.label_names]
    return Project.init(root, labels, instructions=instructions, examples=shots)


def build_text_pool(name: str, size: int, root: Path) -> Project:
    """A text pool (items.csv: text, gold) and its held-out test set (data/test.csv)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    if name == "tweets60":
        ds = datasets.load_tweets(min_agreement=0.6)
        n_shots = 3 * len(ds.label_names)
        pool, shot_idx, test = datasets.stratified_split(ds.labels, (size, n_shots * 4, TEXT_TEST), POOL_SEED)
        shots = _shots(ds.texts, ds.labels, shot_idx, 3)
        test_rows = [{"text": ds.texts[i], "gold": ds.labels[i]} for i in test]
        instructions = TWEETS_INSTRUCTIONS
    elif name == "r8":
        ds = datasets.load_reuters_r8("train")
        held = datasets.load_reuters_r8("test")
        n_shots = len(ds.label_names)
        pool, shot_idx = datasets.stratified_split(ds.labels, (size, n_shots * 4), POOL_SEED)
        shots = _shots(ds.texts, ds.labels, shot_idx, 1)
        pick = np.random.default_rng(POOL_SEED).permutation(len(held.texts))[:R8_TEST]
        test_rows = [{"text": held.texts[i], "gold": held.labels[i]} for i in pick]
        instructions = R8_INSTRUCTIONS
    else:
        raise SystemExit(f"no text pool recipe for {name}")
    _write_rows(data / "items.csv", [{"text": ds.texts[i], "gold": ds.labels[i]} for i in pool])
    _write_rows(data / "test.csv", test_rows)
    project = _init(root, ds, instructions, shots)
    project.import_file(data / "items.csv", text_columns=["text"], gold_column="gold")
    (root / "pool.json").write_text(json.dumps({"dataset": name, "size": size, "source": ds.source}))
    return project


def build_tweets80(src: Path, root: Path) -> Project:
    """The agreement >= 0.8 subset of the tweets60 pool and test set, with the same task and prompt;
    the tweets60 response cache is copied so annotating it costs no new model calls."""
    strict = set(datasets.load_tweets(min_agreement=0.8).texts)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for fname in ("items.csv", "test.csv"):
        with (src / "data" / fname).open(encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["text"] in strict]
        _write_rows(data / fname, rows)
    with Project(src) as source:
        task = source.store.task
        project = Project.init(
            root, list(task.labels), instructions=task.instructions, examples=list(task.examples)
        )
    project.import_file(data / "items.csv", text_columns=["text"], gold_column="gold")
    project.store.conn.execute("ATTACH DATABASE ? AS src", (str(src / "actlabel.db"),))
    project.store.conn.execute("INSERT OR IGNORE INTO model_calls SELECT * FROM src.model_calls")
    project.store.conn.commit()
    project.store.conn.execute("DETACH DATABASE src")
    n = project.store.count_items()
    (root / "pool.json").write_text(
        json.dumps({"dataset": "tweets80", "size": n, "source": "tweets60 pool, crowd agreement >= 0.8"})
    )
    return project


def prepare(name: str, size: int) -> Path:
    from actlabel.annotate import annotate

    root = WORK / "pools" / f"{name}-{size}"
    done = root / "annotated.json"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    if name == "tweets80":
        project = build_tweets80(WORK / "pools" / f"tweets60-{size}", root)
    elif name in ("tweets60", "r8"):
        project = build_text_pool(name, size, root)
    else:
        project = build_image_pool(name, size, root)
    with project:
        model = None if name == "fashion" else TEXT_MODEL
        if name == "fashion-captions":
            from actlabel.models.features import IMAGE_ANNOTATOR_SPEC

            model = f"composite/{IMAGE_ANNOTATOR_SPEC.split('/')[1]}+{TEXT_MODEL}"
        result = annotate(project.store, model=model, progress=False)
        print(result, flush=True)
        _features(project, root)
    done.write_text(json.dumps({"seconds": time.perf_counter() - t0, "summary": str(result)}))
    return root


def build_image_pool(name: str, size: int, root: Path) -> Project:
    images, labels = datasets.load_fashion_mnist("t10k")
    names = datasets.FASHION_NAMES
    str_labels = [names[k] for k in labels]
    pool, shot_idx, test = datasets.stratified_split(str_labels, (size, 5 * len(names) * 4, IMAGE_TEST), POOL_SEED)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "examples").mkdir(parents=True, exist_ok=True)
    (data / "test_images").mkdir(parents=True, exist_ok=True)
    captions = name == "fashion-captions"
    from actlabel.demo import CAPTION_TEMPLATES

    rows = []
    for k, i in enumerate(pool):
        path = data / "images" / f"{int(i)}.png"
        datasets.write_png(images[i], path)
        row = {"image": f"images/{int(i)}.png", "gold": str_labels[i]}
        if captions:
            row["caption"] = CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)].format(k=k)
        rows.append(row)
    _write_rows(data / "items.csv", rows)
    shots, count = [], {}
    for i in shot_idx:
        lab = str_labels[i]
        if count.get(lab, 0) < 5:
            count[lab] = count.get(lab, 0) + 1
            path = data / "examples" / f"{int(i)}.png"
            datasets.write_png(images[i], path)
            shots.append(Example(label=lab, image=str(path.resolve()), text=CAPTION_TEMPLATES[0] if captions else ""))
    for k, i in enumerate(test):
        datasets.write_png(images[i], data / "test_images" / f"{k}.png")
    np.save(data / "test_labels.npy", labels[test])
    project = Project.init(
        root,
        [Label(n, d) for n, d in zip(names, datasets.FASHION_DESCRIPTIONS, strict=True)],
        instructions=FASHION_CAPTION_INSTRUCTIONS if captions else FASHION_INSTRUCTIONS,
        examples=shots,
    )
    roles: dict[str, Any] = {"image_column": "image", "gold_column": "gold"}
    if captions:
        roles["text_columns"] = ["caption"]
    project.import_file(data / "items.csv", **roles)
    (root / "pool.json").write_text(json.dumps({"dataset": name, "size": size, "source": "Fashion-MNIST t10k"}))
    return project


def _features(project: Project, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frozen features of the pool (store order) and of the test set, and the test labels."""
    from actlabel.models import features

    names = project.store.task.label_names
    items = list(project.store.iter_items())
    if items[0].image_path is None:
        with (root / "data" / "test.csv").open(encoding="utf-8") as fh:
            test = list(csv.DictReader(fh))
        train_x = features.cached_text_features([it.data["text"] for it in items], root)
        test_x = features.cached_text_features([r["text"] for r in test], root)
        test_y = np.array([names.index(r["gold"]) for r in test])
    else:
        train_x = features.cached_image_features([it.image_path for it in items], root)
        n_test = len(np.load(root / "data" / "test_labels.npy"))
        paths = [str(root / "data" / "test_images" / f"{k}.png") for k in range(n_test)]
        test_x = features.cached_image_features(paths, root)
        test_y = np.load(root / "data" / "test_labels.npy")
    return np.asarray(train_x), np.asarray(test_x), np.asarray(test_y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--datasets", required=True)
    p.add_argument("--size", type=int, default=1000)
    args = ap.parse_args()
    if args.cmd == "prepare":
        for name in args.datasets.split(","):
            print(name, prepare(name, args.size), flush=True)


if __name__ == "__main__":
    main()
