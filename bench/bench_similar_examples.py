"""Fixed vs similar few-shot examples for the embedded annotator (issue 11), on real tweets.

    python bench/bench_similar_examples.py --size 200 --review 0.2

One pool of CrowdFlower tweets (crowd agreement >= 0.6, as the demo) is annotated once through the
real stage with the task's fixed examples (3 per class, as the demo). A uniform share of the pool is
then "reviewed" (its gold label is known) and the rest is labelled again by the same model with
per-item few-shot examples picked by MiniLM cosine similarity, most similar last (nearest the item):

- fixed: the task's 9 examples in their order (what `annotate` does; no extra model calls);
- similar-3 of examples: the 3 task examples nearest the item (no review needed);
- fixed + similar-3 reviewed: the 9 examples then the 3 nearest reviewed items;
- similar-9 of examples + reviewed: the 9 nearest among the examples and the reviewed items.

Accuracy on the items not reviewed, raw (argmax of the model's label distribution) and divided by
the mean distribution over those items (the pool-prior correction), per-class recall, and the
tokens the model evaluated per item (a per-item example block defeats the KV-cache prefix reuse:
this is the speed price). Writes "Similar few-shot examples" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_annotator import build_project, recall_by_class  # noqa: E402
from benchdoc import machine_line, publish  # noqa: E402

from actlabel.annotate import LLMAnnotator, annotate_async  # noqa: E402
from actlabel.models import load_backend  # noqa: E402
from actlabel.models.features import embed_texts  # noqa: E402
from actlabel.stages import open_model  # noqa: E402
from actlabel.task import Example  # noqa: E402


def nearest(query: np.ndarray, pool: np.ndarray, k: int) -> list[int]:
    """Indices of the k rows of `pool` most similar to `query`, least similar first."""
    sims = pool @ query
    top = np.argsort(-sims, kind="stable")[:k]
    return [int(i) for i in top[::-1]]


async def label_with(annotator: LLMAnnotator, items, tasks) -> list[dict[str, float] | None]:
    out = []
    for item, task in zip(items, tasks, strict=True):
        answer = await annotator.label(item, task=task)
        out.append(getattr(answer, "probs", None))
    return out


def scores(names, gold, probs) -> dict[str, object]:
    p = np.array([[pr[n] for n in names] if pr else [1 / len(names)] * len(names) for pr in probs])
    g = np.array([names.index(x) for x in gold])
    calibrated = p / p.mean(axis=0, keepdims=True)
    raw_pred = [names[i] for i in p.argmax(1)]
    cal_pred = [names[i] for i in calibrated.argmax(1)]
    return {
        "raw": float((p.argmax(1) == g).mean()),
        "pool-prior": float((calibrated.argmax(1) == g).mean()),
        "recall raw": recall_by_class(list(gold), raw_pred, names),
        "recall pool-prior": recall_by_class(list(gold), cal_pred, names),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="local/qwen2.5-0.5b")
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--review", type=float, default=0.2, help="share of the pool reviewed (gold known)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/actlabel-bench-similar")
    ap.add_argument(
        "--variants", default="1,2,3,4", help="which of the four example choices, by number (see above)"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    started = time.time()
    root = Path(args.work) / f"tweets60-{args.model.split('/')[1]}-{args.size}"
    project = build_project(root, "tweets60", args.size, seed=args.seed)
    store = project.store
    task = store.task
    names = list(task.label_names)
    backend = load_backend(args.model)
    try:
        t0 = time.perf_counter()
        asyncio.run(annotate_async(store, backend=backend, progress=False))
        annotate_s = time.perf_counter() - t0
        annotate_stats = dict(backend.stats)
        items = list(store.iter_items())
        gold = [it.gold_label for it in items]
        rng = np.random.default_rng(args.seed)
        reviewed = np.zeros(len(items), bool)
        reviewed[rng.permutation(len(items))[: round(args.review * len(items))]] = True
        evaluate = [i for i in range(len(items)) if not reviewed[i]]
        text_of = [it.text for it in items]
        item_vec = embed_texts(text_of)
        ex_vec = embed_texts([ex.text for ex in task.examples])
        rev_idx = [i for i in range(len(items)) if reviewed[i]]
        rev_examples = [Example(label=gold[i], text=text_of[i]) for i in rev_idx]
        both_vec = np.vstack([ex_vec, item_vec[rev_idx]])
        both_examples = list(task.examples) + rev_examples

        def variant(examples_for):
            return [dataclasses.replace(task, examples=examples_for(i)) for i in evaluate]

        variants = {
            "fixed (9 task examples)": variant(lambda i: list(task.examples)),
            "similar 3 of the task examples": variant(
                lambda i: [task.examples[j] for j in nearest(item_vec[i], ex_vec, 3)]
            ),
            "fixed + similar 3 reviewed": variant(
                lambda i: (
                    list(task.examples)
                    + [rev_examples[j] for j in nearest(item_vec[i], item_vec[rev_idx], 3)]
                )
            ),
            "similar 9 of examples + reviewed": variant(
                lambda i: [both_examples[j] for j in nearest(item_vec[i], both_vec, 9)]
            ),
        }
        wanted = {int(v) for v in args.variants.split(",")}
        results = []
        for number, (name, tasks) in enumerate(variants.items(), 1):
            if number not in wanted:
                continue
            stack = open_model(store, args.model, backend=backend)
            annotator = LLMAnnotator(store, stack, cot=False, max_parse_retries=1, reasoning_tokens=256)
            before = dict(backend.stats)
            t0 = time.perf_counter()
            probs = asyncio.run(label_with(annotator, [items[i] for i in evaluate], tasks))
            elapsed = time.perf_counter() - t0
            after = backend.stats
            if after["calls"] == before["calls"]:
                # every answer came from the cache the annotate run filled: its figures are this row's
                before, after = dict.fromkeys(after, 0), annotate_stats
                elapsed = annotate_s
            calls = max(1, after["calls"] - before["calls"])
            evaluated = (
                after["prompt_tokens"]
                - before["prompt_tokens"]
                - (after["reused_tokens"] - before["reused_tokens"])
            ) / calls
            row = {
                "variant": name,
                "items": len(evaluate),
                "model calls": after["calls"] - before["calls"],
                "evaluated tokens/call": evaluated,
                "s/item (uncached)": elapsed / calls,
                **scores(names, [gold[i] for i in evaluate], probs),
            }
            print(row, flush=True)
            results.append(row)
    finally:
        backend.close()
        project.close()
    text = render(results, args, names, time.time() - started)
    publish("Similar few-shot examples", text, write=not args.no_write)


def render(results, args, names, elapsed: float) -> str:
    cmd = (
        f"`python bench/bench_similar_examples.py --model {args.model} --size {args.size} "
        f"--review {args.review} --seed {args.seed} --variants {args.variants}`"
    )
    lines = [
        f"Command: {cmd} ({machine_line()}; {elapsed / 60:.1f} min)",
        "",
        f"{args.size} CrowdFlower tweets (crowd agreement >= 0.6), {args.model}, a uniform {args.review:.0%} "
        "reviewed (gold); accuracy on the other items. Examples picked per item by MiniLM cosine "
        "similarity, most similar last. pool-prior: the label distribution divided by its mean over "
        "the evaluated items. Evaluated tokens: prompt tokens not served from the KV cache, per call.",
        "",
        "| examples | items | accuracy raw | accuracy pool-prior | min recall (pool-prior) | "
        "evaluated tokens/call | s/item |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rec = r["recall pool-prior"]
        worst = min(rec, key=lambda n: rec[n])
        lines.append(
            f"| {r['variant']} | {r['items']} | {r['raw']:.3f} | {r['pool-prior']:.3f} | "
            f"{rec[worst]:.2f} ({worst}) | {r['evaluated tokens/call']:.0f} | {r['s/item (uncached)']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
