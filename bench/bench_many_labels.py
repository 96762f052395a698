"""Many labels (issue 11): where the label list goes in the annotation prompt, and how choices are
scored, on Reuters R52 (52 topics) with the embedded model. Same items and model in one run.

Variants of the prompt:
- every-turn: the answer rule with all 52 names after every few-shot example and after the item
  (what a short list gets);
- after-item: the names after the item only, the examples' turns point at "the list above" (the
  default for a long list, prompting.LONG_LABEL_NAMES);
- system-only: no names after the item either.
Each item is scored twice from the same prompt: "auto" (each choice up to the token where it parts
from the others, the default) and "full" (every token of every choice).

    python bench/bench_many_labels.py --items 40 --model qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from benchdoc import machine_line, publish

from actlabel import prompting
from actlabel.datasets import load_reuters_r52
from actlabel.models.base import ChatRequest, Message, TextPart
from actlabel.models.llama_local import LlamaBackend, resolve_local
from actlabel.store import Item
from actlabel.task import Example, Label, Task

VARIANTS = ("every-turn", "after-item", "system-only")


def r52_task_and_pool(n: int, seed: int) -> tuple[Task, list[Item]]:
    """One example per topic (its first training document), and n other documents drawn at random."""
    data = load_reuters_r52("train")
    first: dict[str, int] = {}
    for i, lab in enumerate(data.labels):
        first.setdefault(lab, i)
    examples = [Example(lab, data.texts[i][:500]) for lab, i in sorted(first.items())]
    task = Task(labels=[Label(n_) for n_ in data.label_names], text_columns=["text"], examples=examples,
                instructions="Classify the topic of the Reuters news story.")  # fmt: skip
    rest = np.setdiff1d(np.arange(len(data.texts)), list(first.values()))
    pick = np.random.default_rng(seed).choice(rest, size=n, replace=False)
    items = [
        Item(k + 1, f"r52-{i}", {"text": data.texts[i]}, None, data.labels[i]) for k, i in enumerate(pick)
    ]
    return task, items


def run_variant(backend: LlamaBackend, task: Task, items: list[Item], variant: str) -> dict:
    saved = prompting.LONG_LABEL_NAMES
    prompting.LONG_LABEL_NAMES = 10**9 if variant == "every-turn" else saved
    try:
        prefix = prompting.annotation_prefix(task, cot=False)
    finally:
        prompting.LONG_LABEL_NAMES = saved
    names = tuple(task.label_names)
    out = {"variant": variant, "prefix_tokens": len(backend.tokenize(backend.format_prompt(prefix)))}
    correct = {"auto": 0, "full": 0}
    seconds = {"eval": 0.0, "auto": 0.0, "full": 0.0}
    fresh_tokens = 0
    for i, item in enumerate(items):
        turn = prompting.annotation_item_turn(task, item, cot=False)
        if variant == "system-only":
            text, _ = prompting.item_content(task, item)
            turn = Message("user", (TextPart(prompting.render("annotate_direct_listed", input=text)),))
        request = ChatRequest((*prefix, turn), max_tokens=8, choices=names)
        prompt = backend.format_prompt(request.messages)
        tokens = backend.tokenize(prompt)
        backend._fit_context(len(tokens) + 2)
        for mode in ("auto", "full"):
            reused = backend.stats["reused_tokens"]
            t0 = time.perf_counter()
            logits = backend._eval_prompt(tokens)
            t1 = time.perf_counter()
            backend.choice_scoring = mode
            answer, *_ = backend._choose(prompt, tokens, logits, request, np.random.default_rng(0))
            t2 = time.perf_counter()
            correct[mode] += answer == item.gold_label
            if i == 0 and mode == "auto":
                out["first_item_s"] = t1 - t0  # the shared prefix, evaluated once
            elif mode == "auto":
                seconds["eval"] += t1 - t0
                fresh_tokens += len(tokens) - (backend.stats["reused_tokens"] - reused)
            if i > 0:
                seconds[mode] += t2 - t1
    backend.choice_scoring = "auto"
    m = max(1, len(items) - 1)
    out |= {
        "accuracy_auto": correct["auto"] / len(items),
        "accuracy_full": correct["full"] / len(items),
        "new_tokens": fresh_tokens / m,
        "eval_s": seconds["eval"] / m,
        "choose_auto_s": seconds["auto"] / m,
        "choose_full_s": seconds["full"] / m,
    }
    out["labels_per_s"] = 1 / (out["eval_s"] + out["choose_auto_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    task, items = r52_task_and_pool(args.items, args.seed)
    path, spec = resolve_local(args.model)
    backend = LlamaBackend(path, spec=spec)
    rows = []
    for variant in VARIANTS:
        row = run_variant(backend, task, items, variant)
        rows.append(row)
        print(row, flush=True)
    load = os.getloadavg()[0]
    table = [
        "| prompt | prefix tokens | first item (s) | new tokens / item | eval s / item | choose s / item, auto (full) "
        "| labels/s | accuracy, auto (full) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['variant']} | {r['prefix_tokens']:,} | {r['first_item_s']:.0f} | {r['new_tokens']:.0f} "
            f"| {r['eval_s']:.2f} | {r['choose_auto_s']:.2f} ({r['choose_full_s']:.2f}) | {r['labels_per_s']:.3f} "
            f"| {r['accuracy_auto']:.3f} ({r['accuracy_full']:.3f}) |"
        )
    body = (
        f"Command: `python bench/bench_many_labels.py --items {args.items} --model {args.model}` "
        f"({time.strftime('%Y-%m-%d')}; {machine_line()}; 1-minute load {load:.1f} at the end)\n\n"
        f"Reuters R52 (52 topics), one example per topic (its first training document, first 500 characters), "
        f"{args.items} other training documents drawn at random (seed {args.seed}); local/{args.model}, "
        "the LLM's own answer (no label model).\n\n" + "\n".join(table)
    )
    publish("Many labels", body, write=not args.no_write)


if __name__ == "__main__":
    main()
