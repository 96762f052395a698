"""Prompt rendering from the task and an item, and answers mapped back onto the label set."""

from __future__ import annotations

import math
import re

import pytest

from actlabel import prompting
from actlabel.models.base import ImagePart, TextPart, TokenLogprob
from actlabel.store import Item
from actlabel.task import Example, Label, Task

LABELS = [
    Label("positive", "the author is pleased"),
    Label("negative", "the author is unhappy"),
    Label("neutral"),
]


def task(**kw) -> Task:
    return Task(
        labels=list(LABELS), instructions="Classify the sentiment of the tweet.", text_columns=["text"], **kw
    )


def item(text: str = "I love it", image: str | None = None) -> Item:
    data = {"text": text} | ({"img": "x.png"} if image else {})
    return Item(1, "a", data, image, None)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("positive", "positive"),
        ("Positive", "positive"),
        ("  NEGATIVE.  ", "negative"),
        ("**neutral**", "neutral"),
        ('"positive"', "positive"),
        ("Label: negative", "negative"),
        ("Answer: neutral", "neutral"),
        ("positive sentiment, because the author loves it", "positive"),
        ("neg", "negative"),  # abbreviated / cut off by max_tokens
        ("posit", "positive"),
        ("the author is unhappy", "negative"),  # a label's description
        ("negative\n\nThe tweet complains about service.", "negative"),  # first line only
    ],
)
def test_map_label_accepts_forms_of_a_label(answer: str, expected: str) -> None:
    assert prompting.map_label(answer, LABELS) == expected


@pytest.mark.parametrize("answer", ["", "   ", "I cannot decide", "mixed", "n", "The sentiment is unclear"])
def test_map_label_refuses_what_names_no_label(answer: str) -> None:
    with pytest.raises(ValueError):
        prompting.map_label(answer, LABELS)


def test_map_label_short_labels_are_abbreviations_of_words() -> None:
    short = [Label("neg"), Label("neutral"), Label("pos")]
    assert prompting.map_label("negative", short) == "neg"
    assert prompting.map_label("Positive.", short) == "pos"
    assert prompting.map_label("neutral", short) == "neutral"
    with pytest.raises(ValueError):
        prompting.map_label("ne", short)  # a prefix of both neg and neutral: ambiguous


def test_map_label_prefers_the_longest_opening_label() -> None:
    labels = [Label("very positive"), Label("positive"), Label("very")]
    assert prompting.map_label("very positive indeed", labels) == "very positive"


def test_cot_answer_takes_the_last_answer_line() -> None:
    text = "The answer: maybe positive at first.\nBut the end is sad.\nAnswer: negative"
    reasoning, answer = prompting.cot_answer(text)
    assert answer == "negative"
    assert reasoning.endswith("the end is sad.")
    assert prompting.cot_answer("Reasoning that got cut off before") is None


def test_render_fills_placeholders_and_refuses_missing_ones() -> None:
    text = prompting.render("annotate_direct", input="text: hi {braces}", label_names="a, b")
    assert "text: hi {braces}" in text and "a, b" in text and "{{" not in text
    with pytest.raises(KeyError):
        prompting.render("annotate_direct", input="x")


def test_templates_hash_depends_on_content(monkeypatch: pytest.MonkeyPatch) -> None:
    before = prompting.templates_hash(prompting.ANNOTATE_TEMPLATES)
    assert before == prompting.templates_hash(reversed(prompting.ANNOTATE_TEMPLATES))
    original = prompting.template

    def edited(name: str) -> str:
        return original(name) + (" (edited)" if name == "annotate_direct" else "")

    monkeypatch.setattr(prompting, "template", edited)
    assert prompting.templates_hash(prompting.ANNOTATE_TEMPLATES) != before


def test_annotation_messages_use_examples_as_prior_turns() -> None:
    t = task(examples=[Example("positive", "Great day!"), Example("negative", "Awful food")])
    msgs = prompting.annotation_messages(t, item("So so"), cot=False)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    system = msgs[0].plain_text
    assert "Classify the sentiment" in system
    assert "- positive: the author is pleased" in system and "- neutral" in system
    assert "text: Great day!" in msgs[1].plain_text and msgs[2].plain_text == "positive"
    assert "text: So so" in msgs[-1].plain_text
    assert "positive, negative, neutral" in msgs[-1].plain_text
    # Every item shares the same prefix (system + examples): the KV-cache reuse depends on it.
    other = prompting.annotation_messages(t, item("Another"), cot=False)
    assert other[:-1] == msgs[:-1]


def test_a_long_label_list_is_named_after_the_item_only() -> None:
    topics = [Label(f"topic-{i:02d}-{'x' * 8}") for i in range(20)]  # 20 names, 399 characters
    examples = [Example(lab.name, f"an example about {lab.name}") for lab in topics]
    t = Task(labels=topics, text_columns=["text"], examples=examples)
    assert prompting.long_label_list(t)
    msgs = prompting.annotation_messages(t, item("which one?"), cot=False)
    names = prompting.label_names(topics)
    assert names in msgs[-1].plain_text and msgs[-1].plain_text.endswith(f"in the list: {names}.")
    example_turns = [m.plain_text for m in msgs[1:-1:2]]
    assert len(example_turns) == 20
    assert all(
        names not in turn and turn.endswith("exactly as written in the list above.") for turn in example_turns
    )
    assert sum(len(m.plain_text) for m in msgs) < 20 * len(names)  # the list is not repeated 21 times
    # chain of thought likewise: the examples' turns point at the list, the item's names it
    cot = prompting.annotation_messages(t, item("which one?"), cot=True)
    assert cot[-1].plain_text.endswith(f"Answer: <one of {names}>")
    assert all(
        names not in m.plain_text and m.plain_text.endswith("<one of the labels listed above>")
        for m in cot[1:-1:2]
    )
    assert sum(len(m.plain_text) for m in cot) < 20 * len(names)
    # the new template keys this task's cache; a short list's prompts and key are as before
    assert {"annotate_direct_listed", "annotate_cot_listed"} <= set(prompting.annotate_templates(t))
    short = task(examples=[Example("positive", "Great day!")])
    assert not prompting.long_label_list(short)
    assert prompting.annotate_templates(short) == prompting.ANNOTATE_TEMPLATES
    assert (
        "positive, negative, neutral" in prompting.annotation_messages(short, item(), cot=False)[1].plain_text
    )


def test_cot_messages_ask_for_an_answer_line() -> None:
    t = task(examples=[Example("neutral", "It rains")])
    msgs = prompting.annotation_messages(t, item(), cot=True)
    assert "Answer: <one of positive, negative, neutral>" in msgs[-1].plain_text
    assert msgs[2].plain_text == "Answer: neutral"


def test_images_become_image_parts(tmp_path) -> None:
    t = Task(labels=list(LABELS), image_column="img", examples=[Example("positive", image="ex.png")])
    msgs = prompting.annotation_messages(t, item("", image="/data/x.png"), cot=False, root=tmp_path)
    assert isinstance(msgs[1].content[0], ImagePart) and msgs[1].content[0].path == str(tmp_path / "ex.png")
    assert isinstance(msgs[-1].content[0], ImagePart) and msgs[-1].content[0].path == "/data/x.png"
    assert isinstance(msgs[-1].content[1], TextPart) and "Image: (attached)" in msgs[-1].content[1].text
    text_only = prompting.annotation_messages(t, item("", image="/data/x.png"), cot=False, with_images=False)
    assert all(isinstance(p, TextPart) for m in text_only for p in m.content)


def test_long_inputs_are_clipped() -> None:
    msgs = prompting.annotation_messages(task(), item("word " * 5000), cot=False)
    assert len(msgs[-1].plain_text) < prompting.MAX_INPUT_CHARS + 500
    assert "[...]" in msgs[-1].plain_text


def test_critic_messages_carry_label_and_reasoning() -> None:
    msgs = prompting.critic_messages(task(), item(), "critic_devil", "negative", reasoning="It sounds angry.")
    user = msgs[-1].plain_text
    assert "Machine label: negative" in user and "It sounds angry." in user and "devil's advocate" in user
    assert "meticulous reviewer" in msgs[0].plain_text


def test_normalized_probs() -> None:
    p = prompting.normalized_probs({"a": math.log(0.2), "b": math.log(0.6)}, ["a", "b", "c"])
    assert p == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    with pytest.raises(ValueError):
        prompting.normalized_probs({}, ["a"])


def test_choice_probs_after_reads_the_token_after_the_marker() -> None:
    text = "It is upbeat.\nAnswer: positive"
    tokens = [
        TokenLogprob("It is upbeat.", -0.1),
        TokenLogprob("\nAnswer", -0.1),
        TokenLogprob(":", -0.01),
        TokenLogprob(
            " positive",
            math.log(0.6),
            {" positive": math.log(0.6), " negative": math.log(0.3), " neutral": math.log(0.1)},
        ),
    ]
    probs = prompting.choice_probs_after(
        tokens, text, re.compile(r"answer\s*:", re.I), ["positive", "negative", "neutral"]
    )
    assert probs == pytest.approx({"positive": 0.6, "negative": 0.3, "neutral": 0.1})
    # Tokens that do not spell the text: offsets would be meaningless, so nothing is read.
    assert prompting.choice_probs_after(tokens[:2], text, re.compile("Answer:"), ["positive"]) is None


def _render_per_call(name: str, **values: str) -> str:
    """render as it was before templates were compiled (a regex pass per call): the reference."""
    text = prompting._PLACEHOLDER.sub(lambda m: values[m.group(1)], prompting.template(name))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


@pytest.mark.parametrize("name", sorted(p.stem for p in prompting.PROMPTS_DIR.glob("*.txt")))
@pytest.mark.parametrize(
    "value", ["", "plain", "a {{input}} and {x} and \\1 \\g<0>", "\n\n\n\nlines\n\n\n", "café ☕"]
)
def test_compiled_templates_render_exactly_as_before(name: str, value: str) -> None:
    keys = set(prompting._PLACEHOLDER.findall(prompting.template(name)))
    values = {k: f"{k}:{value}" if k != "instructions" else value for k in keys}
    assert prompting.render(name, **values) == _render_per_call(name, **values)
    if keys:
        with pytest.raises(KeyError):
            prompting.render(name)


def test_annotator_prefix_built_once_gives_the_same_prompts(tmp_path) -> None:
    from types import SimpleNamespace

    from actlabel.annotate import LLMAnnotator

    t = task(examples=[Example("positive", "great stuff"), Example("neutral", "meh")])
    store = SimpleNamespace(task=t, root=tmp_path)
    raw = SimpleNamespace(supports_images=True, supports_logprobs=False)
    annotator = LLMAnnotator(
        store, SimpleNamespace(raw=raw), cot=False, max_parse_retries=0, reasoning_tokens=8
    )
    first, second = annotator.messages(item("one")), annotator.messages(item("two"))
    assert first == prompting.annotation_messages(t, item("one"), cot=False, root=tmp_path)
    assert second == prompting.annotation_messages(t, item("two"), cot=False, root=tmp_path)
    assert all(a is b for a, b in zip(first[:-1], second[:-1], strict=True))
    annotator.cot = True
    assert annotator.messages(item("one")) == prompting.annotation_messages(
        t, item("one"), cot=True, root=tmp_path
    )
    other = task(examples=[])
    assert annotator.messages(item("one"), other) == prompting.annotation_messages(
        other, item("one"), cot=True, root=tmp_path
    )
