"""Downstream accuracy with ACT data: every critic, every selection rule, budgets 5-30%, 3 seeds.

    .venv/bin/python bench/bench_downstream.py --project tweets=/tmp/actlabel-bench/tweets-qwen2.5-1.5b-300 \
        --project fashion=/tmp/actlabel-bench/fashion-1000-5shot

Each --project is an annotated actlabel project with gold labels (bench/bench_critics.py makes
them with the embedded models; the model work is cached there). For each project this script
simulates the rest of ACT without further model calls:
  critic scores (random review, the annotator's confidence, each LLM critic in the store, the
  learned critic trained on a uniform pilot that counts against the budget, optionally cleanlab's
  label-quality ranking) -> selection (threshold / exponential / normalized) -> reviews with the
  gold labels -> a linear classifier on frozen features trained with the ACT loss -> accuracy on a
  held-out test set of the same dataset that the project never saw.
It writes the `## Downstream accuracy (ACT loss)` section of docs/benchmarks.md and PNG plots in
docs/img/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchdoc import machine_line, write_section  # noqa: E402

from actlabel import datasets  # noqa: E402
from actlabel import select as rules  # noqa: E402
from actlabel.downstream import LinearACTClassifier  # noqa: E402
from actlabel.metrics import error_detection_auroc  # noqa: E402
from actlabel.models import features  # noqa: E402
from actlabel.selection import current_state  # noqa: E402
from actlabel.store import Store  # noqa: E402

BUDGETS = (0.05, 0.10, 0.20, 0.30)
RULES = ("threshold", "exponential", "normalized")
SEEDS = (0, 1, 2)
PILOT_SHARE = 0.05
MAX_WEIGHT = 5.0
IMG = ROOT / "docs" / "img"


def load_project(root: Path) -> dict:
    with Store.open(root) as store:
        names = store.task.label_names
        state = current_state(store)
        items = {it.rowid: it for it in store.iter_items()}
        conf = store.latest("annotations", ["confidence"], "status = 'ok'")
        strategies = sorted({s for s, _model in store.latest_critiques_per_critic(("error_prob",))})
        critic = {s: store.latest_critiques(("error_prob",), strategy=s) for s in strategies}
        is_image = store.task.image_column is not None
    rowids = [int(r) for r in state.rowids]
    keep = [k for k, m in enumerate(state.machine_label) if m is not None and items[rowids[k]].gold_label]
    rowids = [rowids[k] for k in keep]
    gold = np.array([names.index(items[r].gold_label) for r in rowids])
    machine = np.array([names.index(state.machine_label[k]) for k in keep])
    confidence = np.array([(conf.get(r, (None,))[0]) for r in rowids], dtype=float)
    scores = {"annotator confidence": 1 - np.nan_to_num(confidence, nan=0.5)}
    for s, values in critic.items():
        if s in ("learned",) or "calibrated" in s:
            continue  # the learned critic is re-fitted below on each simulated pilot
        e = np.array([values.get(r, (np.nan,))[0] for r in rowids], dtype=float)
        if np.isfinite(e).mean() > 0.95:
            scores[f"LLM {s}"] = np.nan_to_num(e, nan=float(np.nanmean(e)))
    if is_image:
        x = features.cached_image_features([items[r].image_path for r in rowids], root)
    else:
        x = features.cached_text_features([items[r].text for r in rowids], root)
    texts = {items[r].text for r in rowids} if not is_image else set()
    return {"names": names, "gold": gold, "machine": machine, "confidence": confidence, "x": x,
            "scores": scores, "is_image": is_image, "texts": texts, "root": root}  # fmt: skip


def test_set(name: str, project: dict, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    names = project["names"]
    cache = project["root"]
    if project["is_image"]:
        images, labels = datasets.load_fashion_mnist("train")  # projects use t10k
        idx = np.random.default_rng(seed).permutation(len(labels))[:size]
        folder = cache / "downstream-test-images"
        folder.mkdir(exist_ok=True)
        paths = []
        for i in idx:
            path = folder / f"{int(i)}.png"
            if not path.exists():
                datasets.write_png(images[i], path)
            paths.append(str(path))
        return features.cached_image_features(paths, cache), labels[idx]
    if name.startswith("tweets"):
        ds = datasets.load_tweets(min_agreement=0.7)
    else:
        ds = datasets.load_reuters_r8("train")  # bench_critics samples the R8 test split
    pool = [i for i, t in enumerate(ds.texts) if t not in project["texts"] and ds.labels[i] in names]
    idx = np.random.default_rng(seed).permutation(pool)[:size]
    x = features.cached_text_features([ds.texts[i] for i in idx], cache)
    return x, np.array([names.index(ds.labels[i]) for i in idx])


def learned_scores(project: dict, pilot: np.ndarray) -> np.ndarray:
    """Error model (logistic regression on features + confidence) trained on the pilot's reviews."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = project["machine"] != project["gold"]
    conf = np.nan_to_num(project["confidence"], nan=0.5)[:, None]
    onehot = np.eye(len(project["names"]))[project["machine"]]
    x = np.hstack([project["x"], conf, onehot])
    if y[pilot].sum() < 2 or (~y[pilot]).sum() < 2:
        return 1 - conf[:, 0]
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.05, class_weight="balanced", max_iter=2000)
    )
    model.fit(x[pilot], y[pilot])
    return model.predict_proba(x)[:, 1]


def cleanlab_scores(project: dict) -> np.ndarray | None:
    """cleanlab's label-quality ranking (AGPL: an optional benchmark baseline, never in the package)."""
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(
        LogisticRegression(max_iter=2000), project["x"], project["machine"], cv=5, method="predict_proba"
    )
    return 1 - get_label_quality_scores(project["machine"], probs)


def simulate(
    project: dict,
    test: tuple[np.ndarray, np.ndarray],
    critic: str,
    scores: np.ndarray | None,
    rule: str,
    share: float,
    seed: int,
) -> tuple[float, float, int]:
    """(downstream test accuracy, final label accuracy, reviews) for one configuration."""
    gold, machine = project["gold"], project["machine"]
    n = len(gold)
    budget = max(1, round(share * n))
    rng = np.random.default_rng(seed)
    if critic == "learned":
        size = min(budget, max(20, round(PILOT_SHARE * n)))
        pilot = np.sort(rng.choice(n, size=size, replace=False))
        reviewed = np.zeros(n, dtype=bool)
        reviewed[pilot] = True
        pi_prior = np.where(reviewed, size / n, 0.0)
        e = learned_scores(project, pilot)
        if budget > size:
            res = rules.select_round(e, reviewed, pi_prior, budget - size, rule=rule, seed=seed)
            reviewed, pi = res.selected, res.review_prob
        else:
            pi = np.where(reviewed, size / n, size / n)
    else:
        e = rng.random(n) if scores is None else np.clip(scores, 0, 1)
        res = rules.select(e, budget, rule=rule, seed=seed)
        reviewed, pi = res.selected, res.review_prob
    # 1/pi clipped at MAX_WEIGHT (the paper's stabiliser): unclipped, a few items reviewed with a
    # small pi put weights of -20 and worse on their machine labels and the fit collapses.
    clf = LinearACTClassifier(len(project["names"]), seed=seed, max_weight=MAX_WEIGHT)
    clf.fit(project["x"], machine, gold, reviewed, np.where(reviewed, pi, 1.0))
    final = np.where(reviewed, gold, machine)
    return clf.score(*test), float((final == gold).mean()), int(reviewed.sum())


def plot(
    name: str, curves: dict[str, list[float]], human: float, machine: float, ylabel: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    xs = [100 * b for b in BUDGETS]
    for label, ys in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(human, color="k", ls="--", lw=1, label="full human labels")
    ax.axhline(machine, color="grey", ls=":", lw=1, label="full machine labels")
    ax.set_xlabel("human budget (% of items reviewed)")
    ax.set_ylabel(ylabel)
    ax.set_title(name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", action="append", required=True, help="NAME=PROJECT_DIR")
    ap.add_argument("--test-size", type=int, default=1500)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    IMG.mkdir(parents=True, exist_ok=True)
    out = [
        f"Command: `.venv/bin/python bench/bench_downstream.py {' '.join('--project ' + p for p in args.project)}` "
        f"({time.strftime('%Y-%m-%d')}; {machine_line()})",
        "",
        "Linear softmax classifier on frozen features (MiniLM text embeddings / EfficientNet-Lite0 image",
        "features) trained with the ACT loss (`actlabel.downstream`), reviews = gold labels, test set = held-out",
        f"items of the same dataset, 1/pi clipped at {MAX_WEIGHT:g}. Mean over seeds 0, 1, 2. The learned critic spends max(20, 5% of N)",
        "of the budget on a uniform pilot and is trained on it; the other critics spend it all on their ranking.",
        "",
    ]
    for spec in args.project:
        name, _, path = spec.partition("=")
        t0 = time.perf_counter()
        project = load_project(Path(path))
        test = test_set(name, project, args.test_size, seed=123)
        print(f"[{name}] features ready in {time.perf_counter() - t0:.0f} s", flush=True)
        n = len(project["gold"])
        err = project["machine"] != project["gold"]
        human = float(np.mean([simulate(project, test, "x", None, "threshold", 1.0, s)[0] for s in SEEDS]))
        ones = np.zeros(n, dtype=bool)
        machine_acc = (
            LinearACTClassifier(len(project["names"]))
            .fit(project["x"], project["machine"], project["gold"], ones, np.ones(n))
            .score(*test)
        )
        critics: dict[str, np.ndarray | None] = {"random review": None, **project["scores"], "learned": None}
        cl = cleanlab_scores(project)
        if cl is not None:
            critics["cleanlab label quality"] = cl
        table: dict[tuple[str, str], list[float]] = {}
        label_acc: dict[tuple[str, str], list[float]] = {}
        for critic, scores in critics.items():
            for rule in RULES:
                if critic == "random review" and rule != "threshold":
                    continue
                for b in BUDGETS:
                    runs = [simulate(project, test, critic, scores, rule, b, s) for s in SEEDS]
                    print(
                        f"[{name}] {critic} / {rule} / {b:.0%}: {np.mean([r[0] for r in runs]):.3f}",
                        flush=True,
                    )
                    table[(critic, rule), b] = float(np.mean([r[0] for r in runs]))  # type: ignore[index]
                    label_acc[(critic, rule), b] = float(np.mean([r[1] for r in runs]))  # type: ignore[index]
        out.append(
            f"### {name}: {n} items, machine label accuracy {1 - err.mean():.3f}, test set {len(test[1])}"
        )
        out.append("")
        out.append(f"Full human labels: **{human:.3f}**; full machine labels: **{machine_acc:.3f}**.")
        out.append("")
        aurocs = {c: error_detection_auroc(s, err) for c, s in critics.items() if s is not None}
        if aurocs:
            out.append("Critic AUROC (all items): " + ", ".join(f"{c} {a:.3f}" for c, a in aurocs.items()))
            out.append("")
        out.append(
            "| critic | rule | " + " | ".join(f"{int(100 * b)}%" for b in BUDGETS) + " | best gap to human |"
        )
        out.append("|---|---|" + "---|" * len(BUDGETS) + "---|")
        best_at_20 = -1.0
        for critic, rule in dict.fromkeys(k[0] for k in table):
            accs = [table[(critic, rule), b] for b in BUDGETS]  # type: ignore[index]
            gap = human - max(accs)
            out.append(
                f"| {critic} | {rule} | "
                + " | ".join(f"{a:.3f}" for a in accs)
                + f" | {100 * gap:+.1f} pts |"
            )
            if rule in ("threshold", "exponential"):
                best_at_20 = max(best_at_20, max(accs[:3]))
        out.append("")
        out.append(
            f"Best threshold/exponential ACT at a budget of 20% or less: {best_at_20:.3f}, "
            f"{100 * (human - best_at_20):+.1f} points from full human labels (target: within 2)."
        )
        out.append("")
        curves = defaultdict(list)
        for (critic, rule), b in table:
            if rule == "threshold":
                curves[critic].append(table[(critic, rule), b])  # type: ignore[index]
        plot(
            f"{name}: downstream test accuracy (threshold rule)",
            curves,
            human,
            machine_acc,
            "test accuracy",
            IMG / f"downstream-{name}.png",
        )
        rule_curves = {rule: [table[("learned", rule), b] for b in BUDGETS] for rule in RULES}  # type: ignore[index]
        plot(
            f"{name}: learned critic, by selection rule",
            rule_curves,
            human,
            machine_acc,
            "test accuracy",
            IMG / f"rules-{name}.png",
        )
        out.append(f"![downstream {name}](img/downstream-{name}.png) ![rules {name}](img/rules-{name}.png)")
        out.append("")
        print("\n".join(out[-(len(table) + 12) :]), flush=True)
    out.append(f"Total {time.perf_counter() - started:.0f} s.")
    if not args.no_write:
        write_section("Downstream accuracy (ACT loss)", "\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
