"""The embedded annotator on real data: accuracy, per-class recall and speed, before and after the
label model, and after `--refine` with 10% and 20% of the items reviewed.

    python bench/bench_annotator.py                                   # all datasets, both models
    python bench/bench_annotator.py --datasets tweets60 --models local/qwen2.5-0.5b --no-write

Datasets (actlabel.datasets; loaded from installed packages, never copied into the repo):
- tweets60 / tweets80: CrowdFlower tweets with crowd agreement >= 0.6 / >= 0.8, 3 examples per
  class (as the demo), a uniform sample;
- r8: Reuters R8 test split sampled uniformly (its real class imbalance), one training document
  per class as the example (as the demo).
Each pool is annotated once through the real stage (`actlabel.annotate.annotate`, the embedded
model in its child process), so the figures are what a user gets; the variants below are then
computed from what the stage stored, with no more model calls:
- LLM raw: the argmax of the model's own label distribution (what main did, bar the prompt);
- calibrated: the LLM divided by its mean distribution over the pool (a=1, b=0);
- label model (zero reviews): what `annotate` stores by default (weights chosen on the examples);
- probe only: the MiniLM logistic regression on the examples alone;
- refine 10% / 20%: `annotate --refine` after a uniform 10% / 20% of the items were reviewed with
  their gold labels (accuracy on the items not reviewed; mean over --seeds draws).
Speed: labels/s of the annotate run, prompt tokens per item and the share served from the KV
cache, and the in-run limit: raw llama.cpp prompt processing (tokens/s, measured in the same run
on a 256-token prompt with no reuse) divided by the tokens each item really evaluates.
Writes the `## Embedded annotator` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import machine_line, write_section  # noqa: E402

from actlabel import datasets  # noqa: E402
from actlabel import label_model as lm  # noqa: E402
from actlabel.annotate import text_probe_factory  # noqa: E402
from actlabel.models import load_backend  # noqa: E402
from actlabel.project import Project  # noqa: E402
from actlabel.task import Example, Label  # noqa: E402

SPECS = {
    "tweets60": ("tweets", 0.6, 3, "Classify the sentiment the author of the tweet expresses."),
    "tweets80": ("tweets", 0.8, 3, "Classify the sentiment the author of the tweet expresses."),
    "r8": ("r8", None, 1, "Classify the Reuters newswire article by its main topic."),
}


def build_project(root: Path, name: str, size: int, seed: int) -> Project:
    if (root / "actlabel.db").exists():
        return Project(root)
    kind, agreement, shots, instructions = SPECS[name]
    if kind == "tweets":
        ds = datasets.load_tweets(min_agreement=agreement)
    else:
        ds = datasets.load_reuters_r8("test")
    train = ds if kind == "tweets" else datasets.load_reuters_r8("train")
    n_shots = shots * len(ds.label_names)
    if kind == "tweets":
        pool_idx, shot_idx = datasets.stratified_split(ds.labels, (size, n_shots * 4), seed)
    else:
        rng = np.random.default_rng(seed)
        pool_idx = rng.permutation(len(ds.texts))[:size]
        (shot_idx,) = datasets.stratified_split(train.labels, (n_shots * 4,), seed)
    examples = [
        Example(label=train.labels[i], text=train.texts[i])
        for i in datasets.first_per_label(train.labels, shot_idx, shots)
    ]
    root.mkdir(parents=True, exist_ok=True)
    labels = [Label(n, ds.descriptions.get(n, "")) for n in ds.label_names]
    project = Project.init(root, labels, instructions=instructions, examples=examples)
    rows = root / "items.jsonl"
    with rows.open("w") as fh:
        for i in pool_idx:
            fh.write(json.dumps({"text": ds.texts[i], "gold": ds.labels[i]}) + "\n")
    project.import_file(rows, text_columns=["text"], gold_column="gold")
    return project


def prompt_processing_rate(model: str, n_tokens: int = 256) -> float:
    """Raw llama.cpp prompt processing in tokens/s, no KV reuse (the same engine, same threads)."""
    backend = load_backend(model, isolate=False, prefix_reuse=False)
    try:
        text = " ".join(f"word{i}" for i in range(n_tokens))
        tokens = backend.tokenize(text)[:n_tokens]
        best = 0.0
        for _ in range(3):
            backend._llama.n_tokens = 0
            t0 = time.perf_counter()
            backend._decode(tokens)
            best = max(best, len(tokens) / (time.perf_counter() - t0))
        return best
    finally:
        backend.close()


def recall_by_class(gold: list[str], pred: list[str], names: list[str]) -> dict[str, float]:
    out = {}
    for n in names:
        idx = [i for i, g in enumerate(gold) if g == n]
        out[n] = float(np.mean([pred[i] == n for i in idx])) if idx else float("nan")
    return out


def evaluate(project: Project, seeds: int) -> dict[str, object]:
    store = project.store
    names = list(store.task.label_names)
    current = store.current_annotations(with_probs=True)
    gold_of = store.gold_labels()
    item_of = {it.rowid: it for it in store.iter_items(list(current))}
    runs = [r for r in store.runs("annotate") if "pass_of" in (r["params"] or "")]
    params = json.loads(runs[-1]["params"])["label_model"]
    ids = [item_of[r].item_id for r in current]
    gold = [gold_of[r] for r in current]
    stored = [a.label for a in current.values()]
    llm = lm.safe_log(np.array([[json.loads(a.probs)[n] for n in names] for a in current.values()]))
    log_prior = np.array(params["log_prior"])
    g = np.array([names.index(x) for x in gold])
    out: dict[str, object] = {"items": len(ids), "how": params["how"]}

    def acc(pred_idx: np.ndarray, mask: np.ndarray | None = None) -> float:
        m = np.ones(len(g), bool) if mask is None else mask
        return float((pred_idx[m] == g[m]).mean())

    raw = llm.argmax(1)
    cal = (llm - log_prior).argmax(1)
    out["LLM raw"] = acc(raw)
    out["calibrated"] = acc(cal)
    out["label model"] = float(np.mean([s == x for s, x in zip(stored, gold, strict=True)]))
    out["recall raw"] = recall_by_class(gold, [names[k] for k in raw], names)
    out["recall label model"] = recall_by_class(gold, stored, names)
    out["pred counts raw"] = {n: int((raw == k).sum()) for k, n in enumerate(names)}
    out["pred counts label model"] = {n: stored.count(n) for n in names}
    from actlabel.models.features import cached_text_features

    x = cached_text_features([item_of[r].data["text"] for r in current], store.root)
    examples = store.task.examples
    ex_x = cached_text_features([e.text for e in examples], store.root)
    ex_y = np.array([names.index(e.label) for e in examples])
    probe_factory = text_probe_factory(store.task, store.root)
    out["probe only (no anchors)"] = acc(lm.Probe(len(names)).fit(ex_x, ex_y).predict_proba(x).argmax(1))
    probe_q = lm.safe_log(probe_factory(len(names)).fit(ex_x, ex_y).predict_proba(x))
    out["probe only"] = acc(probe_q.argmax(1))
    # what each fixed probe share would label with no review (the label model picks one of these)
    for w in lm.W_GRID[1:-1]:
        out[f"pooled, probe share {w:g}"] = acc(
            lm.Pooling(1 - w, w, log_prior).combine(llm, probe_q).argmax(1)
        )
    folds = lm.fold_of(ids)
    ex_llm = np.array(params["example_llm_logp"]) if params.get("example_llm_logp") else None
    for share in (0.1, 0.2):
        accs, accs_llm = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            rev = np.sort(rng.choice(len(ids), int(round(share * len(ids))), replace=False))
            res = lm.refine(
                features=x,
                llm_logp=llm,
                log_prior=log_prior,
                reviewed_idx=rev,
                reviewed_labels=g[rev],
                example_features=ex_x,
                example_labels=ex_y,
                example_llm_logp=ex_llm if ex_llm is not None and len(ex_llm) == len(ex_y) else None,
                folds=folds,
                probe=probe_factory,
            )
            unrev = np.ones(len(g), bool)
            unrev[rev] = False
            accs.append(acc(res.probs.argmax(1), unrev))
            label_model_pred = np.array([names.index(s) for s in stored])
            accs_llm.append(acc(label_model_pred, unrev))
        out[f"refine {int(share * 100)}%"] = float(np.mean(accs))
        out[f"refine {int(share * 100)}% sd"] = float(np.std(accs))
        out[f"label model on same {int(share * 100)}%"] = float(np.mean(accs_llm))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="tweets60,tweets80,r8")
    ap.add_argument("--models", default="local/qwen2.5-0.5b,local/qwen2.5-1.5b")
    ap.add_argument("--size", type=int, default=300, help="pool size for the 0.5B model")
    ap.add_argument("--size-large", type=int, default=150, help="pool size for the 1.5B model")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/actlabel-bench-annotator")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    started = time.time()
    results = []
    for model in args.models.split(","):
        rate = prompt_processing_rate(model)
        print(f"{model}: raw prompt processing {rate:.0f} tokens/s", flush=True)
        for name in args.datasets.split(","):
            size = args.size if "0.5b" in model else args.size_large
            root = Path(args.work) / f"{name}-{model.split('/')[1]}-{size}"
            project = build_project(root, name, size, seed=0)
            backend = load_backend(model)
            t0 = time.perf_counter()
            try:
                result = asyncio.run(_annotate(project, backend))
                stats = backend.stats
            finally:
                backend.close()
            elapsed = time.perf_counter() - t0
            print(result, flush=True)
            calls = max(1, stats["calls"])
            evaluated = (stats["prompt_tokens"] - stats["reused_tokens"]) / calls
            row = {
                "dataset": name,
                "model": model,
                "labels/s": result.done / elapsed if result.calls else None,
                "calls": stats["calls"],
                "prompt tokens/call": stats["prompt_tokens"] / calls,
                "evaluated tokens/call": evaluated,
                "limit labels/s": rate / max(evaluated, 1.0),
                "pp tokens/s": rate,
                **evaluate(project, args.seeds),
            }
            project.close()
            print(json.dumps(row, indent=1, default=str), flush=True)
            results.append(row)
    (Path(args.work) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if not args.no_write:
        write_section("Embedded annotator", render(results, args, time.time() - started))


async def _annotate(project: Project, backend) -> object:
    from actlabel.annotate import annotate_async

    return await annotate_async(project.store, backend=backend, progress=False)


def render(results: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"Command: `.venv/bin/python bench/bench_annotator.py --datasets {args.datasets} --models {args.models} "
        f"--size {args.size} --size-large {args.size_large} --seeds {args.seeds}` "
        f"({time.strftime('%Y-%m-%d')}; {machine_line()}; load average {load:.1f}; {elapsed / 60:.0f} min)",
        "",
        "Accuracy on the pool against gold (refine: on the items not reviewed, mean over seeds of the "
        "uniform review draw). Speed: labels/s of the whole annotate run (model load and the label "
        "model's leave-one-out calls on the examples included) vs the in-run limit.",
        "",
        "| dataset | model | items | LLM raw | calibrated | label model | probe only (no anchors) | "
        "refine 10% | refine 20% | labels/s | limit labels/s | tokens/item (evaluated) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['items']} | {r['LLM raw']:.3f} | {r['calibrated']:.3f} | "
            f"{r['label model']:.3f} | {r['probe only']:.3f} ({r['probe only (no anchors)']:.3f}) | "
            f"{r['refine 10%']:.3f} | {r['refine 20%']:.3f} | "
            f"{(r['labels/s'] or 0):.2f} | {r['limit labels/s']:.2f} | "
            f"{r['prompt tokens/call']:.0f} ({r['evaluated tokens/call']:.0f}) |"
        )
    lines += ["", "Per-class recall (raw -> label model) and what the label model chose:", ""]
    for r in results:
        rec = ", ".join(
            f"{k} {r['recall raw'][k]:.2f}->{r['recall label model'][k]:.2f}" for k in r["recall raw"]
        )
        shares = ", ".join(
            f"{k.rsplit(' ', 1)[1]}: {v:.3f}" for k, v in r.items() if k.startswith("pooled, probe share")
        )
        lines.append(
            f"- {r['dataset']}, {r['model']}: {rec}; {r['how']}; fixed probe shares with no review: {shares}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
