"""White-box critics: the error probability read from token probabilities (PAPER.md step 2).

- logit: 'is "LABEL" the correct label for this item? yes or no'; e = P(no) / (P(yes) + P(no))
  from the next-token distribution (llama.cpp scores both answers exactly: `choices=("yes", "no")`
  -> `choice_logprobs`; endpoints give the top alternatives of the first answer token).
  The paper asks "is the label wrong?" and reads P(yes). We ask the other way round, with the label
  inside the question, because small models misread both the negation and a label shown apart
  ("Machine label: X. Is the machine label wrong?"): with Qwen2.5-1.5B on CrowdFlower tweets that
  form ranked errors *below* correct labels (AUROC 0.30 on 300 items), the positive form with a
  separate label line was at chance (0.45 on 60), and 'is "X" the correct label?' reached 0.64 on
  the same 60. The quantity estimated is the same, P(label wrong).
- cot-logit: the critic first writes an analysis; the same yes/no question is then read right after it
  (the analysis is sent back as the start of the assistant turn, `assistant_prefix`).
- cot-ppl: the perplexity of that analysis, PPL = exp(-mean token log-probability), as an error
  signal: a critic that hesitates over an item writes less probable text. Raw log-PPL values are
  not probabilities and drift with text length and model, so they are rescaled over the dataset
  by rank: e_i = (rank_i - 0.5) / n with average ranks for ties (rank 1 = lowest log-PPL), i.e.
  the share of items the critic was more at ease with. Rank scaling is monotone (AUROC and top-B
  selection are unchanged), robust to outliers, and spreads e over (0, 1) for the selection rules;
  it is recomputed over every critiqued item each run (earlier items included), so the scale is
  always the whole dataset's. Calibrate it on reviewed items (`actlabel calibrate`) before
  reading it as a probability.

cot-logit and cot-ppl send the identical analysis request, so running one after the other pays
for the analysis once (the second is served from the response cache).

Proposed label: for yes/no strategies, when e < 0.5 the critic agrees with the machine label;
otherwise the label its analysis names (cot-logit), or a cheap second constrained question
("which label is correct?", `choices` = the labels) whose most probable label other than the
machine label is proposed. With two labels the other label is proposed without a call.
"""

from __future__ import annotations

import numpy as np

from actlabel import prompting
from actlabel.critics.base import (
    TOP_LOGPROBS,
    YES_NO,
    CriticContext,
    Strategy,
    Target,
    Verdict,
    clip,
    stated_label,
    stated_reason,
    wrong_probability,
)
from actlabel.models.base import ChatRequest, ChatResponse
from actlabel.models.retry import ParseFailure


async def propose_other(ctx: CriticContext, target: Target) -> tuple[str | None, str]:
    """(label, note): the most probable label other than the machine label, by a constrained question."""
    others = [n for n in ctx.names if n != target.machine_label]
    if len(others) == 1:
        return others[0], ""
    request = ChatRequest(
        ctx.messages(target, "critic_propose"),
        max_tokens=max(8, max(len(n) for n in ctx.names) // 3 + 6),
        choices=ctx.names,
        **ctx.lp(),
    )

    def parse(response: ChatResponse) -> dict[str, float]:
        if response.choice_logprobs:
            return prompting.normalized_probs(response.choice_logprobs, ctx.names)
        # No scores: the stated label, if it is not the machine label, is all we know.
        label = prompting.map_label(response.text, ctx.labels)
        return {n: float(n == label) for n in ctx.names}

    outcome = await ctx.ask(request, parse)
    if isinstance(outcome, ParseFailure):
        return None, "no label proposed (unparseable answer)"
    probs = outcome.value
    best = max(others, key=lambda n: probs.get(n, 0.0))
    if probs.get(best, 0.0) <= 0.0:
        return None, "no other label proposed"
    total = sum(probs.get(n, 0.0) for n in others)
    return best, f"proposes {best!r} (p={probs[best] / total:.2f} among the other labels)"


def yes_no_request(messages: tuple, prefix: str = "") -> ChatRequest:
    """The yes/no question, read from next-token probabilities (after `prefix` when given)."""
    return ChatRequest(
        messages,
        max_tokens=2,
        choices=YES_NO,
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
        assistant_prefix=prefix,
    )


def analysis_request(ctx: CriticContext, target: Target) -> ChatRequest:
    """The analysis both cot-logit and cot-ppl ask for (identical, so the cache shares it)."""
    return ChatRequest(
        ctx.messages(target, "critic_analysis"), max_tokens=ctx.reasoning_tokens, logprobs=True
    )


def _nonempty(response: ChatResponse) -> ChatResponse:
    if not response.text.strip():
        raise ValueError("empty analysis")
    return response


class LogitCritic(Strategy):
    name = "logit"
    templates = ("critic_system", "critic_logit", "critic_propose")
    needs_logprobs = True
    white_box = True

    async def judge(self, ctx: CriticContext, target: Target) -> Verdict | ParseFailure:
        outcome = await ctx.ask(yes_no_request(ctx.messages(target, "critic_logit")), wrong_probability)
        if isinstance(outcome, ParseFailure):
            return outcome
        e = outcome.value
        note = f"P(wrong)={e:.2f} from yes/no token probabilities (is the label correct?)"
        if e < 0.5:
            return Verdict(e, target.machine_label, note, outcome.response.text)
        label, proposal = await propose_other(ctx, target)
        return Verdict(e, label, clip(f"{note}; {proposal}" if proposal else note), outcome.response.text)


class CoTLogitCritic(Strategy):
    name = "cot-logit"
    templates = ("critic_system", "critic_analysis", "critic_verdict", "critic_propose")
    needs_logprobs = True
    white_box = True

    async def judge(self, ctx: CriticContext, target: Target) -> Verdict | ParseFailure:
        first = await ctx.ask(analysis_request(ctx, target), _nonempty)
        if isinstance(first, ParseFailure):
            return first
        analysis = first.value.text.strip()
        prefix = (
            analysis + "\n\n" + prompting.render("critic_verdict", machine_label=target.machine_label).strip()
        )
        second = await ctx.ask(
            yes_no_request(ctx.messages(target, "critic_analysis"), prefix), wrong_probability
        )
        if isinstance(second, ParseFailure):
            return second.after(analysis, "\n\n")
        e = second.value
        reason = stated_reason(analysis) or f"P(wrong)={e:.2f} after the analysis"
        stated = stated_label(analysis, ctx.labels)
        if e < 0.5:
            label = target.machine_label
        elif stated is not None and stated != target.machine_label:
            label = stated
        else:
            label, _note = await propose_other(ctx, target)
        return Verdict(e, label, reason, analysis + "\n\n[verdict] " + second.response.text)


class CoTPPLCritic(Strategy):
    name = "cot-ppl"
    # The same templates as cot-logit (it uses only the first two): one template hash, so the
    # identical analysis request hits the cache whichever of the two ran first.
    templates = CoTLogitCritic.templates
    needs_logprobs = True
    white_box = True
    deferred = True

    async def judge(self, ctx: CriticContext, target: Target) -> Verdict | ParseFailure:
        def parse(response: ChatResponse) -> float:
            _nonempty(response)
            lps = [t.logprob for t in (response.logprobs or ()) if np.isfinite(t.logprob)]
            if not lps:
                raise ValueError("the response carries no token probabilities")
            return -float(np.mean(lps))

        outcome = await ctx.ask(analysis_request(ctx, target), parse)
        if isinstance(outcome, ParseFailure):
            return outcome
        log_ppl = outcome.value
        text = outcome.response.text.strip()
        stated = stated_label(text, ctx.labels)
        reason = stated_reason(text)
        return Verdict(
            float("nan"),
            stated if stated is not None else target.machine_label,
            clip(f"analysis perplexity {np.exp(log_ppl):.2f}" + (f"; {reason}" if reason else "")),
            text,
            {"log_ppl": log_ppl},
        )

    def finalize(self, verdicts: list[Verdict]) -> None:
        values = np.array([v.extra["log_ppl"] for v in verdicts], dtype=float)
        for v, e in zip(verdicts, rank_scale(values), strict=True):
            v.error_prob = float(e)


def rank_scale(values: np.ndarray) -> np.ndarray:
    """e_i = (average rank_i - 0.5) / n, ranks from 1 (smallest value) to n; see the module docstring."""
    n = values.size
    if n == 0:
        return values.astype(float)
    # Means of equal log-probabilities over different lengths differ in the last bits: those are ties.
    values = np.round(values.astype(float), 9)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(n)
    sorted_vals = values[order]
    i = 0
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return (ranks - 0.5) / n
