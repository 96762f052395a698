"""Two probes behind bench_quality's figures (issue 12), on pools that `bench_quality.py prepare` made.

    python bench/bench_quality_probes.py views fashion          # the consistency critic's views
    python bench/bench_quality_probes.py losses fashion 10 0    # downstream training variants

views: the zero-review consistency critic's AUROC against gold on the whole pool, each view alone,
the pooled score without each view in turn, and with one more view (a cross-fitted logistic
regression on 50 principal components of the thumbnail pixels, images only).

losses: one ACT run (threshold rule, the demo's design) and one random-review run at the same budget
and seed, as bench_quality runs them; then the downstream linear and MLP classifiers trained on each
run's labels with the default clipped loss, a 1/pi cap of 5 and 2, lam 0.5, the PPI++-tuned lam, and
plain cross-entropy on the final labels (human where reviewed, else machine). Prints the test
accuracies and the smallest review_prob among reviewed items.
Prints only; the figures quoted in docs/benchmarks.md say which command gave them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq  # noqa: E402

from actlabel.project import Project  # noqa: E402


def views(name: str) -> None:
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    from actlabel.critics import consistency as c
    from actlabel.critics.base import load_targets

    with Project(bq.pool_path(name)) as project:
        store = project.store
        targets = load_targets(store)
        names = store.task.label_names
        gold = np.array([names.index(t.item.gold_label) for t in targets])
        machine = np.array([names.index(t.machine_label) for t in targets])
        wrong = (gold != machine).astype(int)
        sig = c.consistency_signals(store, targets)

        def own(p: np.ndarray) -> np.ndarray:
            return p[np.arange(machine.size), machine]

        print(f"{name}: {machine.size} items, error rate {wrong.mean():.3f}")
        print(f"pooled (the critic): AUROC {roc_auc_score(wrong, sig.error_prob):.3f}")
        all_views = [sig.label_model, sig.neighbours]
        all_views += [v for v in (sig.pixels, sig.annotator) if v is not None]
        for view_name, view in zip(sig.views, all_views, strict=True):
            rest = [v for v in all_views if v is not view]
            print(
                f"{view_name}: alone {roc_auc_score(wrong, -own(view)):.3f}, pooled without it "
                f"{roc_auc_score(wrong, 1 - own(c.pool(rest, machine))):.3f}"
            )
        thumbs = c.thumbnails(targets)
        if thumbs is not None:
            z = PCA(50, random_state=0).fit_transform(thumbs)
            pixel_lm = c.label_model_probs(z, machine, len(names), None, [], 0)
            print(
                f"pixel logistic regression: alone {roc_auc_score(wrong, -own(pixel_lm)):.3f}, pooled with it "
                f"{roc_auc_score(wrong, 1 - own(c.pool([*all_views, pixel_lm], machine))):.3f}"
            )


def losses(name: str, budget: int, seed: int) -> None:
    from actlabel.downstream import LinearACTClassifier, MLPACTClassifier

    pool = bq.pool_path(name)
    captured: dict[str, dict] = {}
    snapshot = bq._snapshot

    def keep_last(store):  # noqa: ANN001, ANN202
        captured["last"] = snapshot(store)
        return captured["last"]

    bq._snapshot = keep_last
    runs = {}
    bq.run_act(name, pool, seed, budget, "threshold")
    runs["threshold"] = captured["last"]
    bq.run_random(name, pool, seed, budget)
    runs["random review"] = captured["last"]
    with Project(pool) as project:
        x, tx, ty = bq._features(project, pool)
        k = len(project.store.task.label_names)
    variants = (
        ("clipped (default)", {}),
        ("1/pi cap 5", {"max_weight": 5.0}),
        ("1/pi cap 2", {"max_weight": 2.0}),
        ("lam 0.5", {"lam": 0.5}),
        ("PPI++ lam", {"loss": "tuned"}),
    )
    for run, s in runs.items():
        keep = s["machine"] >= 0
        m, h, d, pi = s["machine"][keep], s["human"][keep], s["reviewed"][keep], s["pi"][keep]
        final = np.where(d, h, m)
        print(
            f"{run}: final label accuracy {(final == s['gold'][keep]).mean():.3f}, "
            f"smallest review_prob of a reviewed item {pi[d].min():.3f}"
        )
        for model_name, cls in (("linear", LinearACTClassifier), ("mlp", MLPACTClassifier)):
            scores = {}
            for variant, kw in variants:
                scores[variant] = cls(k, seed=seed, **kw).fit(x[keep], m, h, d, pi).score(tx, ty)
            plain = cls(k, seed=seed).fit(x[keep], final, final, np.zeros_like(d), np.ones_like(pi))
            scores["final labels, plain"] = plain.score(tx, ty)
            print(f"  {model_name}: " + ", ".join(f"{v} {a:.4f}" for v, a in scores.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("views")
    v.add_argument("dataset")
    lo = sub.add_parser("losses")
    lo.add_argument("dataset")
    lo.add_argument("budget", type=int)
    lo.add_argument("seed", type=int)
    args = ap.parse_args()
    if args.cmd == "views":
        views(args.dataset)
    else:
        losses(args.dataset, args.budget, args.seed)


if __name__ == "__main__":
    main()
