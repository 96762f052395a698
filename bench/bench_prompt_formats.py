"""Prompt formats for the embedded annotator (issue 11): does another way of showing the few-shot
examples label the demo's tweets better than the chat turns `annotate` sends?

The demo's pool and examples (CrowdFlower tweets with crowd agreement >= 0.6, 3 examples per
label drawn as `actlabel demo` draws them, its seed), the same model, scored with the same
constrained-choice reading of the label probabilities. Variants:
- chat turns: what `annotate` sends (prompting.annotation_messages: system turn with the label
  descriptions, each example a user turn answered by an assistant turn, the item last);
- completion: no chat template, a plain few-shot text ("Tweet: ...\\nSentiment: negative" per
  example), the label read as the next word;
- one turn: the same text as a single user turn of the chat template;
- rule first: the chat turns with the answer rule before each input instead of after it (the
  rule then joins the cached prefix: about 40 tokens evaluated per item instead of about 63);
- ensembles: the sum of the formats' log-probabilities (each format's bias differs).
For each, accuracy of the argmax ("raw") and after dividing by the pool's mean distribution
(the label model's prior correction), per-label recall and the predicted counts.

    python bench/bench_prompt_formats.py --items 150 --seeds 0,1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from benchdoc import machine_line, publish

from actlabel import datasets, prompting
from actlabel.demo import SPECS, TWEETS_MIN_AGREEMENT
from actlabel.models.base import ChatRequest, Message
from actlabel.models.llama_local import LlamaBackend, log_softmax, resolve_local
from actlabel.store import Item
from actlabel.task import Example, Label, Task

FORMATS = ("chat turns", "completion", "one turn", "rule first")
ENSEMBLES = {"chat turns + completion": ("chat turns", "completion"), "all four": FORMATS}


def demo_task_and_pool(seed: int, n: int) -> tuple[Task, list[str], np.ndarray]:
    spec = SPECS["tweets"]
    ds = datasets.load_tweets(min_agreement=TWEETS_MIN_AGREEMENT)
    names = ds.label_names
    n_shots = spec.shots_per_class * len(names)
    pool_idx, shot_idx, _ = datasets.stratified_split(
        ds.labels, (spec.default_size, n_shots * 4, spec.test_size), seed
    )
    shots = [
        Example(label=ds.labels[i], text=ds.texts[i])
        for i in datasets.first_per_label(ds.labels, shot_idx, spec.shots_per_class)
    ]
    task = Task(
        labels=[Label(name, ds.descriptions.get(name, "")) for name in names],
        text_columns=["text"],
        examples=shots,
        instructions=spec.instructions,
    )
    pool = pool_idx[:n]
    return task, [ds.texts[i] for i in pool], np.array([names.index(ds.labels[i]) for i in pool])


class Formats:
    def __init__(self, backend: LlamaBackend, task: Task):
        self.backend, self.task = backend, task
        self.names = list(task.label_names)
        self.head = f"{task.instructions} The labels: {', '.join(self.names)}.\n\n"
        self.shots = "".join(f"Tweet: {e.text.strip()}\nSentiment: {e.label}\n\n" for e in task.examples)

    def score(self, fmt: str, text: str) -> np.ndarray:
        """log p(label) over the task's labels, normalised over them."""
        if fmt == "chat turns":
            item = Item(rowid=1, item_id="x", data={"text": text}, image_path=None, gold_label=None)
            return self._choices(prompting.annotation_messages(self.task, item, cot=False))
        if fmt == "rule first":
            return self._choices(self._rule_first(text))
        body = self.head + self.shots + f"Tweet: {text.strip()}\nSentiment:"
        if fmt == "one turn":
            return self._choices((Message.text("user", body),))
        tokens = self.backend.tokenize(body)
        first = log_softmax(self.backend._eval_prompt(tokens))
        # the first token of " label" after the prompt (the three labels' first tokens differ)
        scores = np.array([first[self.backend.tokenize(body + " " + n)[len(tokens)]] for n in self.names])
        return scores - np.logaddexp.reduce(scores)

    def _rule_first(self, text: str) -> tuple[Message, ...]:
        rule = f"Answer with the label only, exactly as written in the list: {', '.join(self.names)}."
        turns = [prompting.system_message(self.task, "annotate_system")]
        for e in self.task.examples:
            turns.append(
                Message.text("user", f"{rule}\n\n{prompting.render_input([('text', e.text)], False)}")
            )
            turns.append(Message.text("assistant", e.label))
        return (*turns, Message.text("user", f"{rule}\n\n{prompting.render_input([('text', text)], False)}"))

    def _choices(self, messages: tuple[Message, ...]) -> np.ndarray:
        r = self.backend.chat_sync(ChatRequest(messages=messages, choices=tuple(self.names), max_tokens=8))
        return np.array([r.choice_logprobs[n] for n in self.names])


def sem(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(logp: np.ndarray, gold: np.ndarray) -> dict[str, object]:
    raw = logp.argmax(1)
    p = np.exp(logp - np.logaddexp.reduce(logp, axis=1, keepdims=True))
    prior_divided = (np.log(p) - np.log(p.mean(0))).argmax(1)
    k = logp.shape[1]
    return {
        "raw": float((raw == gold).mean()),
        "prior": float((prior_divided == gold).mean()),
        "recall": [
            float((raw[gold == j] == j).mean()) if (gold == j).any() else float("nan") for j in range(k)
        ],
        "recall_prior": [
            float((prior_divided[gold == j] == j).mean()) if (gold == j).any() else float("nan")
            for j in range(k)
        ],
        "counts": np.bincount(raw, minlength=k).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    path, spec = resolve_local(args.model)
    backend = LlamaBackend(path, spec=spec)
    per_seed: list[dict[str, dict[str, object]]] = []
    timing: dict[str, float] = dict.fromkeys(FORMATS, 0.0)
    golds = []
    for seed in seeds:
        task, texts, gold = demo_task_and_pool(seed, args.items)
        golds.append(np.bincount(gold, minlength=len(task.labels)).tolist())
        formats = Formats(backend, task)
        logps: dict[str, np.ndarray] = {}
        for fmt in FORMATS:
            t0 = time.perf_counter()
            logps[fmt] = np.array([formats.score(fmt, t) for t in texts])
            timing[fmt] += time.perf_counter() - t0
        for name, parts in ENSEMBLES.items():
            logps[name] = sum(logps[p] for p in parts)
        per_seed.append({name: evaluate(lp, gold) for name, lp in logps.items()})
        print(
            f"seed {seed}: "
            + "; ".join(f"{k} {v['raw']:.3f}/{v['prior']:.3f}" for k, v in per_seed[-1].items())
        )
    names = task.label_names
    n_total = args.items * len(seeds)
    lines = [
        f"Command: `python bench/bench_prompt_formats.py --items {args.items} --seeds {args.seeds} --model {args.model}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()})",
        "",
        f"The demo's tweets (agreement >= {TWEETS_MIN_AGREEMENT}) and examples ({SPECS['tweets'].shots_per_class} "
        f"per label, drawn as `actlabel demo --seed S` draws them), the first {args.items} pool tweets of each seed, "
        f"local/{args.model}; gold {' / '.join(names)} per seed: {'; '.join(' / '.join(map(str, g)) for g in golds)}. "
        "Raw: the argmax of the label probabilities; prior-divided: divided by their mean over the pool (the "
        "label model's correction, without its feature probe). Mean over seeds; recall and counts of the raw argmax, "
        "summed over seeds.",
        "",
        f"| format | raw | prior-divided | recall {' / '.join(names)} (raw) | recall (prior-divided) | predicted (raw) | s / item |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    for name in [*FORMATS, *ENSEMBLES]:
        rows = [s[name] for s in per_seed]
        secs = timing[name] / n_total if name in timing else sum(timing[p] for p in ENSEMBLES[name]) / n_total
        recall = np.nanmean([r["recall"] for r in rows], axis=0)
        recall_p = np.nanmean([r["recall_prior"] for r in rows], axis=0)
        counts = np.sum([r["counts"] for r in rows], axis=0)
        raw = [r["raw"] for r in rows]
        prior = [r["prior"] for r in rows]
        lines.append(
            f"| {name} | {np.mean(raw):.3f} ± {sem(raw):.3f} | {np.mean(prior):.3f} ± {sem(prior):.3f} | "
            f"{' / '.join(f'{x:.2f}' for x in recall)} | {' / '.join(f'{x:.2f}' for x in recall_p)} | "
            f"{' / '.join(map(str, counts))} | {secs:.2f} |"
        )
    body = "\n".join(lines)
    publish("Prompt formats (embedded annotator, tweets)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
