"""Does the ACT loss ever do worse than machine labels alone?  Exact vs clipped vs tuned, linear and MLP.

    .venv/bin/python bench/bench_act_loss.py [--train 600] [--test 400] [--seeds 0 1 2]

Fashion-MNIST test split (Debian dataset-fashion-mnist), EfficientNet-Lite0 features
(actlabel.models.features, cached under --cache so a rerun costs no feature extraction).
Machine labels are synthetic: each item keeps its true class with probability 0.72 and otherwise
takes a confusable class (the confusions real Fashion-MNIST classifiers make: shirt / T-shirt /
pullover / coat, sneaker / sandal / ankle boot, ...), drawn per seed.  The critic is a zero-review
consistency critic: 1 - the cross-fitted (5-fold) logistic-regression probability of the machine
label on the features.  Designs from actlabel.select: threshold + 5% uniform, exponential
(beta 20) + 5% uniform, normalized; budgets 10% and 20%.  Reviews take the true label.  Each
training set trains LinearACTClassifier and MLPACTClassifier with loss="exact" (the paper's
unbiased loss, lam = 1), "clip" (lam = 1, negative weights floored) and "tuned" (clipped, PPI++
lam, from out-of-fold pilot probabilities); the MLP, to save CPU, only with exact and clip (the
default) and the threshold and exponential rules.
Full machine and full human labels are the baselines.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from actlabel import datasets  # noqa: E402
from actlabel import select as rules  # noqa: E402
from actlabel.downstream import LinearACTClassifier, MLPACTClassifier  # noqa: E402

# Fashion-MNIST classes: 0 T-shirt, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt,
# 7 sneaker, 8 bag, 9 ankle boot.  Where a wrong machine label goes, by true class.
CONFUSABLE = {
    0: [6, 2, 3], 1: [3], 2: [4, 6, 0], 3: [0, 4, 6], 4: [2, 6, 3],
    5: [7, 9], 6: [0, 2, 4], 7: [5, 9], 8: [0, 6], 9: [7, 5],
}  # fmt: skip
DESIGNS = [("threshold", 0.05), ("exponential", 0.05), ("normalized", 0.0)]
BUDGETS = (0.10, 0.20)
LOSSES = ("exact", "clip", "tuned")
MLP_LOSSES = ("exact", "clip")


def features_for(images: np.ndarray, cache: Path) -> np.ndarray:
    from actlabel.models.features import cached_image_features

    img_dir = cache / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        path = img_dir / f"{k}.png"
        if not path.exists():
            datasets.write_png(img, path)
        paths.append(str(path))
    return cached_image_features(paths, cache)


def machine_labels(gold: np.ndarray, rng: np.random.Generator, accuracy: float = 0.72) -> np.ndarray:
    wrong = rng.random(gold.size) > accuracy
    alt = np.array([rng.choice(CONFUSABLE[int(g)]) for g in gold])
    return np.where(wrong, alt, gold)


def consistency_critic(x: np.ndarray, machine: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    proba = cross_val_predict(model, x, machine, cv=5, method="predict_proba")
    classes = np.unique(machine)
    col = np.searchsorted(classes, machine)
    return np.clip(1.0 - proba[np.arange(machine.size), col], 0.0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/stats-cache"))
    args = ap.parse_args()
    started = time.perf_counter()
    images, labels = datasets.load_fashion_mnist("t10k")
    idx = np.random.default_rng(1234).permutation(labels.size)[: args.train + args.test]
    x_all = features_for(images[idx], args.cache)
    y_all = labels[idx]
    print(f"features {x_all.shape} in {time.perf_counter() - started:.0f} s", flush=True)
    train_x, test_x = x_all[: args.train], x_all[args.train :]
    gold, test_y = y_all[: args.train], y_all[args.train :]
    n = gold.size
    results: dict[tuple, list[float]] = {}
    extra: dict[tuple, list[float]] = {}

    def add(key: tuple, value: float) -> None:
        results.setdefault(key, []).append(value)

    models = {"linear": LinearACTClassifier, "MLP": MLPACTClassifier}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        machine = machine_labels(gold, rng)
        e = consistency_critic(train_x, machine, seed)
        extra.setdefault(("machine accuracy",), []).append(float((machine == gold).mean()))
        for mname, cls in models.items():
            full_h = cls(10, seed=seed).fit(train_x, gold, gold, np.ones(n, bool), np.ones(n))
            add((mname, "full human"), full_h.score(test_x, test_y))
            full_m = cls(10, seed=seed).fit(train_x, machine, gold, np.zeros(n, bool), np.ones(n))
            add((mname, "full machine"), full_m.score(test_x, test_y))
        for share in BUDGETS:
            budget = round(share * n)
            for rule, uniform in DESIGNS:
                sel = rules.select(e, budget, rule=rule, uniform=uniform, seed=seed)
                d, pi = sel.selected, sel.review_prob
                human = np.where(d, gold, -1)
                for mname, cls in models.items():
                    if mname == "MLP" and rule == "normalized":
                        continue  # CPU time: the MLP runs the two rules the paper recommends
                    for loss in LOSSES if mname == "linear" else MLP_LOSSES:
                        clf = cls(10, seed=seed, loss=loss).fit(train_x, machine, human, d, pi)
                        add(
                            (mname, f"{rule}+{uniform:.0%}" if uniform else rule, share, loss),
                            clf.score(test_x, test_y),
                        )
                        if loss == "tuned" or (mname == "MLP" and loss == "clip"):
                            extra.setdefault((mname, rule, share, "lam"), []).append(clf.lam_)
                print(f"  seed {seed} {rule} {share:.0%} ({time.perf_counter() - started:.0f} s)", flush=True)
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)

    def cell(key: tuple) -> str:
        v = np.array(results[key])
        return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(v.size):.3f}" if v.size > 1 else f"{v.mean():.3f}"

    print()
    print(f"machine label accuracy {np.mean(extra[('machine accuracy',)]):.3f}; {n} training items, "
          f"{test_y.size} test items, seeds {args.seeds}; mean ± standard error over seeds")  # fmt: skip
    print()
    print(
        "| model | design | budget | exact (lam 1) | clipped (lam 1) | tuned (clipped, PPI++ lam) | mean lam | full machine | full human |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mname in models:
        for share in BUDGETS:
            for rule, uniform in DESIGNS:
                dname = f"{rule}+{uniform:.0%}" if uniform else rule
                if (mname, rule, share, "lam") not in extra:
                    continue
                lam = np.mean(extra[(mname, rule, share, "lam")])
                row = [
                    cell((mname, dname, share, loss)) if (mname, dname, share, loss) in results else "-"
                    for loss in LOSSES
                ]
                print(f"| {mname} | {dname} | {share:.0%} | {' | '.join(row)} | {lam:.2f} "
                      f"| {cell((mname, 'full machine'))} | {cell((mname, 'full human'))} |")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
