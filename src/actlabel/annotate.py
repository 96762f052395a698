"""Stage 1: a model labels every item (the machine label m_i), with a confidence when it can.

Annotators, chosen from the task and `model`:
- an LLM (`local/...` in-process llama.cpp, `openai/...` any compatible endpoint): the prompt is
  built from the task (labels with descriptions, instructions, few-shot examples as prior chat
  turns) and the item (text, image, or both: images go to multimodal endpoints as ImageParts).
  Direct answers are constrained to the label set (`ChatRequest.choices`: a grammar on llama.cpp);
  with `cot=True` the model reasons first and ends with `Answer: <label>`, and the reasoning is
  stored (the devil's-advocate critic argues against it).
- `features/efficientnet-lite0`: the offline image annotator (image_annotator.py), picked
  automatically for image tasks when the model is the embedded default.
- `composite/efficientnet-lite0+<llm>`: image + text offline, picked automatically for image+text
  tasks with the embedded default. With an embedded LLM the image classifier is the label model's
  probe (its few-shot distribution pooled with the text LLM's, the LLM's pool prior divided out,
  the share learned as for text); with an endpoint LLM the two are pooled at a fixed weight
  (image_annotator.py).

Confidence is the probability of the chosen label normalised over the label set, read from token
probabilities: llama.cpp scores every label (`choice_logprobs`); OpenAI-compatible endpoints give
the top alternatives of the first answer token, matched to each label's first token (for CoT, the
token right after `Answer:`). Without token probabilities the confidence is None: we do not ask
for a verbalised confidence, which small and large models alike state badly.

An answer is mapped onto the labels by `prompting.map_label`; an unmappable answer is re-asked
(another seed, some temperature) and finally stored with status 'failed' and the raw text: never
dropped, never replaced by a guess. A CoT reply cut off before its `Answer:` line is finished by
one short constrained call continuing it (cheaper than asking again from scratch).

Resume: an item whose latest annotation is ok and was made with the same settings (model, cot,
prompt templates) is skipped, and every call goes through the response cache, so a re-run after a
crash or a cap pays only for what is left. `limit` annotates only the first N items left.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actlabel import prompting
from actlabel.batch import BatchOutcome, Deferred, check_scale_options, run_calls
from actlabel.engine import run_items
from actlabel.errors import UserError
from actlabel.models import DEFAULT_MODEL
from actlabel.models.base import ChatRequest, ChatResponse, Message, ModelError
from actlabel.models.retry import ParseFailure, call_with_parse
from actlabel.models.spec import IMAGE_ANNOTATOR_SPEC, ModelSpec
from actlabel.models.usage import RunCap
from actlabel.options import AnnotateOptions, stage_options
from actlabel.stages import (
    ModelStack,
    StageResult,
    default_concurrency,
    failed_item_record,
    failed_record,
    gold_accuracy,
    label_max_tokens,
    model_in_use,
    open_stage_model,
    pending_items,
    resolve_annotator,
    settings_key,
    stage_run,
    synchronous,
    task_modalities,
)
from actlabel.store import Item, Store

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np  # imported where used: an endpoint run without the label model needs none

    from actlabel.label_model import ProbeFactory
    from actlabel.task import Task

#: alternatives asked per token from endpoints (OpenAI's maximum): enough for every label's first token
TOP_LOGPROBS = 20
#: items per step of the label model's passes (texts and features in, pooled records out)
LABEL_MODEL_BATCH = 20000
_ANSWER_MARKER = re.compile(r"answer\s*[:=\-]", re.I)


# ---- the result ------------------------------------------------------------------------------


@dataclass
class AnnotateResult(StageResult):
    model: str
    mode: str
    accuracy: float | None = None
    gold_items: int = 0
    #: accuracy is then exact-set match
    multi_label: bool = False

    def __str__(self) -> str:
        extra = []
        if self.accuracy is not None:
            what = "exact-set match" if self.multi_label else "accuracy"
            extra.append(f"{what} vs gold {self.accuracy:.3f} ({self.gold_items} items)")
        return self.line(f"annotated {self.done + self.failed} items with {self.model} ({self.mode})", extra)


# ---- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelAnswer:
    label: str
    confidence: float | None
    probs: dict[str, float] | None  # over all labels, when the backend gave them
    reasoning: str | None = None
    raw: str = ""  # the model's reply (for CoT finished by a continuation: reply + continuation)
    llm_probs: dict[str, float] | None = None  # the LLM's own distribution, before the label model


@dataclass(frozen=True)
class Unfinished:
    """A CoT reply with no `Answer:` line (cut off): finished by a short continuation call."""

    text: str


def parse_direct(names: Sequence[str], labels: Sequence[Any]) -> Callable[[ChatResponse], LabelAnswer]:
    def parse(response: ChatResponse) -> LabelAnswer:
        label = prompting.map_label(response.text, labels)
        probs = None
        if response.choice_logprobs:
            probs = prompting.normalized_probs(response.choice_logprobs, names)
        return LabelAnswer(label, None if probs is None else probs[label], probs, raw=response.text)

    return parse


def parse_cot(
    names: Sequence[str], labels: Sequence[Any]
) -> Callable[[ChatResponse], LabelAnswer | Unfinished]:
    def parse(response: ChatResponse) -> LabelAnswer | Unfinished:
        found = prompting.cot_answer(response.text)
        if found is None:
            if not response.text.strip():
                raise ValueError("empty answer")
            return Unfinished(response.text)
        reasoning, answer = found
        label = prompting.map_label(answer, labels)
        probs = None
        if response.logprobs:
            probs = prompting.choice_probs_after(response.logprobs, response.text, _ANSWER_MARKER, names)
        return LabelAnswer(label, None if probs is None else probs[label], probs, reasoning, response.text)

    return parse


# ---- the label model (label_model.py) ------------------------------------------------------------


def _example_item(task: Any, text: str, index: int) -> Item:
    column = (task.text_columns or ["text"])[0]
    return Item(
        rowid=-1 - index, item_id=f"__example_{index}", data={column: text}, image_path=None, gold_label=None
    )


def label_model_wanted(setting: str, spec: str) -> bool:
    """auto: on for embedded models (small, with a strong label prior), off for endpoints."""
    if setting not in ("auto", "on", "off"):
        raise UserError(f"--label-model must be auto, on or off, not {setting!r}")
    return setting == "on" or (setting == "auto" and ModelSpec.parse(spec).can("embedded"))


@dataclass
class ZeroReviewModel:
    """What the label model knows before any review: the LLM's distribution for some few-shot
    examples with each left out of the prompt in turn, the probe's held-out scores of the same
    examples, and the probe's scores for this run's items. The label prior and the pooling
    weights are chosen once the pool is labelled (`finish_label_model`)."""

    example_llm_logp: np.ndarray | None
    example_labels: np.ndarray
    example_logq: np.ndarray | None  # the probe's held-out scores of the same examples
    probe_logq: np.ndarray | None  # (items, K): the probe's scores, row j for probe_rowids[j]
    features: str | None
    probe_rowids: np.ndarray | None = None  # ascending


def text_probe_factory(task: Task, root: Path | None) -> ProbeFactory:
    """The feature probe for a text task: the labels' names and descriptions are its anchors."""
    import numpy as np

    from actlabel import label_model as lm
    from actlabel.models.features import cached_text_features

    anchor_x = cached_text_features(lm.label_anchor_texts(task.labels), root)
    anchors = lm.Anchors(anchor_x, np.arange(len(task.labels)))
    return functools.partial(lm.Probe, anchors=anchors)


def _left_out_choice(task: Task, usable: Sequence[int]) -> list[int]:
    """Up to MAX_LOO_EXAMPLES of the usable examples, a label at a time in turn, so every label
    the examples have is among the rows that choose the pooling; as many as LOO_CHAR_BUDGET
    allows, none when that is fewer than MIN_LOO_EXAMPLES (equal say)."""
    from actlabel import label_model as lm

    prompt_chars = sum(len(ex.text) for ex in task.examples) + 1
    most = min(lm.MAX_LOO_EXAMPLES, lm.LOO_CHAR_BUDGET // prompt_chars)
    if most < lm.MIN_LOO_EXAMPLES:
        return []
    by_label: dict[str, list[int]] = {}
    for k in usable:
        by_label.setdefault(task.examples[k].label, []).append(k)
    queues = list(by_label.values())
    picked: list[int] = []
    while len(picked) < most and any(queues):
        for q in queues:
            if q and len(picked) < most:
                picked.append(q.pop(0))
    return sorted(picked)


async def _left_out_llm_scores(
    annotator: LLMAnnotator, task: Task, candidates: Sequence[int]
) -> tuple[list[int], np.ndarray | None]:
    """(examples scored, their log-probabilities): each example labelled by the LLM with itself
    left out of the prompt; an example the model gives no probabilities for is dropped."""
    import dataclasses

    import numpy as np

    from actlabel import label_model as lm

    names = list(task.label_names)
    rows, logp = [], []
    for k in candidates:
        ex = task.examples[k]
        others = dataclasses.replace(task, examples=[e for j, e in enumerate(task.examples) if j != k])
        out = await annotator.label(_example_item(task, ex.text, k), task=others)
        if not isinstance(out, ParseFailure) and out.probs is not None:
            rows.append(k)
            logp.append(lm.safe_log([out.probs[n] for n in names]))
    return rows, (np.array(logp) if logp else None)


async def prepare_label_model(
    store: Store,
    annotator: LLMAnnotator,
    todo: Sequence[int],
    *,
    progress: bool,
    image_probs: dict[int, np.ndarray] | None = None,
) -> ZeroReviewModel | None:
    """Score few-shot examples with each left out of the prompt and fit the feature probe on the
    examples (label_model.py). The probe is a MiniLM text classifier, or for the image+text
    composite the few-shot image classifier, whose distribution per item is `image_probs`
    (rowid -> K probabilities). None when the backend gives no label probabilities."""
    import numpy as np

    task = store.task
    names = list(task.label_names)
    if not annotator.logprobs or annotator.cot:
        return None
    usable = [
        k
        for k, ex in enumerate(task.examples)
        if ex.label in names and (bool(ex.image) if image_probs is not None else bool(ex.text.strip()))
    ]
    # The composite's share is not chosen on left-out examples: each left-out prompt carries every
    # other example's text and shares no cached prefix, so a dozen of them cost minutes on a CPU
    # (the demo's 40-item fashion-captions run took longer in them than in its items). It starts at
    # equal say and learns from the reviews (`annotate --refine`).
    left_out = _left_out_choice(task, [] if image_probs is not None else usable)
    if progress and left_out:
        print(
            f"annotate: label model: scoring {len(left_out)} few-shot examples, each left out of its own prompt",
            file=sys.stderr,
            flush=True,
        )
    rows, ex_logp = await _left_out_llm_scores(annotator, task, left_out)
    ex_y = np.array([names.index(task.examples[k].label) for k in rows], dtype=int)
    model = ZeroReviewModel(ex_logp, ex_y, None, None, None)
    all_y = np.array([names.index(task.examples[k].label) for k in usable], dtype=int)
    if len(set(all_y.tolist())) < 2:
        return model
    if image_probs is not None:
        _image_probe_scores(store, model, image_probs)
    else:
        try:
            _text_probe_scores(store, model, todo, usable, all_y, rows)
        except ImportError:  # the ml extra is not installed: the LLM alone
            return model
    return model


def _text_probe_scores(
    store: Store,
    model: ZeroReviewModel,
    todo: Sequence[int],
    usable: Sequence[int],
    all_y: np.ndarray,
    scored: Sequence[int],
) -> None:
    """The MiniLM probe fitted on every usable example: its scores of the items, and of each
    example the LLM scored left out (`scored`), left out of a fit on all the others."""
    import numpy as np

    from actlabel import label_model as lm
    from actlabel.models.features import TEXT_MODEL, cached_text_features

    task = store.task
    k_labels = len(task.label_names)
    ex_x = cached_text_features([task.examples[k].text for k in usable], store.root)
    probe_factory = text_probe_factory(task, store.root)
    probe = probe_factory(k_labels).fit(ex_x, all_y)
    # Batch by batch: the items' texts and features are what grows with the pool; the scores
    # kept are K floats an item.
    rowids, scores = [], []
    for start in range(0, len(todo), LABEL_MODEL_BATCH):
        items = list(store.iter_items(todo[start : start + LABEL_MODEL_BATCH]))
        texts = ["\n".join(v for _c, v in prompting.item_text_fields(task, it)) for it in items]
        rowids.append(np.array([it.rowid for it in items], dtype=np.int64))
        scores.append(lm.safe_log(probe.predict_proba(cached_text_features(texts, store.root))))
    model.probe_rowids = np.concatenate(rowids) if rowids else np.array([], dtype=np.int64)
    model.probe_logq = np.concatenate(scores) if scores else np.empty((0, k_labels))
    if model.example_llm_logp is not None:
        at = [usable.index(k) for k in scored]
        model.example_logq = lm.loo_probe_logq(ex_x, all_y, k_labels, probe=probe_factory, rows=at)
    model.features = TEXT_MODEL


def _image_probe_scores(store: Store, model: ZeroReviewModel, image_probs: dict[int, np.ndarray]) -> None:
    """The image classifier's scores of the items as the probe's; no left-out scores of the
    examples (prepare_label_model says why), so the pooling is equal say."""
    import numpy as np

    from actlabel import label_model as lm
    from actlabel.models.features import IMAGE_MODEL

    ids = np.array(sorted(image_probs), dtype=np.int64)
    model.probe_rowids = ids
    model.probe_logq = (
        lm.safe_log(np.array([image_probs[int(r)] for r in ids]))
        if len(ids)
        else np.empty((0, len(store.task.label_names)))
    )
    model.features = IMAGE_MODEL


def finish_label_model(
    store: Store, zero: ZeroReviewModel, run_id: int, settings: str, model_name: str
) -> dict[str, Any] | None:
    """After the LLM pass: divide out the model's label prior (its mean distribution over the
    pool), choose the pooling weights on the examples, and write the pooled labels of this run's
    items as new annotation records (the latest wins) in a run of their own."""
    import numpy as np

    from actlabel import label_model as lm

    names = list(store.task.label_names)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, float]]]]:
        """(rowids, the LLM's log-probabilities, its distributions) of this run's ok records with
        probabilities, LABEL_MODEL_BATCH items at a time: two passes over the store in place of
        every item's parsed distribution at once."""
        for rows in store.iter_run_annotations(
            run_id, ("probs",), "status = 'ok' AND probs IS NOT NULL", batch=LABEL_MODEL_BATCH
        ):
            raw = [json.loads(p) for _r, p in rows]
            ids = np.array([r for r, _p in rows], dtype=np.int64)
            yield ids, lm.safe_log(np.array([[d[n] for n in names] for d in raw])), raw

    # Pass 1: the model's mean distribution over the pool (pool_prior, summed batch by batch).
    total, n = np.zeros(len(names)), 0
    for ids, llm, _raw in batches():
        total += np.exp(llm).sum(axis=0)  # safe_log clipped them as pool_prior would
        n += len(ids)
    if n == 0:
        return None
    log_prior = np.log(total / n / (total / n).sum())
    if zero.example_llm_logp is not None and zero.example_logq is not None:
        pooling = lm.choose_pooling(
            zero.example_labels, zero.example_llm_logp, zero.example_logq, log_prior,
            source="few-shot examples (left out in turn)",
        )  # fmt: skip
    elif zero.probe_logq is not None:
        w = lm.DEFAULT_PROBE_SHARE
        pooling = lm.Pooling(1 - w, w, log_prior, "no left-out examples to choose weights: equal say")
    else:
        pooling = lm.Pooling(1.0, 0.0, log_prior, "no examples to choose weights: the LLM alone")
    params = {
        "a": pooling.a,
        "b": pooling.b,
        "log_prior": log_prior.tolist(),
        "example_llm_logp": None if zero.example_llm_logp is None else zero.example_llm_logp.tolist(),
        "features": zero.features,
        "how": pooling.describe(),
    }
    pass_id = store.start_run(
        "annotate", {"model": model_name, "settings": settings, "label_model": params, "pass_of": run_id}
    )
    # Pass 2: pooled labels written batch by batch, in one transaction: the pass lands whole or
    # not at all, as when it was one write. The pass's records belong to pass_id, so writing them
    # does not move the pages of run_id's records being read.
    with store.transaction():
        for ids, llm, raw in batches():
            pooled = pooling.combine(llm, None)  # an item the probe did not score: the LLM alone
            scored, at = _probe_rows(zero, ids)
            if scored.any():
                pooled[scored] = pooling.combine(llm[scored], zero.probe_logq[at])
            store.add_annotations(
                distribution_record(int(r), pass_id, model_name, names, p, "label_model", _probs_json(d))
                for r, p, d in zip(ids, pooled, raw, strict=True)
            )
    store.finish_run(pass_id, "done", pooling.describe())
    return params


def _probe_rows(zero: ZeroReviewModel, rowids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which of `rowids` the probe scored, their rows of zero.probe_logq)."""
    import numpy as np

    known = zero.probe_rowids
    if known is None or known.size == 0 or zero.probe_logq is None:
        return np.zeros(len(rowids), dtype=bool), np.array([], dtype=int)
    at = np.minimum(np.searchsorted(known, rowids), known.size - 1)
    scored = known[at] == rowids
    return scored, at[scored]


# ---- the annotators ------------------------------------------------------------------------------


class LLMAnnotator:
    """Labels items with a chat model (see the module docstring)."""

    def __init__(
        self, store: Store, stack: ModelStack, *, cot: bool, max_parse_retries: int, reasoning_tokens: int
    ):
        self.store = store
        self.task = store.task
        self.stack = stack
        self.cot = cot
        self.max_parse_retries = max_parse_retries
        self.reasoning_tokens = reasoning_tokens
        self.names = tuple(self.task.label_names)
        self.with_images = stack.raw.supports_images
        self.logprobs = stack.raw.supports_logprobs
        self._direct = parse_direct(self.names, self.task.labels)
        self._cot = parse_cot(self.names, self.task.labels)
        # (cot, with_images) -> the prompt's shared turns for self.task, rendered once per run
        self._prefixes: dict[tuple[bool, bool], tuple[Message, ...]] = {}

    def _lp(self) -> dict[str, Any]:
        return {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.logprobs else {}

    def messages(self, item: Item, task: Any = None) -> tuple[Message, ...]:
        if task is not None and task is not self.task:  # the label model's leave-one-out prompts
            return prompting.annotation_messages(
                task, item, cot=self.cot, root=self.store.root, with_images=self.with_images
            )
        prefix = self._prefixes.get((self.cot, self.with_images))
        if prefix is None:
            prefix = prompting.annotation_prefix(
                self.task, cot=self.cot, root=self.store.root, with_images=self.with_images
            )
            self._prefixes[(self.cot, self.with_images)] = prefix
        turn = prompting.annotation_item_turn(self.task, item, cot=self.cot, with_images=self.with_images)
        return (*prefix, turn)

    async def label(self, item: Item, task: Any = None) -> LabelAnswer | ParseFailure:
        messages = self.messages(item, task)
        backend = self.stack.backend
        if not self.cot:
            request = ChatRequest(
                messages, max_tokens=label_max_tokens(self.names), choices=self.names, **self._lp()
            )
            direct = await call_with_parse(backend, request, self._direct, self.max_parse_retries)
            return direct if isinstance(direct, ParseFailure) else direct.value
        request = ChatRequest(messages, max_tokens=self.reasoning_tokens, **self._lp())
        outcome = await call_with_parse(backend, request, self._cot, self.max_parse_retries)
        if isinstance(outcome, ParseFailure) or not isinstance(outcome.value, Unfinished):
            return outcome if isinstance(outcome, ParseFailure) else outcome.value
        # Cut off mid-reasoning: let the model finish with the label, constrained to the label set.
        text = outcome.value.text.rstrip()
        finish = ChatRequest(
            messages,
            max_tokens=label_max_tokens(self.names),
            choices=self.names,
            assistant_prefix=text + "\nAnswer:",
            **self._lp(),
        )
        done = await call_with_parse(backend, finish, self._direct, self.max_parse_retries)
        if isinstance(done, ParseFailure):
            return done.after(text, "\nAnswer:")
        return LabelAnswer(
            done.value.label,
            done.value.confidence,
            done.value.probs,
            text,
            text + "\nAnswer:" + done.value.raw,
        )


def distribution_record(
    rowid: int, run_id: int, model: str, names: list[str], p: np.ndarray, kind: str, probs: str | None
) -> dict[str, Any]:
    """An ok annotation whose label is the argmax of a recomputed distribution `p` (the label
    model's pass, refinement), kept in `raw` under `kind`; `probs` is the annotator's own
    distribution, carried over unchanged."""
    best = int(p.argmax())
    return {
        "item_rowid": rowid,
        "run_id": run_id,
        "model": model,
        "label": names[best],
        "confidence": float(p[best]),
        "raw": json.dumps({kind: {n: round(float(v), 6) for n, v in zip(names, p, strict=True)}}),
        "probs": probs,
        "status": "ok",
    }


def _probs_json(probs: dict[str, float] | None) -> str | None:
    return None if probs is None else json.dumps({k: round(float(v), 6) for k, v in probs.items()})


def _ok_record(item: Item, run_id: int, model: str, answer: LabelAnswer) -> dict[str, Any]:
    return {
        "item_rowid": item.rowid,
        "run_id": run_id,
        "model": model,
        "label": answer.label,
        "confidence": answer.confidence,
        "reasoning": answer.reasoning,
        "raw": answer.raw,
        "status": "ok",
        # the annotator's own distribution (before the label model), from which refinement starts
        "probs": _probs_json(answer.llm_probs if answer.llm_probs is not None else answer.probs),
    }


# ---- the stage ---------------------------------------------------------------------------------


#: bump when the label model's method changes, so `annotate` relabels instead of skipping
LABEL_MODEL_VERSION = 3


async def annotate_async(
    store: Store, options: AnnotateOptions | None = None, /, **kwargs: Any
) -> AnnotateResult | BatchOutcome[AnnotateResult]:
    """Label every item not yet labelled with these settings. See the module docstring.

    options: an AnnotateOptions (options.py documents each one), or the same as keyword arguments.
    With batch=True the calls go through the provider's batch API (batch.py) and a BatchOutcome
    comes back; engine="ray" sends them to `workers` Ray actors (distributed.py).
    """
    opts: AnnotateOptions = stage_options(AnnotateOptions, options, kwargs)
    backend = opts.backend
    if store.count_items() == 0:
        raise UserError(f"{store.root}: no items to annotate; import some with `actlabel import`")
    cap = opts.cap()
    if store.task.multi_label:
        return await _annotate_sets(store, opts, cap)
    spec = (
        backend.spec if backend is not None and opts.model is None else resolve_annotator(store, opts.model)
    )
    composite = ModelSpec.parse(spec).is_composite
    llm_spec = ModelSpec.parse(spec).llm.text if composite else spec
    check_scale_options(llm_spec, batch=opts.batch, engine=opts.engine)
    if spec == IMAGE_ANNOTATOR_SPEC:
        return _annotate_images(store, limit=opts.limit, progress=opts.progress)
    stack = open_stage_model(store, llm_spec, opts, prompting.annotate_templates(store.task))
    async with model_in_use(stack, owned=backend is None):
        run = functools.partial(
            _annotate_llm,
            store,
            stack,
            # composite: the image classifier is the label model's probe; without the label model
            # (an endpoint LLM) the two experts are pooled per item at a fixed weight
            label_model=label_model_wanted(opts.label_model, stack.spec) and not opts.batch,
            composite=composite,
            cot=opts.cot,
            concurrency=opts.concurrency or default_concurrency(stack.spec),
            cap=cap,
            limit=opts.limit,
            progress=opts.progress,
            max_parse_retries=opts.max_parse_retries,
            reasoning_tokens=opts.reasoning_tokens,
        )
        return await run_calls(store, stack, "annotate", run, opts)


annotate = synchronous(annotate_async)


async def _annotate_sets(store: Store, opts: AnnotateOptions, cap: RunCap | None) -> AnnotateResult:
    """A multi-label task: every label scored (multilabel_annotate.py)."""
    from actlabel import multilabel_annotate as mla

    backend, limit, progress = opts.backend, opts.limit, opts.progress
    if opts.cot or opts.batch or opts.engine != "async":
        raise UserError(
            "multi-label annotation asks yes/no per label: --cot, --batch and --engine do not apply"
        )
    spec = (
        backend.spec if backend is not None and opts.model is None else (opts.model or DEFAULT_MODEL).strip()
    )
    _has_text, has_images = task_modalities(store)
    if spec == mla.FEATURE_ANNOTATOR_SPEC:
        result = AnnotateResult(model=spec, mode="few-shot features", multi_label=True)
        return mla.annotate_sets_features(store, limit=limit, progress=progress, result=result)
    if ModelSpec.parse(spec).is_features or ModelSpec.parse(spec).is_composite:
        raise UserError(
            f"{spec} does not label multi-label tasks: use {mla.FEATURE_ANNOTATOR_SPEC} or an LLM"
        )
    stack = open_stage_model(store, spec, opts, prompting.MULTILABEL_TEMPLATES)
    try:
        if has_images and not stack.raw.supports_images:
            raise UserError(f"{stack.spec} cannot see images: use an openai/ vision model")
        result = AnnotateResult(model=stack.spec, mode="yes/no per label", multi_label=True)
        return await mla.annotate_sets_llm(
            store, stack, concurrency=opts.concurrency or default_concurrency(stack.spec), cap=cap,
            limit=limit, progress=progress, max_parse_retries=opts.max_parse_retries, result=result,
            rate_matching=label_model_wanted(opts.label_model, stack.spec),
        )  # fmt: skip
    finally:
        if backend is None:
            await stack.aclose()


async def _annotate_llm(
    store: Store,
    stack: ModelStack,
    *,
    label_model: bool = False,
    composite: bool,
    cot: bool,
    concurrency: int,
    cap: RunCap | None,
    limit: int | None,
    progress: bool,
    max_parse_retries: int,
    reasoning_tokens: int,
) -> AnnotateResult:
    task = store.task
    _has_text, has_images = task_modalities(store)
    if has_images and not composite and not stack.raw.supports_images:
        raise UserError(
            f"{stack.spec} cannot see images: use an openai/ vision model, or the embedded default "
            f"(omit --model) for the offline image annotator"
        )
    templates = prompting.templates_hash(prompting.annotate_templates(task))
    model_name = ModelSpec.composite(IMAGE_ANNOTATOR_SPEC, stack.spec).text if composite else stack.spec
    settings = settings_key(
        model_name, cot, templates, label_model=LABEL_MODEL_VERSION if label_model else None
    )
    todo, skipped = pending_items(store, settings, limit)
    left_after_limit = max(0, len(todo) - limit) if limit is not None else 0
    if limit is not None:
        todo = todo[:limit]
    result = AnnotateResult(model=model_name, mode="chain-of-thought" if cot else "direct", skipped=skipped)
    if not todo:
        result.accuracy, result.gold_items = gold_accuracy(store)
        return result
    annotator = LLMAnnotator(
        store, stack, cot=cot, max_parse_retries=max_parse_retries, reasoning_tokens=reasoning_tokens
    )
    image_probs: dict[int, np.ndarray] = {}
    image_errors: dict[int, str] = {}  # an unreadable image fails its item alone
    if composite:
        from actlabel.image_annotator import fit_image_classifier

        clf, _n = fit_image_classifier(task, store.root)
        # A batch of items and their image features at a time (1,280 floats an image); what is
        # kept is K probabilities an item.
        for start in range(0, len(todo), LABEL_MODEL_BATCH):
            batch = [it for it in store.iter_items(todo[start : start + LABEL_MODEL_BATCH]) if it.image_path]
            ok, bad = _image_probs(clf, batch, store.root)
            image_probs.update(ok)
            image_errors.update(bad)
        annotator.with_images = False  # the text LLM reads the text; the image goes to the image expert
    zero = None
    if label_model:
        zero = await prepare_label_model(
            store, annotator, todo, progress=progress, image_probs=image_probs if composite else None
        )
    pool_per_item = composite and zero is None
    params = {"model": model_name, "cot": cot, "templates": templates, "settings": settings, "limit": limit}
    with stage_run(store, "annotate", params, usage=stack.usage) as run:
        run_id = run.id
        names = list(task.label_names)

        async def work(item: Item) -> dict[str, Any]:
            if item.rowid in image_errors:
                return failed_item_record(item, run_id, model_name, image_errors[item.rowid])
            outcome = await annotator.label(item)
            if isinstance(outcome, ParseFailure):
                return failed_record(item, run_id, model_name, outcome)
            answer = outcome
            if pool_per_item and item.rowid in image_probs:
                answer = _pool(answer, image_probs[item.rowid], names)
            return _ok_record(item, run_id, model_name, answer)

        def on_error(item: Item, exc: ModelError) -> dict[str, Any] | None:
            if isinstance(exc, Deferred):
                return None  # its request waits in a provider batch: the item stays pending
            return failed_record(item, run_id, model_name, exc)

        engine = await run_items(
            store.iter_items(todo),
            work,
            concurrency=concurrency,
            write_batch=store.add_annotations,
            usage=stack.usage,
            cap=cap,
            progress=progress,
            label="annotate",
            on_error=on_error,
        )
        run.ended_by(engine)
    counts = store.run_status_counts("annotations", run_id)
    failed_rows, ok_rows = counts.get("failed", 0), counts.get("ok", 0)
    if zero is not None:
        finish_label_model(store, zero, run_id, settings, model_name)
    result.done, result.failed = ok_rows, failed_rows
    result.left = len(todo) - ok_rows - failed_rows + left_after_limit
    result.take_usage(stack.usage, engine, run_id)
    result.errors = [f"item {k.item_id}: {e}" for k, e in engine.errors]
    result.accuracy, result.gold_items = gold_accuracy(store)
    return result


def _pool(answer: LabelAnswer, p_image: np.ndarray, names: list[str]) -> LabelAnswer:
    import numpy as np

    from actlabel.image_annotator import pool_log_linear

    if answer.probs is not None:
        p_text = np.array([answer.probs[n] for n in names])
    else:
        # No token probabilities: the text expert's answer counts as 80% sure, the rest shared.
        p_text = np.full(len(names), 0.2 / max(1, len(names) - 1))
        p_text[names.index(answer.label)] = 0.8
    pooled = pool_log_linear(p_image, p_text)
    best = int(pooled.argmax())
    probs = dict(zip(names, pooled.tolist(), strict=True))
    raw = json.dumps({"text_answer": answer.raw, "pooled": {n: round(v, 6) for n, v in probs.items()}})
    return LabelAnswer(names[best], float(pooled[best]), probs, answer.reasoning, raw)


def _image_probs(clf: Any, items: list[Item], root: Any) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """(rowid -> label probabilities, rowid -> why its image is unreadable) for items with images."""
    from actlabel.models.features import cached_image_features

    if not items:
        return {}, {}
    failures: dict[str, str] = {}
    feats = cached_image_features([it.image_path for it in items], root, failures=failures)
    good = [j for j, it in enumerate(items) if it.image_path not in failures]
    probs = clf.predict_proba(feats[good]) if good else []
    ok = {items[j].rowid: p for j, p in zip(good, probs, strict=True)}
    bad = {it.rowid: failures[it.image_path] for it in items if it.image_path in failures}
    return ok, bad


def _annotate_images(store: Store, *, limit: int | None, progress: bool) -> AnnotateResult:
    """The offline image annotator: few-shot logistic regression on EfficientNet-Lite0 features."""
    from actlabel.image_annotator import fit_image_classifier

    start = time.monotonic()
    task = store.task
    clf, n_examples = fit_image_classifier(task, store.root)
    model_name = f"{IMAGE_ANNOTATOR_SPEC}+logreg({n_examples} examples)"
    settings = settings_key(model_name, False, "")
    todo, skipped = pending_items(store, settings, limit)
    left_after_limit = max(0, len(todo) - limit) if limit is not None else 0
    if limit is not None:
        todo = todo[:limit]
    result = AnnotateResult(
        model=model_name, mode="few-shot image features", skipped=skipped, left=left_after_limit
    )
    if not todo:
        result.accuracy, result.gold_items = gold_accuracy(store)
        return result
    names = task.label_names
    done = failed = 0
    chunk = 256
    with stage_run(
        store, "annotate", {"model": model_name, "cot": False, "settings": settings, "limit": limit}
    ) as run:
        run_id = run.id
        for start_i in range(0, len(todo), chunk):
            items = list(store.iter_items(todo[start_i : start_i + chunk]))
            with_image = [it for it in items if it.image_path]
            records = [
                {
                    "item_rowid": it.rowid,
                    "run_id": run_id,
                    "model": model_name,
                    "label": None,
                    "status": "failed",
                    "error": "the item has no image",
                }
                for it in items
                if not it.image_path
            ]
            probs, errors = _image_probs(clf, with_image, store.root)
            records += [
                failed_item_record(it, run_id, model_name, errors[it.rowid])
                for it in with_image
                if it.rowid in errors
            ]
            if probs:
                for it in (it for it in with_image if it.rowid in probs):
                    p = probs[it.rowid]
                    best = int(p.argmax())
                    records.append(
                        {
                            "item_rowid": it.rowid,
                            "run_id": run_id,
                            "model": model_name,
                            "label": names[best],
                            "confidence": float(p[best]),
                            "raw": json.dumps({n: round(float(v), 6) for n, v in zip(names, p, strict=True)}),
                            "probs": json.dumps(
                                {n: round(float(v), 6) for n, v in zip(names, p, strict=True)}
                            ),
                            "status": "ok",
                        }
                    )
            store.add_annotations(records)
            done += len(probs)
            failed += len(items) - len(probs)
            if progress and len(todo) > chunk:
                print(f"annotate: {start_i + len(items)}/{len(todo)}", file=sys.stderr, flush=True)
    result.done, result.failed, result.run_id = done, failed, run_id
    result.elapsed = time.monotonic() - start
    result.accuracy, result.gold_items = gold_accuracy(store)
    return result
