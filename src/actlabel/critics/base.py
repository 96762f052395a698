"""What every critic strategy shares: the item it judges, the verdict it returns, answer parsing."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from actlabel import prompting
from actlabel.models.base import ChatRequest, ChatResponse
from actlabel.models.retry import ParseFailure, call_with_parse
from actlabel.store import Item, Store
from actlabel.task import Label, Task

#: alternatives per token asked from endpoints (OpenAI's maximum)
TOP_LOGPROBS = 20
YES_NO = ("yes", "no")
RATIONALE_CHARS = 200


@dataclass(frozen=True)
class Target:
    """An item with its current machine label: what a critic judges."""

    item: Item
    annotation_id: int
    machine_label: str
    confidence: float | None
    reasoning: str | None
    annotator: str


@dataclass
class Verdict:
    error_prob: float  # NaN until a dataset-level rescaling fills it (cot-ppl)
    proposed_label: str | None
    rationale: str
    text: str  # the model's output(s), kept in the record's raw JSON
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CriticContext:
    """What a strategy needs to ask its model: the task, the metered+cached backend, limits."""

    store: Store
    task: Task
    backend: Any  # MeteredBackend(CachedBackend(raw))
    supports_logprobs: bool
    with_images: bool
    max_parse_retries: int = 2
    #: the budget of one reasoning step (a reasoning request's max_tokens)
    reasoning_tokens: int = 256

    @property
    def labels(self) -> list[Label]:
        return self.task.labels

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.task.label_names)

    def messages(self, target: Target, body: str, *, reasoning: str = "") -> tuple:
        return prompting.critic_messages(
            self.task,
            target.item,
            body,
            target.machine_label,
            reasoning=reasoning,
            with_images=self.with_images,
        )

    def lp(self) -> dict[str, Any]:
        return {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.supports_logprobs else {}

    async def ask(self, request: ChatRequest, parse: Any) -> Any:
        return await call_with_parse(self.backend, request, parse, self.max_parse_retries)


class Strategy:
    """One critic strategy. `judge` returns a Verdict or the ParseFailure of its last call."""

    name: ClassVar[str]
    templates: ClassVar[tuple[str, ...]] = ("critic_system",)
    needs_logprobs: ClassVar[bool] = False
    needs_reasoning: ClassVar[bool] = False
    #: True when error_prob is only known once the whole dataset is judged (records written at the end)
    deferred: ClassVar[bool] = False
    #: white-box: reads token probabilities (paper: validate per dataset)
    white_box: ClassVar[bool] = False

    async def judge(self, ctx: CriticContext, target: Target) -> Verdict | ParseFailure:
        raise NotImplementedError

    def finalize(self, verdicts: list[Verdict]) -> None:
        """Dataset-level step over every verdict of the run (and earlier ones): cot-ppl rescales here."""


# ---- parsing verbalized answers --------------------------------------------------------------

# "Probability wrong: 0.3", also "the probability that the label is wrong is 30%"; never "1 in 3".
_PROB_LINE = re.compile(
    r"probab\w*[^\n:=]{0,60}?(?:[:=]|\bis\b|\babout\b|\baround\b)\s*\**\s*(\d+(?:\.\d+)?|\.\d+)(?!\d)\s*(%?)"
    r"(?!\s*(?:in|out of|/)\b)",
    re.I,
)
_LABEL_LINE = re.compile(r"correct\s+label\s*\**\s*[:=]\s*\**\s*(.+)", re.I)
_REASON_LINE = re.compile(r"reason\w*\s*\**\s*[:=]\s*\**\s*(.+)", re.I)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")


def parse_probability(text: str) -> float:
    """The number on the last 'Probability ...: x' line: 0..1, or a percentage ('70%', or a whole
    number above 1 such as '70'; '1.7' is neither and is refused)."""
    matches = list(_PROB_LINE.finditer(text))
    if not matches:
        raise ValueError("no 'Probability wrong:' line in the answer")
    number, percent = matches[-1].group(1), matches[-1].group(2)
    value = float(number)
    if percent or (1.0 < value <= 100.0 and "." not in number):
        value /= 100.0
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"probability {number}{percent} is not between 0 and 1")
    return value


def stated_label(text: str, labels: Sequence[Label]) -> str | None:
    """The label on the last 'Correct label:' line, when it names one."""
    matches = list(_LABEL_LINE.finditer(text))
    if not matches:
        return None
    try:
        return prompting.map_label(matches[-1].group(1), labels)
    except ValueError:
        return None


def stated_reason(text: str) -> str:
    """The 'Reason:' line, else the last sentence of the analysis before the final lines."""
    matches = list(_REASON_LINE.finditer(text))
    if matches:
        return clip(matches[-1].group(1))
    body = _LABEL_LINE.split(text)[0] if _LABEL_LINE.search(text) else text
    body = _PROB_LINE.split(body)[0] if _PROB_LINE.search(body) else body
    sentences = [s.strip() for s in _SENTENCE.findall(body) if len(s.strip()) > 3]
    return clip(sentences[-1]) if sentences else ""


def clip(text: str, limit: int = RATIONALE_CHARS) -> str:
    text = " ".join(text.replace("*", "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def consistent_proposal(error_prob: float, stated: str | None, machine: str) -> str | None:
    """The label the critic believes: what it stated; without a statement, the machine label when
    the critic thinks it is right, else unknown (None) rather than a guess."""
    if stated is not None:
        return stated
    return machine if error_prob < 0.5 else None


def wrong_probability(response: ChatResponse) -> float:
    """P(no) / (P(yes) + P(no)) from the choice log-probabilities of an answer to "is the machine
    label correct?" (see critics/whitebox.py for why the question is asked that way round)."""
    if not response.choice_logprobs:
        raise ValueError("the response carries no token probabilities for yes/no")
    return prompting.normalized_probs(response.choice_logprobs, YES_NO)["no"]


# ---- what the store holds for critics --------------------------------------------------------

#: strategies derived from other critiques: never members of an ensemble or features of another
DERIVED_SUFFIX = "+calibrated"
DERIVED_STRATEGIES = ("ensemble",)


def load_targets(store: Store, rowids: Sequence[int] | None = None) -> list[Target]:
    """Targets (items with their current ok machine label), in rowid order."""
    ann = store.current_annotations()
    wanted = list(ann) if rowids is None else [r for r in rowids if r in ann]
    targets = []
    for item in store.iter_items(wanted):
        a = ann[item.rowid]
        targets.append(Target(item, a.id, a.label, a.confidence, a.reasoning, a.model))
    return targets


def critic_scores(
    store: Store, annotation_ids: dict[int, int] | None = None
) -> dict[tuple[str, str], dict[int, tuple[float, str | None]]]:
    """(strategy, model) -> item rowid -> (error_prob, proposed label) of its latest ok critique.

    With `annotation_ids` (rowid -> current annotation id), critiques of an older machine label of
    the item are left out: their error probability is about a label that is no longer there.
    """
    out: dict[tuple[str, str], dict[int, tuple[float, str | None]]] = {}
    for (strategy, model), latest in store.latest_critiques_per_critic(
        ("error_prob", "proposed_label", "raw")
    ).items():
        for rowid, (e, proposed, raw) in latest.items():
            if annotation_ids is not None:
                if rowid not in annotation_ids or raw_annotation_id(raw) not in (None, annotation_ids[rowid]):
                    continue
            out.setdefault((strategy, model), {})[rowid] = (float(e), proposed)
    return out


def raw_annotation_id(raw: str | None) -> int | None:
    """The annotation id a critique record was made for (kept in its raw JSON)."""
    if not raw:
        return None
    try:
        value = json.loads(raw).get("annotation_id")
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def is_derived(strategy: str) -> bool:
    return strategy in DERIVED_STRATEGIES or strategy.endswith(DERIVED_SUFFIX)
