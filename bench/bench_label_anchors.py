"""Label anchors for the text probe (issue 11): does a row per label ("name: description") help the
MiniLM probe that the label model pools with the LLM?

    python bench/bench_label_anchors.py --size 600 --seeds 5

No model calls: MiniLM embeddings and logistic regressions only. Per dataset and seed, the demo's
split (`datasets.stratified_split`: a pool, then the few-shot examples drawn per class), then the
probe's accuracy on the pool:

- examples only: the probe as it was (fitted on the task's examples);
- examples + anchors: what `annotate` and `annotate --refine` fit now;
- anchors only: the nearest label text by cosine (a zero-shot embedding classifier);
- after 10% reviewed (a uniform draw of the pool, its gold labels added to the examples): the
  probe `--refine` fits, with and without anchors, scored on the rest of the pool;
- leave-one-out accuracy on the examples, with and without anchors: what the label model sees
  when it chooses the probe's weight before any review.

Writes "Label anchors" in docs/benchmarks.md (--no-write: print only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import machine_line, publish  # noqa: E402

from actlabel import datasets  # noqa: E402
from actlabel import label_model as lm  # noqa: E402
from actlabel.models.features import embed_texts  # noqa: E402
from actlabel.task import Label  # noqa: E402

#: dataset -> (loader, few-shot examples per class), as the demo and bench_quality draw them
DATASETS = {
    "r8": (lambda: datasets.load_reuters_r8("train"), 1),
    "r8-3shot": (lambda: datasets.load_reuters_r8("train"), 3),
    "tweets60": (lambda: datasets.load_tweets(min_agreement=0.6), 3),
}
REVIEW_SHARE = 0.1


def split(ds: datasets.TextDataset, size: int, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool and the examples, as demo._prepare_text draws them."""
    k = len(ds.label_names)
    pool, shot_idx, _ = datasets.stratified_split(ds.labels, (size, shots * k * 4, 0), seed)
    return pool, np.array(datasets.first_per_label(ds.labels, shot_idx, shots))


def measure(name: str, size: int, seeds: int) -> dict[str, object]:
    load, shots = DATASETS[name]
    ds = load()
    names = ds.label_names
    labels = [Label(n, ds.descriptions.get(n, "")) for n in names]
    y_all = np.array([names.index(lab) for lab in ds.labels])
    anchor_x = embed_texts(lm.label_anchor_texts(labels))
    anchors = lm.Anchors(anchor_x, np.arange(len(names)))

    def with_anchors(n: int) -> lm.Probe:
        return lm.Probe(n, anchors=anchors)

    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    t0 = time.perf_counter()
    for seed in range(seeds):
        pool, ex = split(ds, size, shots, seed)
        x = embed_texts([ds.texts[i] for i in pool])
        y = y_all[pool]
        ex_x = embed_texts([ds.texts[i] for i in ex])
        ex_y = y_all[ex]
        k = len(names)
        add("examples only", float((lm.Probe(k).fit(ex_x, ex_y).predict_proba(x).argmax(1) == y).mean()))
        add(
            "examples + anchors",
            float((with_anchors(k).fit(ex_x, ex_y).predict_proba(x).argmax(1) == y).mean()),
        )
        add("anchors only (nearest label text)", float(((x @ anchor_x.T).argmax(1) == y).mean()))
        add(
            "LOO on examples, examples only",
            float((lm.loo_probe_logq(ex_x, ex_y, k).argmax(1) == ex_y).mean()),
        )
        add(
            "LOO on examples, with anchors",
            float((lm.loo_probe_logq(ex_x, ex_y, k, probe=with_anchors).argmax(1) == ex_y).mean()),
        )
        rng = np.random.default_rng(1000 + seed)
        reviewed = rng.permutation(len(pool))[: round(REVIEW_SHARE * len(pool))]
        rest = np.setdiff1d(np.arange(len(pool)), reviewed)
        tx, ty = np.vstack([ex_x, x[reviewed]]), np.concatenate([ex_y, y[reviewed]])
        for key, factory in (("examples only", lm.Probe), ("examples + anchors", with_anchors)):
            acc = float((factory(k).fit(tx, ty).predict_proba(x[rest]).argmax(1) == y[rest]).mean())
            add(f"after 10% reviewed, {key}", acc)
    prior = float(np.bincount(y_all[pool], minlength=len(names)).max() / len(pool))
    return {
        "dataset": name,
        "source": ds.source,
        "labels": len(names),
        "shots": shots,
        "size": size,
        "seeds": seeds,
        "majority": prior,
        "described": sum(bool(lab.description) for lab in labels),
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }


def render(results: list[dict], command: str) -> str:
    load = os.getloadavg()
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}). No model calls: MiniLM embeddings "
        "and the label model's logistic regression (`label_model.Probe`) only.",
        "",
        "Each label's anchor is one more training row of that label, the embedding of "
        '"name: description" (the name alone where the task gives no description), in every fit of '
        "the probe and never scored. Figures: mean ± standard error over seeds (a seed draws the pool, "
        "the examples and the reviewed share as the demo does); accuracy on the pool, the "
        "after-10%-reviewed rows on the 90% not reviewed.",
        "",
    ]
    keys = list(results[0]["rows"])
    head = "| probe fitted on | " + " | ".join(
        f"{r['dataset']} ({r['labels']} labels, {r['shots']}/class)" for r in results
    )
    lines += [head + " |", "|---|" + "---:|" * len(results)]
    for key in keys:
        cells = []
        for r in results:
            v = np.array(r["rows"][key])
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.3f} ± {se:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append(
        "| (majority label share of the pool) | " + " | ".join(f"{r['majority']:.3f}" for r in results) + " |"
    )
    lines += [
        "",
        "Pools: " + "; ".join(
            f"{r['dataset']}: {r['size']} items of {r['source']}, {r['described']} of {r['labels']} labels "
            f"described, {r['seeds']} seeds, {r['seconds']:.0f} s"
            for r in results
        ) + ".",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="r8,r8-3shot,tweets60")
    ap.add_argument("--size", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    results = []
    for name in args.datasets.split(","):
        res = measure(name, args.size, args.seeds)
        print(res, flush=True)
        results.append(res)
    command = "python bench/bench_label_anchors.py " + " ".join(sys.argv[1:])
    body = render(results, command.strip())
    publish("Label anchors", body, write=not args.no_write)


if __name__ == "__main__":
    main()
