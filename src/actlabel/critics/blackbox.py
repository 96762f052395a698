"""Black-box critics: any chat model, the error probability read from its text (PAPER.md step 2).

- naive: "how likely is this label wrong?", answered directly with a number;
- cot: reason step by step about the item and the label, then the number (the paper's best
  critic on large models, and our default);
- mc: a graded verdict (A certainly correct ... E certainly wrong) mapped to a probability;
- devil: shown the annotator's reasoning (annotate with --cot), argue against it, then the number.

Every one ends with 'Correct label:' (the proposed label) and 'Reason:' (the one-line rationale
shown to reviewers). A reply without a usable probability or verdict is re-asked and finally
stored as a failure with its raw text.
"""

from __future__ import annotations

import re
from typing import ClassVar

from actlabel import prompting
from actlabel.critics.base import (
    CriticContext,
    Strategy,
    Target,
    Verdict,
    consistent_proposal,
    parse_probability,
    stated_label,
    stated_reason,
)
from actlabel.models.base import ChatRequest, ChatResponse
from actlabel.models.retry import ParseFailure

#: max_tokens of a direct (no reasoning) critic answer: three short lines
SHORT_ANSWER_TOKENS = 80


class _Verbalized(Strategy):
    body: ClassVar[str]
    reasons: ClassVar[bool]  # True: lets the model think first (needs the larger token budget)

    def _verdict(self, ctx: CriticContext, target: Target, text: str) -> Verdict:
        e = parse_probability(text)
        stated = stated_label(text, ctx.labels)
        return Verdict(e, consistent_proposal(e, stated, target.machine_label), stated_reason(text), text)

    def request(self, ctx: CriticContext, target: Target) -> ChatRequest:
        max_tokens = ctx.reasoning_tokens if self.reasons else SHORT_ANSWER_TOKENS
        return ChatRequest(
            ctx.messages(target, self.body, reasoning=target.reasoning or ""), max_tokens=max_tokens
        )

    async def judge(self, ctx: CriticContext, target: Target) -> Verdict | ParseFailure:
        def parse(response: ChatResponse) -> Verdict:
            return self._verdict(ctx, target, response.text)

        outcome = await ctx.ask(self.request(ctx, target), parse)
        return outcome if isinstance(outcome, ParseFailure) else outcome.value


class NaiveCritic(_Verbalized):
    name = "naive"
    body = "critic_naive"
    templates = ("critic_system", "critic_naive")
    reasons = False


class CoTCritic(_Verbalized):
    name = "cot"
    body = "critic_cot"
    templates = ("critic_system", "critic_cot")
    reasons = True


class DevilCritic(_Verbalized):
    name = "devil"
    body = "critic_devil"
    templates = ("critic_system", "critic_devil")
    reasons = True
    needs_reasoning = True


#: graded options of the multiple-choice critic and the error probability each stands for
MC_OPTIONS: dict[str, tuple[str, float]] = {
    "A": ("certainly correct", 0.02),
    "B": ("probably correct", 0.25),
    "C": ("unsure", 0.5),
    "D": ("probably wrong", 0.75),
    "E": ("certainly wrong", 0.98),
}
_VERDICT_LINE = re.compile(r"verdict\s*\**\s*[:=]\s*\**\s*(.+)", re.I)
_LETTER = re.compile(r"^\(?([A-E])\b(?:\)|\.|:|\s|$)")


def parse_mc_verdict(text: str) -> str:
    """The option letter of the last 'Verdict:' line (a letter, or the option's words)."""
    matches = list(_VERDICT_LINE.finditer(text))
    if not matches:
        raise ValueError("no 'Verdict:' line in the answer")
    value = matches[-1].group(1).strip().strip("*`'\"")
    m = _LETTER.match(value) or (_LETTER.match(value.upper()) if len(value) == 1 else None)
    if m:
        return m.group(1)
    norm = prompting.normalize(value)
    hits = [letter for letter, (words, _p) in MC_OPTIONS.items() if words in norm]
    if len(hits) == 1:
        return hits[0]
    raise ValueError(f"verdict {value[:40]!r} is not one of A-E")


class MCCritic(_Verbalized):
    name = "mc"
    body = "critic_mc"
    templates = ("critic_system", "critic_mc")
    reasons = False

    def _verdict(self, ctx: CriticContext, target: Target, text: str) -> Verdict:
        letter = parse_mc_verdict(text)
        words, e = MC_OPTIONS[letter]
        stated = stated_label(text, ctx.labels)
        reason = stated_reason(text)
        return Verdict(
            e,
            consistent_proposal(e, stated, target.machine_label),
            reason or words,
            text,
            {"verdict": letter},
        )
