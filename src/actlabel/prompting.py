"""Prompts from the task and an item, and answers mapped back onto the label set.

Templates live in `actlabel/prompts/*.txt` with `{{name}}` placeholders (not `str.format`: item
text and instructions are full of braces). Their sha256 goes into the response-cache key
(`templates_hash`), so editing a template never serves an answer given to the old wording.

Few-shot examples are sent as prior chat turns (user: example input, assistant: its label) rather
than pasted into one prompt: every item then shares the same token prefix (system + examples),
which llama.cpp reuses from its KV cache and hosted APIs bill as cached input.

Mapping a model's answer onto a label (`map_label`) is deliberately forgiving about form and
strict about meaning: exact, then case/space/punctuation-insensitive, then a label's description,
then a label that opens the answer ("positive sentiment"), then a unique prefix either way
("pos" <-> "positive"). Anything else raises ValueError, so the caller re-asks and finally stores
the raw answer as a failure; a label is never guessed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from actlabel.models.base import ImagePart, Message, TextPart, TokenLogprob
from actlabel.store import Item
from actlabel.task import Example, Label, Task

PROMPTS_DIR = Path(__file__).parent / "prompts"
#: long documents are cut to this many characters so a prompt fits a small local context window
MAX_INPUT_CHARS = 3000
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_BLANK_RUN = re.compile(r"\n{3,}")


# ---- templates ---------------------------------------------------------------------------------


@functools.cache
def template(name: str) -> str:
    """The text of `prompts/NAME.txt` (without the final newline)."""
    path = PROMPTS_DIR / f"{name}.txt"
    return path.read_text(encoding="utf-8").rstrip("\n")


def templates_hash(names: Iterable[str]) -> str:
    """A short sha256 over the named templates' names and contents (part of the cache key)."""
    h = hashlib.sha256()
    for name in sorted(set(names)):
        h.update(name.encode())
        h.update(b"\0")
        h.update(template(name).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.cache
def compiled(name: str) -> tuple[str, ...]:
    """Template `name` split once into literal text and placeholder names, alternating
    (literal, name, literal, ..., literal): rendering is then a join, not a regex pass per item."""
    return tuple(_PLACEHOLDER.split(template(name)))


def render(name: str, **values: str) -> str:
    """Fill `{{key}}` placeholders of template `name`. A placeholder without a value is a bug: KeyError."""
    pieces = list(compiled(name))
    pieces[1::2] = [values[key] for key in pieces[1::2]]
    text = "".join(pieces)
    # An empty optional value (no instructions) would leave a run of blank lines.
    if "\n\n\n" in text:
        text = _BLANK_RUN.sub("\n\n", text)
    return text.strip("\n")


# ---- pieces of a prompt ------------------------------------------------------------------------


def label_list(labels: Sequence[Label]) -> str:
    return "\n".join(
        f"- {lab.name}: {lab.description}" if lab.description else f"- {lab.name}" for lab in labels
    )


def label_names(labels: Sequence[Label]) -> str:
    return ", ".join(lab.name for lab in labels)


def _clip(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " [...]"


def item_text_fields(task: Task, item: Item) -> list[tuple[str, str]]:
    """The (column, value) text fields of an item: the task's text columns, else every non-image field."""
    columns = task.text_columns or [k for k in item.data if k != task.image_column and k != "__image__"]
    return [(c, str(item.data[c])) for c in columns if item.data.get(c) not in (None, "")]


def render_input(fields: Sequence[tuple[str, str]], has_image: bool) -> str:
    """The item as the model reads it: one `column: value` line per text field, and a note for an image."""
    lines = []
    if has_image:
        lines.append("Image: (attached)")
    for column, value in fields:
        lines.append(f"{column}: {_clip(value)}")
    return "\n".join(lines) if lines else "(empty item)"


def resolve_image(path: str, root: Path | None) -> str:
    """Few-shot example images are absolute or relative to the project folder."""
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    return str(p)


def _content(text: str, image: str | None) -> tuple[TextPart | ImagePart, ...]:
    return (ImagePart(image), TextPart(text)) if image else (TextPart(text),)


def system_message(task: Task, name: str, **values: str) -> Message:
    instructions = task.instructions.strip()
    return Message.text(
        "system", render(name, instructions=instructions, label_list=label_list(task.labels), **values)
    )


def item_content(task: Task, item: Item, *, with_image: bool = True) -> tuple[str, str | None]:
    """(rendered input text, image path or None) for an item."""
    image = item.image_path if (with_image and item.image_path) else None
    return render_input(item_text_fields(task, item), image is not None), image


# ---- annotator prompts -------------------------------------------------------------------------

ANNOTATE_TEMPLATES = ("annotate_system", "annotate_direct", "annotate_cot")
#: a label list longer than this (names joined, in characters: about 50 tokens) is not repeated in
#: the few-shot examples' turns, only after the item (see annotation_prefix)
LONG_LABEL_NAMES = 200


def long_label_list(task: Task) -> bool:
    return len(label_names(task.labels)) > LONG_LABEL_NAMES


def annotate_templates(task: Task) -> tuple[str, ...]:
    """The templates this task's annotation prompts use (their hash keys cached answers and
    stored settings, so a task whose prompts did not change keeps its cache)."""
    if long_label_list(task):
        return (*ANNOTATE_TEMPLATES, "annotate_direct_listed", "annotate_cot_listed")
    return ANNOTATE_TEMPLATES


def annotation_messages(
    task: Task, item: Item, *, cot: bool, root: Path | None = None, with_images: bool = True
) -> tuple[Message, ...]:
    """System turn, few-shot examples as prior turns, then the item.

    The answer rule (with the label list; after the item only when the list is long) is repeated
    after every input: it costs about 20 tokens per item that a local model must evaluate, and it
    is worth it: Qwen2.5-0.5B labelled 0.578 of
    90 tweets this way and 0.456 with the rule stated once in the system turn (docs/benchmarks.md,
    "Embedded annotator")."""
    prefix = annotation_prefix(task, cot=cot, root=root, with_images=with_images)
    return (*prefix, annotation_item_turn(task, item, cot=cot, with_images=with_images))


def annotation_prefix(
    task: Task, *, cot: bool, root: Path | None = None, with_images: bool = True
) -> tuple[Message, ...]:
    """The turns every item's annotation prompt starts with: the system turn and the few-shot
    examples. The same for all items of a run, so the annotator builds it once.

    A long label list is named once in the system turn and once after the item, not after every
    example: 52 Reuters topics with one example each made a 13,400-token prefix, 8,300 of them the
    list repeated (docs/benchmarks.md, "Many labels")."""
    body = "annotate_cot" if cot else "annotate_direct"
    if long_label_list(task):
        body += "_listed"
    names = label_names(task.labels)
    messages = [system_message(task, "annotate_system")]
    for ex, shown, image in _example_inputs(task, root, with_images):
        messages.append(Message("user", _content(render(body, input=shown, label_names=names), image)))
        messages.append(Message.text("assistant", f"Answer: {ex.label}" if cot else ex.label))
    return tuple(messages)


def _example_inputs(
    task: Task, root: Path | None, with_images: bool
) -> Iterator[tuple[Example, str, str | None]]:
    """(example, its input as the prompt shows it, its image or None) for each few-shot example
    the model can see: an image-only example is left out for a text-only model."""
    text_column = (task.text_columns or ["text"])[0]
    for ex in task.examples:
        image = resolve_image(ex.image, root) if (ex.image and with_images) else None
        fields = [(text_column, ex.text)] if ex.text.strip() else []
        if fields or image is not None:
            yield ex, render_input(fields, image is not None), image


def annotation_item_turn(task: Task, item: Item, *, cot: bool, with_images: bool = True) -> Message:
    """The last turn of an annotation prompt: the item, and the answer rule."""
    body = "annotate_cot" if cot else "annotate_direct"
    text, image = item_content(task, item, with_image=with_images)
    return Message("user", _content(render(body, input=text, label_names=label_names(task.labels)), image))


# ---- multi-label annotator prompts ---------------------------------------------------------------

MULTILABEL_TEMPLATES = ("annotate_multilabel_system", "annotate_multilabel_set", "annotate_multilabel_label")


def label_question_messages(
    task: Task, item: Item, label: str, *, root: Path | None = None, with_images: bool = True
) -> tuple[Message, ...]:
    """A multi-label task asks one yes/no question per label: system turn, the few-shot examples
    as prior turns answering with their label sets, then the item and the question about `label`.

    The question comes last, so the prompts of one item's labels share everything before it:
    llama.cpp keeps that prefix in its KV cache and evaluates only the short question per label."""
    names = label_names(task.labels)
    messages = [system_message(task, "annotate_multilabel_system")]
    for ex, shown, image in _example_inputs(task, root, with_images):
        body = render("annotate_multilabel_set", input=shown, label_names=names)
        messages.append(Message("user", _content(body, image)))
        messages.append(Message.text("assistant", ", ".join(ex.label_set()) or "none"))
    text, image = item_content(task, item, with_image=with_images)
    messages.append(
        Message("user", _content(render("annotate_multilabel_label", input=text, label=label), image))
    )
    return tuple(messages)


# ---- critic prompts ----------------------------------------------------------------------------

CRITIC_TEMPLATES = (
    "critic_system",
    "critic_naive",
    "critic_cot",
    "critic_mc",
    "critic_devil",
    "critic_logit",
    "critic_analysis",
    "critic_verdict",
    "critic_propose",
)


def critic_messages(
    task: Task,
    item: Item,
    body: str,
    machine_label: str,
    *,
    reasoning: str = "",
    with_images: bool = True,
) -> tuple[Message, ...]:
    """System turn and one user turn asking template `body` about the item and its machine label."""
    text, image = item_content(task, item, with_image=with_images)
    prompt = render(
        body,
        input=text,
        machine_label=machine_label,
        label_names=label_names(task.labels),
        reasoning=_clip(reasoning or "(none)", 1500),
    )
    return (system_message(task, "critic_system"), Message("user", _content(prompt, image)))


# ---- answers -> labels -------------------------------------------------------------------------

_FILLER = re.compile(
    r"^(?:final\s+)?(?:answer|label|class|category|prediction|sentiment|the\s+label\s+is|it\s+is|this\s+is)\s*[:\-]?\s*",
    re.I,
)


def normalize(text: str) -> str:
    """casefold, punctuation -> space, single spaces."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def _answer_span(text: str) -> str:
    """The part of a direct answer that should hold the label: the first non-empty line, without
    markdown, quotes or a leading 'Label:'."""
    for line in text.strip().splitlines():
        line = line.strip().strip("*`'\"“”‘’[]()<>").strip()
        if line:
            return _FILLER.sub("", line, count=1).strip().strip("*`'\"“”‘’.[]()<>").strip()
    return ""


def map_label(answer: str, labels: Sequence[Label]) -> str:
    """The label `answer` names (see the module docstring for the rules); ValueError if none or ambiguous."""
    span = _answer_span(answer)
    if not span:
        raise ValueError("empty answer")
    names = [lab.name for lab in labels]
    if span in names:
        return span
    norm = normalize(span)
    if not norm:
        raise ValueError(f"answer {span[:60]!r} names no label")
    by_norm: dict[str, str] = {}
    for name in names:
        by_norm.setdefault(normalize(name), name)
    if norm in by_norm:
        return by_norm[norm]
    for lab in labels:
        if lab.description and normalize(lab.description) == norm:
            return lab.name
    # A label that opens the answer at a word boundary ("positive sentiment", "neg - because..."):
    # the longest such label, so "very positive" wins over "very" when both exist.
    opening = [n for n in by_norm if n and (norm == n or norm.startswith(n + " "))]
    if opening:
        best = max(opening, key=len)
        if sum(len(o) == len(best) for o in opening) == 1:
            return by_norm[best]
    first = norm.split(" ")[0]
    # A truncated or abbreviated answer that starts exactly one label ("pos" for "positive").
    starts = [n for n in by_norm if len(first) >= 2 and n.startswith(norm)]
    if len(starts) == 1:
        return by_norm[starts[0]]
    # A label that is an abbreviation of the answer's first word ("negative" for the label "neg").
    inside = [n for n in by_norm if len(n) >= 3 and " " not in n and first.startswith(n)]
    if len(inside) == 1:
        return by_norm[inside[0]]
    raise ValueError(f"answer {span[:60]!r} is not one of the labels ({', '.join(names[:12])})")


_ANSWER_LINE = re.compile(r"answer\s*[:=\-]\s*(.+)", re.I)


def cot_answer(text: str) -> tuple[str, str] | None:
    """(reasoning, answer text) of a chain-of-thought reply: the text after the last 'Answer:'.
    None when the reply has no answer line (typically cut off by max_tokens)."""
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    reasoning = text[: last.start()].strip()
    return reasoning, last.group(1).strip()


# ---- probabilities ---------------------------------------------------------------------------


def normalized_probs(logprobs: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
    """exp and renormalise log-probabilities over `keys` (missing keys get probability 0)."""
    finite = [logprobs[k] for k in keys if k in logprobs and math.isfinite(logprobs[k])]
    if not finite:
        raise ValueError("no probability for any choice")
    top = max(finite)
    raw = {
        k: (math.exp(logprobs[k] - top) if k in logprobs and math.isfinite(logprobs[k]) else 0.0)
        for k in keys
    }
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def choice_probs_after(
    tokens: Sequence[TokenLogprob], text: str, marker: re.Pattern[str], choices: Sequence[str]
) -> dict[str, float] | None:
    """Probabilities of `choices` at the first token generated after the last match of `marker` in
    `text`, from that token's top alternatives (as `openai_compat.choice_logprobs_from_tokens`).

    This reads the confidence of a chain-of-thought answer ('Answer: pos') without a second call.
    None when the tokens do not reach past the marker or no alternative matches a choice.
    """
    from actlabel.models.openai_compat import choice_logprobs_from_tokens

    matches = list(marker.finditer(text))
    if not matches or not tokens or "".join(t.token for t in tokens) != text:
        return None  # offsets are only meaningful when the tokens spell the text exactly
    target = matches[-1].end()
    start = 0
    for i, tok in enumerate(tokens):
        end = start + len(tok.token)
        if end > target:  # the first token reaching past the marker (or straddling its end)
            lp = choice_logprobs_from_tokens(tuple(tokens[i:]), tuple(choices))
            return None if lp is None else normalized_probs(lp, list(choices))
        start = end
    return None
