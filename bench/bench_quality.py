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
  agreement is >= 0.8, with the same prompt;
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
    return [Example(label=labels[i], text=texts[i]) for i in datasets.first_per_label(labels, idx, per_class)]


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


def build_subset(src: Path, root: Path, name: str, keep_items: Any, keep_test: Any, source: str) -> Project:
    """A pool made of some items (and test rows) of an annotated pool, with the same task and
    prompt, and its response cache copied. Measured once: the copied calls were NOT hits (0 of the
    first 17: the cause, some part of the cache key that differs between the projects, was not
    found in the time), so annotating the subset costs new model calls."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for fname, keep in (("items.csv", keep_items), ("test.csv", keep_test)):
        with (src / "data" / fname).open(encoding="utf-8") as fh:
            rows = [r for k, r in enumerate(csv.DictReader(fh)) if keep(k, r)]
        _write_rows(data / fname, rows)
    with Project(src) as source_project:
        task = source_project.store.task
        project = Project.init(
            root, list(task.labels), instructions=task.instructions, examples=list(task.examples)
        )
    project.import_file(data / "items.csv", text_columns=["text"], gold_column="gold")
    project.store.response_cache().copy_from(src / "actlabel.db")
    n = project.store.count_items()
    (root / "pool.json").write_text(json.dumps({"dataset": name, "size": n, "source": source}))
    return project


def build_tweets80(src: Path, root: Path) -> Project:
    """The crowd agreement >= 0.8 subset of the tweets60 pool and of its test set."""
    strict = set(datasets.load_tweets(min_agreement=0.8).texts)

    def keep(_k: int, row: dict) -> bool:
        return row["text"] in strict

    return build_subset(
        src, root, "tweets80", keep, keep, "the tweets60 pool's items with crowd agreement >= 0.8"
    )


def truncate(name: str, size: int, first: int) -> Path:
    """The first `first` items of a pool whose annotation was stopped (items are imported in a
    random order, so a prefix is a uniform sample), re-annotated (see build_subset)."""
    from actlabel.annotate import annotate

    src = WORK / "pools" / f"{name}-{size}"
    root = WORK / "pools" / f"{name}-{first}"
    if root.exists():
        shutil.rmtree(root)
    project = build_subset(
        src,
        root,
        name,
        lambda k, _r: k < first,
        lambda _k, _r: True,
        f"first {first} items of the {size}-item pool",
    )
    with project:
        result = annotate(project.store, model=TEXT_MODEL, progress=False)
        print(result, flush=True)
        _features(project, root)
    (root / "annotated.json").write_text(json.dumps({"summary": str(result)}))
    return root


def prepare(name: str, size: int) -> Path:
    from actlabel.annotate import annotate

    root = WORK / "pools" / f"{name}-{size}"
    if name == "tweets80":  # named after the tweets60 pool it is cut from
        root = WORK / "pools" / f"tweets80-{pool_path('tweets60').name.rsplit('-', 1)[1]}"
    done = root / "annotated.json"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    if name == "tweets80":
        project = build_tweets80(pool_path("tweets60"), root)
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
    pool, shot_idx, test = datasets.stratified_split(
        str_labels, (size, 5 * len(names) * 4, IMAGE_TEST), POOL_SEED
    )
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
            shots.append(
                Example(label=lab, image=str(path.resolve()), text=CAPTION_TEMPLATES[0] if captions else "")
            )
    for k, i in enumerate(test):
        datasets.write_png(images[i], data / "test_images" / f"{k}.png")
    np.save(data / "test_labels.npy", labels[test])
    plain = WORK / "pools" / f"fashion-{size}" / ".features"
    if captions and plain.is_dir():
        # the same images: the fashion pool's image-feature cache (keyed on content) serves them
        shutil.copytree(plain, root / ".features")
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
    (root / "pool.json").write_text(
        json.dumps({"dataset": name, "size": size, "source": "Fashion-MNIST t10k"})
    )
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


RESULTS = WORK / "results.jsonl"
RUNS = WORK / "runs"
#: after the pilot, as the demo: rounds of rule + UNIFORM_SHARE, the critic retrained after each
ROUNDS = 2
UNIFORM_SHARE = 0.05


def _copy(pool: Path, tag: str) -> Path:
    dst = RUNS / tag
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(pool, dst, ignore=shutil.ignore_patterns(".actlabel.lock"))
    return dst


def _learn(store: Any) -> None:
    from actlabel.critique import critique
    from actlabel.refine import MIN_REVIEWS, refine_labels

    if store.reviewed_count() >= MIN_REVIEWS:
        refine_labels(store, progress=False)
    critique(store, strategy="learned", progress=False)


def _snapshot(store: Any) -> dict[str, np.ndarray]:
    """Current labels, review state and critic scores as class-index arrays in store order."""
    from actlabel.selection import current_state

    names = list(store.task.label_names)
    st = current_state(store)
    golds = {it.rowid: it.gold_label for it in store.iter_items()}
    gold = np.array([names.index(golds[int(r)]) for r in st.rowids])
    human = np.array([names.index(h) if h is not None else -1 for h in st.human_label])
    reviewed = st.reviewed
    machine = np.array(
        [
            names.index(m) if m is not None else (human[k] if reviewed[k] else -1)
            for k, m in enumerate(st.machine_label)
        ]
    )
    pi = np.where(reviewed, np.nan_to_num(st.review_prob, nan=1.0), 1.0)
    return {
        "gold": gold,
        "machine": machine,
        "human": human,
        "reviewed": reviewed,
        "pi": pi,
        "error": st.error_prob,
    }


def _residual(store: Any, snap: dict[str, np.ndarray]) -> dict[str, float]:
    """The status line's residual-error estimate (every round) and the last round's alone, with
    the true number of wrong machine labels left among the unreviewed items."""
    from actlabel.metrics import residual_error_estimate
    from actlabel.residual import estimate_for_store
    from actlabel.selection import current_state

    st = current_state(store)
    has = st.machine_label.present()
    reviewed = st.reviewed & has
    wrong = (snap["machine"] != snap["gold"])[has]
    is_error = np.where(reviewed[has], snap["machine"][has] != snap["human"][has], -1)
    last = residual_error_estimate(
        is_error, reviewed[has], np.nan_to_num(st.review_prob, nan=0.0)[has],
        np.clip(np.nan_to_num(st.error_prob, nan=0.0), 0, 1)[has],
    )  # fmt: skip
    every = estimate_for_store(store)
    return {
        "left": int((wrong & ~reviewed[has]).sum()),
        "estimate": every.estimate,
        "lower": every.lower,
        "upper": every.upper,
        "last_estimate": last.estimate,
        "last_lower": last.lower,
        "last_upper": last.upper,
    }


def critic_metrics(error: np.ndarray, wrong: np.ndarray, k: int) -> dict[str, float | None]:
    """AUROC, AUPRC and precision of the top-k against gold, on the given (unreviewed) items."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ok = ~np.isnan(error)
    e, y = error[ok], wrong[ok]
    if len(np.unique(y)) < 2:
        return {"auroc": None, "auprc": None, "prec@B": None}
    top = np.argsort(-e, kind="stable")[: max(1, min(k, len(e)))]
    return {
        "auroc": float(roc_auc_score(y, e)),
        "auprc": float(average_precision_score(y, e)),
        "prec@B": float(y[top].mean()),
    }


def _downstream(x: np.ndarray, tx: np.ndarray, ty: np.ndarray, snap: dict, seed: int, n_classes: int) -> dict:
    from actlabel.downstream import LinearACTClassifier, MLPACTClassifier

    keep = snap["machine"] >= 0
    out = {}
    for name, cls in (("linear", LinearACTClassifier), ("mlp", MLPACTClassifier)):
        clf = cls(n_classes, seed=seed)
        clf.fit(x[keep], snap["machine"][keep], snap["human"][keep], snap["reviewed"][keep], snap["pi"][keep])
        out[name] = clf.score(tx, ty)
    return out


def _done() -> set[str]:
    if not RESULTS.exists():
        return set()
    return {json.loads(line)["key"] for line in RESULTS.read_text().splitlines() if line.strip()}


def _record(row: dict) -> None:
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def pool_baselines(name: str, pool: Path, seeds: list[int], done: set[str]) -> None:
    """Once per pool: annotator accuracy, zero-review critic vs gold; per seed: full human / full
    machine downstream (the training seed is the only randomness)."""
    from actlabel.critique import critique

    with Project(pool) as project:
        x, tx, ty = _features(project, pool)
        n_classes = len(project.store.task.label_names)
    key = f"{name}|zero"
    if key not in done:
        run = _copy(pool, f"{name}-zero")
        with Project(run) as project:
            store = project.store
            store.acquire_writer("bench")
            t0 = time.perf_counter()
            critique(store, strategy="consistency", progress=False)
            secs = time.perf_counter() - t0
            snap = _snapshot(store)
            current = store.current_annotations()
            conf = np.array(
                [
                    current[r].confidence if r in current and current[r].confidence is not None else np.nan
                    for r in store.item_rowids()
                ]
            )
        wrong = snap["machine"] != snap["gold"]
        _record({
            "key": key, "kind": "zero", "dataset": name, "n": int(len(wrong)), "n_test": int(len(ty)),
            "machine_acc": float(1 - wrong.mean()), "consistency_seconds": secs,
            "consistency": critic_metrics(snap["error"], wrong, int(0.2 * len(wrong))),
            "confidence": critic_metrics(1 - conf, wrong, int(0.2 * len(wrong))),
        })  # fmt: skip
        shutil.rmtree(run)
    with Project(pool) as project:
        base = _snapshot(project.store)
    n = len(base["gold"])
    for seed in seeds:
        key = f"{name}|full|{seed}"
        if key in done:
            continue
        human = dict(
            base,
            human=base["gold"],
            reviewed=np.ones(n, bool),
            pi=np.ones(n),
            machine=np.where(base["machine"] >= 0, base["machine"], base["gold"]),
        )
        machine = dict(base, reviewed=np.zeros(n, bool), pi=np.ones(n))
        _record({
            "key": key, "kind": "full", "dataset": name, "seed": seed,
            "human": _downstream(x, tx, ty, human, seed, n_classes),
            "machine": _downstream(x, tx, ty, machine, seed, n_classes),
        })  # fmt: skip


def run_random(name: str, pool: Path, seed: int, budget: int) -> dict:
    """Random review at the same budget: a uniform draw of B items (a pilot of B items),
    reviewed, refined with those reviews, trained with the same ACT loss (pi = B / N)."""
    from actlabel.refine import MIN_REVIEWS, refine_labels
    from actlabel.review.simulate import simulate_review
    from actlabel.selection import select_for_review

    run = _copy(pool, f"{name}-random-{budget}-{seed}")
    t0 = time.perf_counter()
    with Project(run) as project:
        store = project.store
        store.acquire_writer("bench")
        n = store.count_items()
        b = max(1, round(budget / 100 * n))
        plain = _snapshot(store)
        # a uniform pilot of exactly b items is the uniform draw (no critic needed)
        select_for_review(store, budget="auto", pilot_size=b, seed=seed)
        simulate_review(store, source="gold", error_rate=0.0, seed=seed)
        raw = _snapshot(store)
        raw = dict(raw, machine=plain["machine"])
        if store.reviewed_count() >= MIN_REVIEWS:
            refine_labels(store, progress=False)
        snap = _snapshot(store)
        x, tx, ty = _features(project, run)
        k = len(store.task.label_names)
    shutil.rmtree(run)
    return {
        "final_acc": float(
            (np.where(snap["reviewed"], snap["human"], snap["machine"]) == snap["gold"]).mean()
        ),
        "refined_acc": float((snap["machine"] == snap["gold"]).mean()),
        "reviews": int(snap["reviewed"].sum()),
        "downstream": _downstream(x, tx, ty, snap, seed, k),
        "downstream_norefine": _downstream(x, tx, ty, raw, seed, k),
        "seconds": time.perf_counter() - t0,
    }


def run_act(
    name: str,
    pool: Path,
    seed: int,
    budget: int,
    rule: str,
    rounds_after_pilot: int | None = None,
    uniform: float | None = None,
) -> dict:
    """The demo's pipeline at a fixed total budget: pilot, review, refine, stacked critic, then
    ROUNDS rounds of `rule` + UNIFORM_SHARE uniform, each reviewed and learned from (the
    `design` grid varies both)."""
    from actlabel.review.simulate import simulate_review
    from actlabel.selection import select_for_review

    n_rounds = ROUNDS if rounds_after_pilot is None else rounds_after_pilot
    share = UNIFORM_SHARE if uniform is None else uniform
    run = _copy(pool, f"{name}-{rule}-{budget}-{seed}-{n_rounds}-{share}")
    t0 = time.perf_counter()
    with Project(run) as project:
        store = project.store
        store.acquire_writer("bench")
        n = store.count_items()
        target = max(1, round(budget / 100 * n))
        # the auto pilot (max(30, 5%)), but at most half the budget: every budget keeps a round
        # chosen by the critic
        pilot = min(max(30, -(-5 * n // 100)), max(10, target // 2))
        select_for_review(store, budget="auto", seed=seed, pilot_size=pilot)
        simulate_review(store, source="gold", error_rate=0.0, seed=seed)
        _learn(store)
        rounds = 1
        while rounds <= n_rounds and store.reviewed_count() < target:
            left = n_rounds + 1 - rounds
            size = max(1, -(-(target - store.reviewed_count()) // left))
            select_for_review(store, budget=str(size), rule=rule, uniform=share, seed=seed + rounds)
            simulate_review(store, source="gold", error_rate=0.0, seed=seed)
            _learn(store)
            rounds += 1
        snap = _snapshot(store)
        residual = _residual(store, snap)
        x, tx, ty = _features(project, run)
        k = len(store.task.label_names)
    shutil.rmtree(run)
    unrev = ~snap["reviewed"]
    wrong = snap["machine"] != snap["gold"]
    return {
        "residual": residual,
        "final_acc": float(
            (np.where(snap["reviewed"], snap["human"], snap["machine"]) == snap["gold"]).mean()
        ),
        "refined_acc": float((~wrong).mean()),
        "reviews": int(snap["reviewed"].sum()),
        "critic": critic_metrics(snap["error"][unrev], wrong[unrev], target),
        "downstream": _downstream(x, tx, ty, snap, seed, k),
        "seconds": time.perf_counter() - t0,
    }


def pool_path(name: str) -> Path:
    found = sorted(
        (WORK / "pools").glob(f"{name}-*/annotated.json"), key=lambda p: int(p.parent.name.rsplit("-", 1)[1])
    )
    if not found:
        raise SystemExit(
            f"no annotated pool for {name}: run `bench_quality.py prepare --datasets {name}` first"
        )
    return found[-1].parent


def run_grid(
    names: list[str], seeds: list[int], budgets: list[int], rules: list[str], normalized_at: int
) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    done = _done()
    for name in names:
        pool = pool_path(name)
        pool_baselines(name, pool, seeds, done)
    # seed-major: a grid stopped early still has every dataset and budget at the first seeds
    for seed in seeds:
        for name in names:
            pool = pool_path(name)
            for budget in budgets:
                plan = list(rules) + (["normalized"] if budget == normalized_at else [])
                for rule in ["random", *plan]:
                    key = f"{name}|{rule}|{budget}|{seed}"
                    if key in done:
                        continue
                    res = (
                        run_random(name, pool, seed, budget)
                        if rule == "random"
                        else run_act(name, pool, seed, budget, rule)
                    )
                    _record(
                        {
                            "key": key,
                            "kind": "act",
                            "dataset": name,
                            "rule": rule,
                            "budget": budget,
                            "seed": seed,
                            **res,
                        }
                    )


def run_design(
    names: list[str], seeds: list[int], budget: int, rule: str, rounds: list[int], uniforms: list[float]
) -> None:
    """The review design after the pilot: K rounds (the critic retrained after each) x the uniform
    share of each round, at one budget; the demo's and `actlabel run`'s defaults come from it."""
    RUNS.mkdir(parents=True, exist_ok=True)
    done = _done()
    for name in names:
        pool_baselines(name, pool_path(name), seeds, done)
    for seed in seeds:
        for name in names:
            pool = pool_path(name)
            for k in rounds:
                for u in uniforms:
                    key = f"{name}|design|{rule}|{budget}|{k}|{u}|{seed}"
                    if key in done:
                        continue
                    res = run_act(name, pool, seed, budget, rule, rounds_after_pilot=k, uniform=u)
                    _record({
                        "key": key, "kind": "design", "dataset": name, "rule": rule, "budget": budget,
                        "rounds": k, "uniform": u, "seed": seed, **res,
                    })  # fmt: skip


def render_design(rows: list[dict], command: str, started: str) -> str | None:
    """Mean +- standard error of each design cell, with the share of the gap closed."""
    design = [r for r in rows if r.get("kind") == "design"]
    if not design:
        return None
    full: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("kind") == "full":
            for src in ("human", "machine"):
                for m in MODELS:
                    full.setdefault(r["dataset"], {}).setdefault(f"{src}-{m}", []).append(r[src][m])
    lines = [
        f"Command: `{command}`. {machine_line()}. Started {started}.",
        "",
        "After the pilot, the rest of the budget is spent in K rounds of the rule plus a uniform share u "
        "of each round; the critic and the labels learn from the reviews after every round. "
        "Downstream accuracy (linear / MLP, mean +- s.e. over seeds) and the share of the "
        "machine-to-human gap closed (linear).",
        "",
        "| dataset | budget | rule | K | u | seeds | final label acc. | critic AUROC (unreviewed) | "
        "downstream linear | downstream MLP | gap closed (linear) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple, list[dict]] = {}
    for r in design:
        cells.setdefault((r["dataset"], r["budget"], r["rule"], r["rounds"], r["uniform"]), []).append(r)
    for (name, budget, rule, k, u), rs in sorted(cells.items()):
        lin = _mse([r["downstream"]["linear"] for r in rs])
        mlp = _mse([r["downstream"]["mlp"] for r in rs])
        fin = _mse([r["final_acc"] for r in rs])
        auc = _mse([r["critic"]["auroc"] for r in rs])
        hum = np.mean(full.get(name, {}).get("human-linear", [np.nan]))
        mac = np.mean(full.get(name, {}).get("machine-linear", [np.nan]))
        share = _share(float(hum), float(mac), lin[0])
        closed = "-" if share is None else f"{share:.0%}"
        lines.append(
            f"| {name} | {budget}% | {rule} | {k} | {u:g} | {len(rs)} | {_fmt(fin)} | {_fmt(auc)} | "
            f"{_fmt(lin)} | {_fmt(mlp)} | {closed} |"
        )
    return "\n".join(lines)


# ---- the report ------------------------------------------------------------------------------

MODELS = ("linear", "mlp")
KIND = {"fashion": "image", "fashion-captions": "image", "tweets60": "text", "tweets80": "text", "r8": "text"}
ORDER = ("fashion", "fashion-captions", "tweets60", "tweets80", "r8")


def _mse(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


def load_results() -> list[dict]:
    if not RESULTS.exists():
        return []
    rows: dict[str, dict] = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["key"]] = row
    return list(rows.values())


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per dataset: the pool, the baselines and per (rule, budget) means over seeds."""
    out: dict[str, dict] = {}
    for name in [d for d in ORDER if any(r["dataset"] == d for r in rows)]:
        mine = [r for r in rows if r["dataset"] == name]
        zero = next((r for r in mine if r["kind"] == "zero"), None)
        full = {r["seed"]: r for r in mine if r["kind"] == "full"}
        d: dict[str, Any] = {"zero": zero, "cells": {}, "base": {}}
        for m in MODELS:
            d["base"][m] = {
                "human": _mse([r["human"][m] for r in full.values()]),
                "machine": _mse([r["machine"][m] for r in full.values()]),
            }
        for r in (r for r in mine if r["kind"] == "act"):
            d["cells"].setdefault((r["rule"], r["budget"]), []).append(r)
        cells = {}
        for (rule, budget), runs in d["cells"].items():
            c: dict[str, Any] = {"seeds": len(runs), "final_acc": _mse([r["final_acc"] for r in runs])}
            c["refined_acc"] = _mse([r["refined_acc"] for r in runs])
            c["reviews"] = float(np.mean([r["reviews"] for r in runs]))
            for key in ("auroc", "auprc", "prec@B"):
                c[key] = _mse([r["critic"][key] for r in runs if "critic" in r])
            res = [r["residual"] for r in runs if "residual" in r]
            if res:
                c["residual"] = {
                    "runs": len(res),
                    "left": float(np.mean([x["left"] for x in res])),
                    "estimate": float(np.mean([x["estimate"] for x in res])),
                    "covered": sum(x["lower"] <= x["left"] <= x["upper"] for x in res),
                    "width": float(np.mean([x["upper"] - x["lower"] for x in res])),
                    "last_estimate": float(np.mean([x["last_estimate"] for x in res])),
                    "last_covered": sum(x["last_lower"] <= x["left"] <= x["last_upper"] for x in res),
                    "last_width": float(np.mean([x["last_upper"] - x["last_lower"] for x in res])),
                }
            for m in MODELS:
                c[m] = _mse([r["downstream"][m] for r in runs])
                # paired with full machine labels at the same training seed: the never-hurts check
                diffs = [
                    r["downstream"][m] - full[r["seed"]]["machine"][m] for r in runs if r["seed"] in full
                ]
                c[f"{m}_vs_machine"] = _mse(diffs)
                if "downstream_norefine" in runs[0]:
                    c[f"{m}_norefine"] = _mse([r["downstream_norefine"][m] for r in runs])
            cells[(rule, budget)] = c
        d["cells"] = cells
        out[name] = d
    return out


def _share(human: float, machine: float, act: float) -> float | None:
    return None if human - machine <= 1e-9 else (act - machine) / (human - machine)


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 3) -> str:
    m, se = ms
    if np.isnan(m):
        return "-"
    return f"{m * scale:.{digits}f}" + ("" if np.isnan(se) else f" ± {se * scale:.{digits}f}")


def plot(summary: dict[str, dict], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, d in summary.items():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, m in zip(axes, MODELS, strict=True):
            for label, key, color in (("full human", "human", "black"), ("full machine", "machine", "grey")):
                mean, _se = d["base"][m][key]
                if not np.isnan(mean):
                    ax.axhline(mean, color=color, ls="--", lw=1, label=label)
            for rule, color, marker in (
                ("threshold", "tab:blue", "o"), ("exponential", "tab:green", "s"),
                ("random", "tab:red", "x"), ("normalized", "tab:purple", "v"),
            ):  # fmt: skip
                pts = sorted((b, c[m]) for (r, b), c in d["cells"].items() if r == rule)
                if not pts:
                    continue
                xs = [b for b, _ in pts]
                ys = [v[0] for _, v in pts]
                es = [0 if np.isnan(v[1]) else v[1] for _, v in pts]
                label = "random review" if rule == "random" else f"ACT {rule}"
                ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, capsize=3, label=label,
                            ls="none" if rule == "normalized" else "-")  # fmt: skip
            ax.set_title(f"{name}: {'linear' if m == 'linear' else 'MLP'}")
            ax.set_xlabel("share of items reviewed (%)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("downstream test accuracy")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = img_dir / f"quality-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def render(summary: dict[str, dict], command: str, started: str) -> str:
    load = os.getloadavg()
    pools = {}
    for name in summary:
        try:
            pools[name] = json.loads((pool_path(name) / "pool.json").read_text())
        except (SystemExit, OSError):
            pools[name] = {}
    lines = [
        f"Command: `{command}` ({started}; {machine_line()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        "a machine shared with other jobs)",
        "",
        "Every figure is a mean over seeds ± its standard error. Per seed: the ACT pipeline as the demo runs "
        "it on a copy of the annotated pool (uniform pilot of max(30, 5%) items capped at half the budget, "
        'simulated review with gold, `refine_labels`, `critique(strategy="learned")`, then 2 rounds of the '
        f"rule + {UNIFORM_SHARE:.0%} uniform, each reviewed, refined and the critic retrained), and random "
        "review: a uniform draw of the same number of items, reviewed and refined the same way. Downstream: "
        "`LinearACTClassifier` and `MLPACTClassifier` (their default loss) on the same frozen features, trained "
        "on the pool, tested on a held-out test set of the same dataset. Full machine = the annotator's labels, "
        "no review; full human = gold for every pool item. Gap = ACT - full human (points); closed = (ACT - "
        "machine) / (human - machine). Critic columns: the stacked critic's final scores against gold on the "
        "items left unreviewed (precision@B: the top B = budget items).",
        "",
        "Pools:",
        "",
    ]
    for name, d in summary.items():
        z = d["zero"] or {}
        info = pools.get(name, {})
        lines.append(
            f"- {name}: {z.get('n', info.get('size', '?'))} items ({info.get('source', '')}), "
            f"{z.get('n_test', '?')} test items; machine label accuracy {z.get('machine_acc', float('nan')):.3f}"
            + (
                " (the captions are templates with no label information: the image does all the work)"
                if name == "fashion-captions"
                else ""
            )
        )
    lines += [
        "",
        "Zero-review critic (consistency, no review, no model call) vs the annotator's confidence, against gold "
        "on every item (precision at a 20% budget):",
        "",
        "| dataset | consistency AUROC | AUPRC | precision@20% | confidence AUROC | target AUROC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in summary.items():
        z = d["zero"]
        if not z:
            continue
        c, f = z["consistency"], z["confidence"]
        target = 0.90 if KIND[name] == "image" else 0.85
        lines.append(
            f"| {name} | {c['auroc']:.3f} | {c['auprc']:.3f} | {c['prec@B']:.3f} | "
            f"{(f['auroc'] or float('nan')):.3f} | {target:.2f} ({'met' if c['auroc'] >= target else 'missed'}) |"
        )
    for name, d in summary.items():
        lines += ["", f"### {name}", ""]
        for m in MODELS:
            h, mach = d["base"][m]["human"], d["base"][m]["machine"]
            lines.append(f"- {m}: full human {_fmt(h)}, full machine {_fmt(mach)}")
        if not d["cells"]:
            lines += ["", "No ACT or random-review cells in this run (see the review-design section)."]
            continue
        lines += [
            "",
            "| budget | rule | seeds | reviews | final label acc | refined machine acc | critic AUROC | AUPRC | "
            "prec@B | linear | gap | closed | MLP | gap | closed |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rule_order = {"threshold": 0, "exponential": 1, "normalized": 2, "random": 3}
        for (rule, budget), c in sorted(
            d["cells"].items(), key=lambda kv: (kv[0][1], rule_order.get(kv[0][0], 9))
        ):
            cols = []
            for m in MODELS:
                h, mach = d["base"][m]["human"][0], d["base"][m]["machine"][0]
                sh = _share(h, mach, c[m][0])
                cols += [_fmt(c[m]), f"{100 * (c[m][0] - h):+.1f}", "-" if sh is None else f"{100 * sh:.0f}%"]
            lines.append(
                f"| {budget}% | {'random review' if rule == 'random' else rule} | {c['seeds']} | {c['reviews']:.0f} | "
                f"{_fmt(c['final_acc'])} | {_fmt(c['refined_acc'])} | {_fmt(c['auroc'])} | {_fmt(c['auprc'])} | "
                f"{_fmt(c['prec@B'])} | " + " | ".join(cols) + " |"
            )
        lines += ["", f"![{name}](img/quality-{name}.png)"]
        lines += _residual_table(d["cells"])
    lines += ["", "### Targets (issue 12)", ""] + targets(summary) + ["", LIMITS]
    return "\n".join(lines)


def _residual_table(cells: dict) -> list[str]:
    """The residual-error interval on the real runs: every round (what status prints) vs the last round."""
    rows = [
        (key, c["residual"])
        for key, c in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        if "residual" in c
    ]
    if not rows:
        return []
    out = [
        "",
        "Errors left among the unreviewed items after the rounds (`actlabel status`'s residual estimate, "
        "95% interval, against gold): every round's draw combined vs the last round's alone, mean over seeds.",
        "",
        "| budget | rule | runs | errors left | estimate (every round) | covered | width | estimate (last round) | covered | width |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (rule, budget), r in rows:
        out.append(
            f"| {budget}% | {rule} | {r['runs']} | {r['left']:.0f} | {r['estimate']:.0f} | {r['covered']}/{r['runs']} "
            f"| {r['width']:.0f} | {r['last_estimate']:.0f} | {r['last_covered']}/{r['runs']} | {r['last_width']:.0f} |"
        )
    return out


#: what limits the run recorded on 2026-12-01 (2 shared cores at load 5-10)
LIMITS = (
    "Limits of this run (2026-12-02, a machine at load 5-9): the text cells have 2-3 seeds (the seed "
    "draws the pilot, the rounds and the downstream initialisation); the tweets60 pool is 1,000 tweets "
    "annotated in full by the 0.5B model with its label model (accuracy 0.518), and tweets80 is its 589 "
    "items with crowd agreement >= 0.8 (fewer than the 1,000 the issue asks). Fashion cells took 200-460 s "
    "each here; the fashion cells (3 seeds, 10% and 20%) ran later at load 4-10 (28-660 s a cell). "
    "Budgets 5% and 30%, Reuters R8 and the image+text "
    "composite were not run: not measured."
)


def targets(summary: dict[str, dict]) -> list[str]:
    out = []
    for name, d in summary.items():
        notes = []
        if not any(r != "random" for r, _b in d["cells"]):
            out.append(f"- **{name}**: not measured: no ACT run finished in the time (baselines only)")
            continue
        for m in MODELS:
            h, mach = d["base"][m]["human"][0], d["base"][m]["machine"][0]
            hurts = [
                f"{r}@{b}%" for (r, b), c in d["cells"].items()
                if r != "random" and c[f"{m}_vs_machine"][0] + (0 if np.isnan(c[f"{m}_vs_machine"][1]) else c[f"{m}_vs_machine"][1]) < 0
            ]  # fmt: skip
            notes.append(
                f"never hurts ({m}): " + ("met" if not hurts else "missed at " + ", ".join(sorted(hurts)))
            )
            lose = [
                f"{r}@{b}%" for (r, b), c in d["cells"].items()
                if r in ("threshold", "exponential") and ("random", b) in d["cells"] and c[m][0] <= d["cells"][("random", b)][m][0]
            ]  # fmt: skip
            notes.append(
                f"beats random review ({m}): "
                + ("met" if not lose else "missed at " + ", ".join(sorted(lose)))
            )
            for budget, goal in ((20, 0.7), (10, 0.5)):
                best = [(r, _share(h, mach, c[m][0]), c[m][0]) for (r, b), c in d["cells"].items()
                        if b == budget and r in ("threshold", "exponential")]  # fmt: skip
                if not best:
                    continue
                rule, sh, acc = max(best, key=lambda t: -1e9 if t[1] is None else t[1])
                txt = "no gap" if sh is None else f"{100 * sh:.0f}%"
                notes.append(
                    f">= {goal:.0%} closed at {budget}% ({m}, best rule {rule}): {txt} "
                    + ("met" if sh is None or sh >= goal else "missed")
                    + (f", gap {100 * (acc - h):+.1f} points" if budget == 20 else "")
                )
        for budget in (10, 20):
            aurocs = [
                c["auroc"][0]
                for (r, b), c in d["cells"].items()
                if b == budget and r in ("threshold", "exponential")
            ]
            precs = [
                c["prec@B"][0]
                for (r, b), c in d["cells"].items()
                if b == budget and r in ("threshold", "exponential")
            ]
            if aurocs and budget == 10:
                goal = 0.95 if KIND[name] == "image" else 0.90
                notes.append(
                    f"stacked critic AUROC after 10%: {max(aurocs):.3f} vs {goal} {'met' if max(aurocs) >= goal else 'missed'}"
                )
            if precs:
                notes.append(
                    f"precision@B at {budget}%: {max(precs):.3f} vs 0.6 {'met' if max(precs) >= 0.6 else 'missed'}"
                )
        out.append(f"- **{name}**: " + "; ".join(notes))
    missing = [n for n in ORDER if n not in summary]
    if missing:
        out.append(f"- not measured at all (no annotated pool in the time): {', '.join(missing)}")
    gaps = []
    for name, d in summary.items():
        for m in MODELS:
            h = d["base"][m]["human"][0]
            accs = [
                c[m][0] for (r, b), c in d["cells"].items() if b == 20 and r in ("threshold", "exponential")
            ]
            if accs and 100 * (h - max(accs)) <= 2.0:
                gaps.append(f"{name} ({m})")
    n_ds = len({g.split(" (")[0] for g in gaps})
    out.append(
        f"- gap <= 2 points at 20% on at least two datasets: {'met' if n_ds >= 2 else 'missed'} "
        f"({', '.join(gaps) if gaps else 'none'})"
    )
    return out


def report(command: str) -> None:
    summary = summarise(load_results())
    if not summary:
        raise SystemExit(f"no results in {RESULTS} yet")
    doc_dir = Path(__file__).resolve().parent.parent / "docs"
    plot(summary, doc_dir / "img")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_section("Quality: ACT vs full human labels (bench_quality)", render(summary, command, started))
    design = render_design(load_results(), "python bench/bench_quality.py design", started)
    if design:
        write_section("Review design: rounds and uniform share (bench_quality design)", design)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--datasets", required=True)
    p.add_argument("--size", type=int, default=1000)
    t = sub.add_parser("truncate", help="keep the annotated prefix of a stopped text pool")
    t.add_argument("--dataset", required=True)
    t.add_argument("--size", type=int, required=True)
    t.add_argument("--first", type=int, required=True)
    r = sub.add_parser("run")
    r.add_argument("--datasets", default="fashion,fashion-captions,tweets60,tweets80,r8")
    r.add_argument("--seeds", default="0,1,2,3,4")
    r.add_argument("--budgets", default="5,10,20,30")
    r.add_argument("--rules", default="threshold,exponential")
    r.add_argument("--normalized-at", type=int, default=20)
    d = sub.add_parser("design", help="K rounds x uniform share at one budget")
    d.add_argument("--datasets", default="fashion,tweets60")
    d.add_argument("--seeds", default="0,1,2")
    d.add_argument("--budget", type=int, default=20)
    d.add_argument("--rule", default="threshold")
    d.add_argument("--rounds", default="1,2,3")
    d.add_argument("--uniform", default="0.05,0.1,0.2")
    w = sub.add_parser("report", help="write the docs section and plots from the results so far")
    w.add_argument("--command", default="python bench/bench_quality.py run", help="the run command to cite")
    args = ap.parse_args()
    if args.cmd == "report":
        report(args.command)
    elif args.cmd == "prepare":
        for name in args.datasets.split(","):
            print(name, prepare(name, args.size), flush=True)
    elif args.cmd == "truncate":
        print(truncate(args.dataset, args.size, args.first), flush=True)
    elif args.cmd == "design":
        run_design(
            args.datasets.split(","),
            [int(x) for x in args.seeds.split(",")],
            args.budget,
            args.rule,
            [int(x) for x in args.rounds.split(",")],
            [float(x) for x in args.uniform.split(",")],
        )
    elif args.cmd == "run":
        run_grid(
            args.datasets.split(","),
            [int(s) for s in args.seeds.split(",")],
            [int(b) for b in args.budgets.split(",")],
            args.rules.split(","),
            args.normalized_at,
        )


if __name__ == "__main__":
    main()
