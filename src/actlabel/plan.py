"""`actlabel plan`: a dry run. One real prompt per stage, and calls, tokens and cost for the dataset.

No model is called. Input tokens are counted on prompts rendered for real items (every item up to
SAMPLE_ITEMS, else an even sample scaled up): with the model's own llama.cpp tokenizer and chat
template for local models, else estimated at CHARS_PER_TOKEN characters per token (the output says
which). Output tokens cannot be counted before the model writes them: they are assumptions per
strategy (`OUTPUT_ASSUMPTIONS`), stated in the output. Cost comes from the price table in
models/usage.py (plus the project's prices.json), local models being free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actlabel import prompting
from actlabel.critics.registry import CRITICS
from actlabel.critique import CRITIC_MODEL_ENV, LLM_STRATEGIES, parse_strategy
from actlabel.errors import UserError
from actlabel.models import DEFAULT_MODEL
from actlabel.models.base import ImagePart, Message, ModelError
from actlabel.models.spec import ModelSpec
from actlabel.models.usage import PriceTable
from actlabel.options import COT_REASONING_TOKENS, CRITIC_REASONING_TOKENS
from actlabel.stages import label_max_tokens, resolve_annotator
from actlabel.store import Item, Store

SAMPLE_ITEMS = 200
CHARS_PER_TOKEN = 4.0
#: output tokens assumed per call (reasoning lengths seen with small local models, capped by max_tokens)
OUTPUT_ASSUMPTIONS = {
    "annotate-cot": 120,
    "naive": 35,
    "cot": 150,
    "mc": 35,
    "devil": 170,
    "analysis": 120,  # cot-logit / cot-ppl analysis
}
#: share of items a yes/no critic doubts (and asks a second, label question about)
DOUBTED_SHARE = 0.2


@dataclass
class StageEstimate:
    stage: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    note: str = ""


class TokenCounter:
    """Counts prompt tokens: the llama tokenizer and chat template for local models, else chars/4."""

    def __init__(self, spec: str):
        self.spec = spec
        self.exact = False
        self._backend = None
        if ModelSpec.parse(spec).can("embedded"):
            try:
                from actlabel.models.llama_worker import load_local

                self._backend = load_local(ModelSpec.parse(spec).path, n_ctx=512)
                self.exact = True
            except (ModelError, ImportError):
                self._backend = None  # the estimate still works, and says it is one

    @property
    def method(self) -> str:
        if self.exact:
            return f"the llama.cpp tokenizer and chat template of {self._backend.spec}"  # type: ignore[union-attr]
        return f"~{CHARS_PER_TOKEN:g} characters per token"

    def prompt(self, messages: Sequence[Message], assistant_prefix: str = "") -> int:
        if self._backend is not None:
            return len(self._backend.tokenize(self._backend.format_prompt(messages, assistant_prefix)))
        chars = sum(len(m.plain_text) + 8 for m in messages) + len(
            assistant_prefix
        )  # ~8 chars of role markup
        return int(math.ceil(chars / CHARS_PER_TOKEN))

    def text(self, text: str) -> int:
        if self._backend is not None:
            return len(self._backend.tokenize(text, special=False))
        return int(math.ceil(len(text) / CHARS_PER_TOKEN))

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def show(messages: Sequence[Message], assistant_prefix: str = "") -> str:
    """A prompt as text: each turn under its role, images as [image: path]."""
    out = []
    for m in messages:
        parts = [f"[image: {p.path}]" if isinstance(p, ImagePart) else p.text for p in m.content]
        out.append(f"[{m.role}]\n" + "\n".join(parts))
    if assistant_prefix:
        out.append(f"[assistant, continued]\n{assistant_prefix}")
    return "\n".join(out)


def _sample(store: Store) -> tuple[list[Item], float]:
    """Up to SAMPLE_ITEMS items spread evenly over the dataset, and the factor scaling them to all."""
    rowids = store.item_rowids()
    if len(rowids) <= SAMPLE_ITEMS:
        return list(store.iter_items(rowids)), 1.0
    step = len(rowids) / SAMPLE_ITEMS
    picked = [rowids[int(i * step)] for i in range(SAMPLE_ITEMS)]
    return list(store.iter_items(picked)), len(rowids) / SAMPLE_ITEMS


def _cost(prices: PriceTable, spec: str, tokens_in: int, tokens_out: int) -> float | None:
    return prices.cost(spec, tokens_in, tokens_out)


def _fmt_cost(cost: float | None, spec: str) -> str:
    if cost is None:
        return "unknown price (add the model to prices.json)"
    return "$0 (local)" if ModelSpec.parse(spec).can("embedded") else f"${cost:,.4f}"


def plan(
    store: Store,
    *,
    model: str | None = None,
    critic_model: str | None = None,
    base_url: str | None = None,
    strategy: str = "cot",
    cot: bool = False,
) -> str:
    """The dry-run report (a multi-line string). See the module docstring."""
    n = store.count_items()
    if n == 0:
        raise UserError(f"{store.root}: no items yet; import some with `actlabel import`")
    task = store.task
    if task.multi_label:
        return _plan_sets(store, model=model, n=n)
    strategy_name, members = parse_strategy(strategy)
    annotator = resolve_annotator(store, model)
    composite = ModelSpec.parse(annotator).is_composite
    llm_spec = ModelSpec.parse(annotator).llm
    llm = None if llm_spec is None else llm_spec.text
    critic = (critic_model or os.environ.get(CRITIC_MODEL_ENV, "").strip() or llm or DEFAULT_MODEL).strip()
    sample, scale = _sample(store)
    first = sample[0]
    prices = PriceTable.load(store.root)
    lines = [
        f"plan for {store.root}: {n} items, {len(task.labels)} labels ({prompting.label_names(task.labels)})",
        "",
    ]
    estimates: list[StageEstimate] = []
    counters: dict[str, TokenCounter] = {}

    def counter(spec: str) -> TokenCounter:
        if spec not in counters:
            counters[spec] = TokenCounter(spec)
        return counters[spec]

    try:
        # ---- annotator
        if llm is None:
            lines.append(
                f"annotator: {annotator}, a few-shot classifier on EfficientNet-Lite0 features of the "
                f"{sum(1 for e in task.examples if e.image)} example images: no model calls"
            )
            estimates.append(StageEstimate("annotate", annotator, 0, 0, 0, 0.0, "feature model"))
        else:
            with_images = ModelSpec.parse(llm).can("supports_images") and not composite
            mode = (
                "chain-of-thought, then `Answer: <label>`"
                if cot
                else "direct answers constrained to the labels"
            )
            lines.append(
                f"annotator: {annotator}, {mode}" + ("; images go to the image expert" if composite else "")
            )
            render: Callable[[Item], tuple] = lambda it: prompting.annotation_messages(  # noqa: E731
                task, it, cot=cot, root=store.root, with_images=with_images
            )
            lines += [f"--- annotator prompt for item {first.item_id} ---", show(render(first)), "---", ""]
            tc = counter(llm)
            tokens_in = int(sum(tc.prompt(render(it)) for it in sample) * scale)
            per_out = OUTPUT_ASSUMPTIONS["annotate-cot"] if cot else label_max_tokens(task.label_names) // 2
            tokens_out = per_out * n
            note = (
                "+ image tokens (not counted)" if with_images and any(it.image_path for it in sample) else ""
            )
            estimates.append(
                StageEstimate(
                    "annotate", llm, n, tokens_in, tokens_out, _cost(prices, llm, tokens_in, tokens_out), note
                )
            )
        # ---- critic
        lines.append(_critic_line(strategy_name, members, critic, llm))
        if strategy_name in LLM_STRATEGIES:
            estimates.append(
                _critic_estimate(store, strategy_name, critic, first, sample, scale, counter, prices, lines)
            )
        else:
            estimates.append(StageEstimate("critique", strategy_name, 0, 0, 0, 0.0, "no model calls"))
    finally:
        for c in counters.values():
            c.close()

    lines.append("")
    methods = sorted({counters[e.model].method for e in estimates if e.model in counters})
    counted = "input tokens counted with " + "; ".join(methods) if methods else "no prompts to count"
    lines.append(f"estimate for the whole dataset ({counted};")
    lines.append(
        "  output tokens assumed per call: "
        + ", ".join(f"{k} {v}" for k, v in OUTPUT_ASSUMPTIONS.items())
        + ")"
    )
    width = max(len(e.model) for e in estimates)
    lines.append(
        f"  {'stage':<9} {'model':<{width}} {'calls':>8} {'input tokens':>14} {'output tokens':>14}  cost"
    )
    for e in estimates:
        lines.append(
            f"  {e.stage:<9} {e.model:<{width}} {e.calls:>8,} {e.input_tokens:>14,} {e.output_tokens:>14,}  "
            f"{_fmt_cost(e.cost, e.model) if e.calls else '-'}" + (f"  {e.note}" if e.note else "")
        )
    total_cost = sum(e.cost or 0.0 for e in estimates)
    unknown = any(e.cost is None for e in estimates)
    lines.append(
        f"  {'total':<9} {'':<{width}} {sum(e.calls for e in estimates):>8,} "
        f"{sum(e.input_tokens for e in estimates):>14,} {sum(e.output_tokens for e in estimates):>14,}  "
        f"${total_cost:,.4f}" + (" + unknown prices" if unknown else "")
    )
    lines.append("no model was called; items already done are skipped when the stages run (resume)")
    return "\n".join(lines)


def _plan_sets(store: Store, *, model: str | None, n: int) -> str:
    """A multi-label task: one yes/no call per label and item (or none for the feature
    annotator); the per-label critic makes no calls."""
    from actlabel.multilabel_annotate import FEATURE_ANNOTATOR_SPEC

    task = store.task
    spec = (model or DEFAULT_MODEL).strip()
    names = task.label_names
    lines = [
        f"plan for {store.root}: {n} items, {len(names)} labels, multi-label ({prompting.label_names(task.labels)})",
        "",
    ]
    if spec == FEATURE_ANNOTATOR_SPEC:
        lines.append(
            f"annotator: {spec}, one-vs-rest on the {len(task.examples)} few-shot examples: no model calls"
        )
    else:
        sample, scale = _sample(store)
        first = sample[0]
        tc = TokenCounter(spec)
        try:
            render = lambda it, label: prompting.label_question_messages(task, it, label, root=store.root)  # noqa: E731
            lines += [f"annotator: {spec}, a yes/no question per label ({len(names)} calls per item)",
                      f"--- annotator prompt for item {first.item_id}, label {names[0]!r} ---",
                      show(render(first, names[0])), "---"]  # fmt: skip
            tokens_in = int(sum(tc.prompt(render(it, lab)) for it in sample for lab in names) * scale)
            calls = n * len(names)
            prices = PriceTable.load(store.root)
            lines.append(
                f"  annotate  {spec}  {calls:,} calls  {tokens_in:,} input tokens  {calls:,} output tokens  "
                f"{_fmt_cost(_cost(prices, spec, tokens_in, calls), spec)} (input counted with {tc.method}; "
                "local models keep the shared prefix of an item's questions in the KV cache)"
            )
        finally:
            tc.close()
    lines.append("critic: per-label, from the annotator's per-label probabilities: no model calls")
    return "\n".join(lines)


def _critic_line(strategy: str, members: list[str] | None, critic: str, annotator_llm: str | None) -> str:
    line = CRITICS[strategy].plan_line if strategy in CRITICS else None
    if line is not None:
        return line.format(members=", ".join(members) if members else "every critic already run")
    same = annotator_llm is not None and ModelSpec.parse(critic).bare == ModelSpec.parse(annotator_llm).bare
    return f"critic: {strategy} with {critic} ({'self' if same else 'cross'}-criticism)"


def _critic_estimate(
    store: Store,
    strategy: str,
    critic: str,
    first: Item,
    sample: list[Item],
    scale: float,
    counter: Callable[[str], TokenCounter],
    prices: PriceTable,
    lines: list[str],
) -> StageEstimate:
    task = store.task
    n = store.count_items()
    machine = {r: label for r, (label,) in store.latest("annotations", ("label",), "status = 'ok'").items()}
    with_images = ModelSpec.parse(critic).can("supports_images")
    body = {
        "naive": "critic_naive",
        "cot": "critic_cot",
        "mc": "critic_mc",
        "devil": "critic_devil",
        "logit": "critic_logit",
        "cot-logit": "critic_analysis",
        "cot-ppl": "critic_analysis",
    }[strategy]
    assumed_reasoning = "(the annotator's reasoning, about 120 tokens)"

    def render(it: Item) -> tuple:
        label = machine.get(it.rowid, task.label_names[0])
        return prompting.critic_messages(
            task, it, body, label, reasoning=assumed_reasoning, with_images=with_images
        )

    lines += [f"--- critic prompt for item {first.item_id} ---", show(render(first)), "---"]
    if strategy == "cot-logit":
        label = machine.get(first.rowid, task.label_names[0])
        verdict = prompting.render("critic_verdict", machine_label=label).strip()
        lines.append(
            f"then, continuing the critic's own answer: <its analysis>\n\n{verdict} -> P(yes), P(no)"
        )
    tc = counter(critic)
    per_item_in = [tc.prompt(render(it)) for it in sample]
    tokens_in = int(sum(per_item_in) * scale)
    if strategy == "devil":  # the prompt carries the annotator's reasoning, not rendered here
        tokens_in += OUTPUT_ASSUMPTIONS["annotate-cot"] * n
    calls = n
    if strategy in ("naive", "cot", "mc", "devil"):
        tokens_out = OUTPUT_ASSUMPTIONS[strategy] * n
        note = ""
    elif strategy == "logit":
        doubted = int(round(DOUBTED_SHARE * n)) if len(task.labels) > 2 else 0
        calls += doubted
        tokens_in += int(doubted * (tokens_in / max(n, 1)))
        tokens_out = n + doubted * 3
        note = f"incl. ~{doubted} label questions ({DOUBTED_SHARE:.0%} doubted, assumed)" if doubted else ""
    elif strategy == "cot-logit":
        analysis = OUTPUT_ASSUMPTIONS["analysis"]
        calls += n
        tokens_in += tokens_in + analysis * n  # the verdict call re-sends the prompt plus the analysis
        tokens_out = (analysis + 1) * n
        note = "2 calls per item: analysis, then the yes/no after it"
    else:  # cot-ppl
        tokens_out = OUTPUT_ASSUMPTIONS["analysis"] * n
        note = "shares its analysis with cot-logit (cached)"
    if with_images and any(it.image_path for it in sample):
        note = "; ".join(x for x in (note, "+ image tokens (not counted)") if x)
    return StageEstimate(
        "critique", critic, calls, tokens_in, tokens_out, _cost(prices, critic, tokens_in, tokens_out), note
    )


#: exported for the CLI and docs
__all__ = ["plan", "OUTPUT_ASSUMPTIONS", "COT_REASONING_TOKENS", "CRITIC_REASONING_TOKENS"]
