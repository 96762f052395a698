"""Stage 2: a critic estimates, for every machine label, the probability that it is wrong.

Strategies (`STRATEGIES`, PAPER.md step 2):
- black-box, any chat model (critics/blackbox.py): `naive`, `cot` (default), `mc`, `devil`;
- white-box, token probabilities (critics/whitebox.py): `logit`, `cot-logit`, `cot-ppl`;
- beyond the paper: `consistency` (zero reviews, no model calls: how well each machine label agrees
  with a label model cross-fitted on the other items' machine labels, its nearest neighbours and the
  annotator's confidence, critics/consistency.py), `learned` (one stacked error model over every
  signal, trained on reviewed items; below its minimum it writes the consistency scores,
  critics/learned.py), `ensemble` (several critics combined, critics/ensemble.py;
  `ensemble:cot,logit` picks members) and `confidence` (1 - the annotator's own probability of its
  label, streamed: the critic that scales to millions of items, critics/confidence.py).
Default (`strategy=None`): `consistency` when the annotator is an embedded model (local/..., the
image-feature annotator or the composite: a small local model is a weak critic of itself, and the
data-driven critic is free), else `cot`.
`calibrate()` maps a critic's error_prob onto observed error rates on reviewed items.

Every strategy writes, per item, error_prob in [0, 1], a proposed_label (the label the critic
believes; it may equal the machine label, and is None only when the critic named no label while
doubting the machine one) and a one-line rationale for reviewers. The record's raw JSON keeps the
annotation it judged (`annotation_id`), the hash of the prompt templates used, the model's text
and strategy details.

Critic model: `model` if given, else $ACTLABEL_CRITIC_MODEL, else the annotator's model
(self-criticism). The result's first lines say which (self/cross) and give advice where a choice
goes against the paper's findings (naive instead of cot, self-criticism while a second model is
configured, white-box strategies on large API models).

Resume: an item whose latest critique by this strategy and model is ok, was made on its current
machine label and with the current prompt templates is skipped; calls go through the response
cache (keyed on the rendered prompt, the model and the strategy's template hash). `learned`, `ensemble` and
calibration recompute every item on each run (no model calls; they improve as reviews arrive).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actlabel import prompting
from actlabel.batch import BatchOutcome, Deferred, check_scale_options, run_calls
from actlabel.critics.base import (
    CriticContext,
    Strategy,
    Target,
    Verdict,
    is_derived,
    load_targets,
    raw_annotation_id,
)
from actlabel.critics.registry import CRITICS, LLM_CRITICS, MULTI_LABEL_CRITICS, OFFLINE_CRITICS, SINGLE_LABEL
from actlabel.engine import run_items
from actlabel.errors import UserError
from actlabel.models import DEFAULT_MODEL
from actlabel.models.base import ModelError
from actlabel.models.retry import ParseFailure
from actlabel.models.spec import ModelSpec
from actlabel.options import CritiqueOptions, stage_options
from actlabel.stages import (
    ModelStack,
    StageResult,
    default_concurrency,
    model_in_use,
    one_line,
    open_stage_model,
    stage_run,
    synchronous,
)
from actlabel.store import Store

LLM_STRATEGIES: dict[str, type[Strategy]] = {name: CRITICS[name].load() for name in LLM_CRITICS}
#: critics that call no chat model (rescored in full on every run)
OFFLINE_STRATEGIES: tuple[str, ...] = OFFLINE_CRITICS
#: the critic of multi-label tasks (critics/per_label.py; no model calls). Kept apart from
#: STRATEGIES, which all judge one label per item and can be ensemble members.
(MULTI_LABEL_STRATEGY,) = MULTI_LABEL_CRITICS
STRATEGIES: tuple[str, ...] = SINGLE_LABEL
#: the default for annotators that are not embedded models (see default_strategy)
DEFAULT_STRATEGY = "cot"
#: the default when the annotator is an embedded model
EMBEDDED_DEFAULT_STRATEGY = "consistency"
CRITIC_MODEL_ENV = "ACTLABEL_CRITIC_MODEL"


@dataclass
class CritiqueResult(StageResult):
    strategy: str
    model: str
    auroc: float | None = None
    gold_errors: int = 0
    gold_items: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        extra = []
        if self.auroc is not None:
            extra.append(
                f"error-detection AUROC vs gold {self.auroc:.3f} ({self.gold_errors} errors in {self.gold_items})"
            )
        return self.line(
            f"critiqued {self.done + self.failed} items with {self.strategy} ({self.model})", extra
        )

    def __str__(self) -> str:
        return "\n".join([*self.notes, self.summary()])


# ---- choosing strategy and model ---------------------------------------------------------------


def parse_strategy(strategy: str) -> tuple[str, list[str] | None]:
    """'ensemble:cot,logit@openai/x' -> ('ensemble', ['cot', 'logit@openai/x'])."""
    name, _, rest = (strategy or DEFAULT_STRATEGY).strip().partition(":")
    if name not in STRATEGIES:
        raise UserError(f"unknown critic strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    members = [m.strip() for m in rest.split(",") if m.strip()] if rest else None
    if members is not None and name != "ensemble":
        raise UserError(f"only the ensemble strategy takes members (got {strategy!r})")
    if members:
        bad = [m for m in members if m.partition("@")[0] not in STRATEGIES or m.startswith("ensemble")]
        if bad:
            raise UserError(
                f"unknown ensemble member(s) {', '.join(bad)}: use strategy names, optionally @MODEL"
            )
    return name, members


def default_strategy(store: Store) -> str:
    """`consistency` when the current machine labels come from an embedded model, else `cot`;
    `per-label` for multi-label tasks."""
    if store.task.multi_label:
        return MULTI_LABEL_STRATEGY
    counts = annotator_models(store)
    if not counts:
        return DEFAULT_STRATEGY
    annotator = counts.most_common(1)[0][0]
    embedded = ModelSpec.parse(annotator).offline
    return EMBEDDED_DEFAULT_STRATEGY if embedded else DEFAULT_STRATEGY


def annotator_models(store: Store) -> Counter[str]:
    return Counter(a.model for a in store.current_annotations().values())


def _llm_of(annotator: str) -> str | None:
    """The chat model inside an annotator spec (None for the pure image-feature annotator)."""
    llm = ModelSpec.parse(annotator).llm
    return None if llm is None else llm.text


def resolve_critic_model(store: Store, model: str | None) -> tuple[str, str]:
    """(critic spec to load, where it came from: 'given' | 'env' | 'annotator' | 'default')."""
    if model:
        return model.strip(), "given"
    env = os.environ.get(CRITIC_MODEL_ENV, "").strip()
    if env:
        return env, "env"
    counts = annotator_models(store)
    if counts:
        llm = _llm_of(counts.most_common(1)[0][0])
        if llm is not None:
            # The stored spec of an endpoint model carries its URL ('openai/x@http://...'): the
            # name before '@' loads it again (with --base-url or $OPENAI_BASE_URL).
            return ModelSpec.parse(llm).bare, "annotator"
    return DEFAULT_MODEL, "default"


def _same_model(a: str, b: str) -> bool:
    """Same model name (an endpoint spec's URL is left out: one model served twice is still one model)."""
    return ModelSpec.parse(a).bare == ModelSpec.parse(b).bare


def criticism_notes(store: Store, strategy: str, critic_spec: str, source: str) -> list[str]:
    """The self/cross line, and advice where a choice contradicts the paper's insights."""
    notes = []
    annotators = sorted(annotator_models(store))
    llms = [m for m in (_llm_of(a) for a in annotators) if m is not None]
    if strategy in LLM_STRATEGIES:
        if llms and all(_same_model(critic_spec, m) for m in llms):
            notes.append(f"critic: self-criticism ({critic_spec} annotated and now criticizes)")
            env = os.environ.get(CRITIC_MODEL_ENV, "").strip()
            if env and source == "given" and not _same_model(env, critic_spec):
                notes.append(
                    f"advice: cross-criticism beats self-criticism (paper insight 3) and {CRITIC_MODEL_ENV}={env} "
                    "is configured; omit --model to use it"
                )
        elif llms or annotators:
            notes.append(
                f"critic: cross-criticism ({', '.join(annotators)} annotated, {critic_spec} criticizes)"
            )
    if strategy == "naive":
        notes.append(
            "advice: chain-of-thought critics are stronger than naive ones (paper insight 2); try --strategy cot"
        )
    if (
        LLM_STRATEGIES.get(strategy) is not None
        and LLM_STRATEGIES[strategy].white_box
        and ModelSpec.parse(critic_spec).kind == "openai"
    ):
        notes.append(
            "advice: on large API models verbalized critics (cot) usually beat token-probability ones "
            "(paper insight 4); validate on reviewed items"
        )
    return notes


# ---- records -------------------------------------------------------------------------------------


def _raw(target: Target, text: str, templates: str = "", **extra: Any) -> str:
    """The record's raw JSON: the annotation judged, the prompt templates' hash (a changed prompt
    makes the critique stale, as for annotations), the model's text and strategy details."""
    doc = {"annotation_id": target.annotation_id, "machine_label": target.machine_label, "text": text}
    if templates:
        doc["templates"] = templates
    return json.dumps(doc | extra, ensure_ascii=False)


def _ok_record(
    target: Target, run_id: int, model: str, strategy: str, verdict: Verdict, templates: str = ""
) -> dict[str, Any]:
    e = float(verdict.error_prob)
    if not 0.0 <= e <= 1.0:
        raise AssertionError(f"{strategy} produced error_prob {e}")  # a bug, not a model answer
    return {
        "item_rowid": target.item.rowid,
        "run_id": run_id,
        "model": model,
        "strategy": strategy,
        "error_prob": e,
        "proposed_label": verdict.proposed_label,
        "rationale": verdict.rationale or None,
        "raw": _raw(target, verdict.text, templates, **verdict.extra),
        "status": "ok",
    }


def _failed_record(
    target: Target,
    run_id: int,
    model: str,
    strategy: str,
    failure: ParseFailure | ModelError,
    templates: str = "",
) -> dict[str, Any]:
    if isinstance(failure, ParseFailure):
        error = f"no usable verdict after {failure.attempts} attempts: {failure.error}"
        raw = _raw(target, failure.raw_text, templates)
    else:
        error, raw = f"model call failed: {failure}", _raw(target, "", templates)
    return {
        "item_rowid": target.item.rowid,
        "run_id": run_id,
        "model": model,
        "strategy": strategy,
        "error_prob": None,
        "raw": raw,
        "status": "failed",
        "error": one_line(error),
    }


def critique_auroc(store: Store, strategy: str, model: str | None = None) -> tuple[float | None, int, int]:
    """(AUROC of the current critiques of `strategy` against gold errors, errors, items) or None."""
    from actlabel.metrics import error_detection_auroc

    ann = store.current_annotations()
    gold = store.gold_labels()
    e, y = [], []
    for rowid, (err, raw) in store.latest_critiques(
        ("error_prob", "raw"), strategy=strategy, model=model or None
    ).items():
        if rowid in gold and rowid in ann and raw_annotation_id(raw) in (None, ann[rowid].id):
            e.append(err)
            y.append(gold[rowid] != ann[rowid].label)
    if not y or all(y) or not any(y):
        return None, int(sum(y)), len(y)
    return error_detection_auroc(np.array(e), np.array(y)), int(sum(y)), len(y)


# ---- the stage ---------------------------------------------------------------------------------


def _raw_templates(raw: str | None) -> str | None:
    try:
        return json.loads(raw or "{}").get("templates")
    except (ValueError, AttributeError):
        return None


def _pending(
    store: Store, targets: list[Target], strategy: str, model: str, templates: str
) -> tuple[list[Target], int]:
    """(targets to judge, how many are skipped): skipped when the latest critique by this strategy
    and model is ok, judged the current machine label, and used the current prompt templates."""
    # Same model name, any endpoint URL: a model moved to another host is still the same critic.
    name = ModelSpec.parse(model).bare
    latest = store.latest(
        "critiques",
        ("status", "raw"),
        "strategy = ? AND (model = ? OR model LIKE ?)",
        (strategy, name, name + "@%"),
    )
    todo, skipped = [], 0
    for t in targets:
        status, raw = latest.get(t.item.rowid, (None, None))
        if status == "ok" and raw_annotation_id(raw) == t.annotation_id and _raw_templates(raw) == templates:
            skipped += 1
        else:
            todo.append(t)
    return todo, skipped


async def critique_async(
    store: Store, options: CritiqueOptions | None = None, /, **kwargs: Any
) -> CritiqueResult | BatchOutcome[CritiqueResult]:
    """Criticize the current machine labels with `strategy` (None: default_strategy). See the
    module docstring.

    options: a CritiqueOptions (options.py documents each one), or the same as keyword arguments.
    """
    opts: CritiqueOptions = stage_options(CritiqueOptions, options, kwargs)
    model, backend, limit, seed = opts.model, opts.backend, opts.limit, opts.seed
    strategy = opts.strategy
    if strategy is None:
        strategy = default_strategy(store) if backend is None else DEFAULT_STRATEGY
    if strategy == MULTI_LABEL_STRATEGY and not store.task.multi_label:
        raise UserError(f"the {strategy} critic is for multi-label tasks (actlabel init --multi-label)")
    if strategy == MULTI_LABEL_STRATEGY:
        if model or backend is not None:
            raise UserError(f"the {strategy} critic uses no chat model; drop --model")
        if not store.has_machine_labels():
            raise UserError(f"{store.root}: no machine labels to criticize; run `actlabel annotate` first")
        return _critique_offline(store, strategy, None, limit=limit, seed=seed)
    name, members = parse_strategy(strategy)
    if store.task.multi_label:
        raise UserError(
            f"the {name} critic judges one label per item; multi-label tasks use --strategy {MULTI_LABEL_STRATEGY}"
        )
    if not store.has_machine_labels():
        raise UserError(f"{store.root}: no machine labels to criticize; run `actlabel annotate` first")
    if name in OFFLINE_STRATEGIES:
        if model or backend is not None or opts.backend_options:
            raise UserError(f"the {name} critic uses no chat model; drop --model, --n-ctx and --threads")
        if CRITICS[name].kind == "streamed":
            return _critique_confidence(store, name, limit=limit)
        return _critique_offline(store, name, members, limit=limit, seed=seed)
    cls = LLM_STRATEGIES[name]
    cap = opts.cap()
    spec, source = (
        (backend.spec, "given") if backend is not None and not model else resolve_critic_model(store, model)
    )
    targets = load_targets(store)
    if cls.needs_reasoning:
        missing = sum(1 for t in targets if not (t.reasoning or "").strip())
        if missing:
            raise UserError(
                f"the devil's-advocate critic argues against the annotator's reasoning, and {missing} of "
                f"{len(targets)} machine labels have none: annotate with --cot first (actlabel annotate DIR --cot)"
            )
    check_scale_options(spec, batch=opts.batch, engine=opts.engine)
    if opts.backend_options and not ModelSpec.parse(spec).can("embedded"):
        raise UserError(f"--n-ctx and --threads apply to local/ models only; the critic model is {spec}")
    # The hash of the strategy's own templates: editing one strategy's prompt does not invalidate
    # the others' cached answers (cot-logit and cot-ppl declare the same templates, so their
    # identical analysis request is shared).
    stack = open_stage_model(store, spec, opts, cls.templates)
    async with model_in_use(stack, owned=backend is None):
        run = functools.partial(
            _critique_llm,
            store,
            stack,
            cls(),
            targets,
            notes=criticism_notes(store, name, stack.spec, source),
            concurrency=opts.concurrency or default_concurrency(stack.spec),
            cap=cap,
            limit=limit,
            progress=opts.progress,
            max_parse_retries=opts.max_parse_retries,
            reasoning_tokens=opts.reasoning_tokens,
        )
        return await run_calls(store, stack, "critique", run, opts)


critique = synchronous(critique_async)


async def _critique_llm(
    store: Store,
    stack: ModelStack,
    strategy: Strategy,
    targets: list[Target],
    *,
    notes: list[str],
    concurrency: int,
    cap: Any,
    limit: int | None,
    progress: bool,
    max_parse_retries: int,
    reasoning_tokens: int,
) -> CritiqueResult:
    task = store.task
    raw = stack.raw
    if strategy.needs_logprobs and not raw.supports_logprobs:
        raise UserError(
            f"the {strategy.name} critic reads token probabilities and {stack.spec} gives none: "
            "use a black-box strategy (--strategy cot) or a model with logprobs"
        )
    with_images = raw.supports_images
    if not with_images and any(t.item.image_path for t in targets):
        if not task.text_columns:
            raise UserError(
                f"{stack.spec} cannot see images and the items are images only: use an openai/ vision model "
                "as critic, or --strategy learned once some items are reviewed"
            )
        notes = [*notes, f"note: {stack.spec} cannot see images; it judges the items' text only"]
    model_name = stack.spec
    templates = prompting.templates_hash(strategy.templates)
    todo, skipped = _pending(store, targets, strategy.name, model_name, templates)
    left_after_limit = max(0, len(todo) - limit) if limit is not None else 0
    if limit is not None:
        todo = todo[:limit]
    result = CritiqueResult(strategy.name, model_name, skipped=skipped, notes=notes)
    if not todo and not strategy.deferred:
        result.auroc, result.gold_errors, result.gold_items = critique_auroc(store, strategy.name, model_name)
        return result
    ctx = CriticContext(
        store, task, stack.backend, raw.supports_logprobs, with_images, max_parse_retries, reasoning_tokens
    )
    params = {
        "strategy": strategy.name,
        "model": model_name,
        "templates": list(strategy.templates),
        "limit": limit,
    }
    deferred: list[tuple[Target, Verdict]] = []
    with stage_run(store, "critique", params, usage=stack.usage) as run:
        run_id = run.id

        async def work(target: Target) -> dict[str, Any] | None:
            outcome = await strategy.judge(ctx, target)
            if isinstance(outcome, ParseFailure):
                return _failed_record(target, run_id, model_name, strategy.name, outcome, templates)
            if strategy.deferred:
                deferred.append((target, outcome))
                return None
            return _ok_record(target, run_id, model_name, strategy.name, outcome, templates)

        def on_error(target: Target, exc: ModelError) -> dict[str, Any] | None:
            if isinstance(exc, Deferred):
                return None  # its request waits in a provider batch: the item stays pending
            return _failed_record(target, run_id, model_name, strategy.name, exc, templates)

        engine = await run_items(
            todo,
            work,
            concurrency=concurrency,
            write_batch=store.add_critiques,
            usage=stack.usage,
            cap=cap,
            progress=progress,
            label=f"critique ({strategy.name})",
            on_error=on_error,
        )
        if strategy.deferred:
            ranked = _finish_deferred(store, strategy, targets, deferred, run_id, model_name, templates)
            result.notes.append(
                f"note: {strategy.name} error probabilities are ranks over all {ranked} items critiqued so far "
                "(rewritten each run); calibrate them on reviewed items to read them as probabilities"
            )
        run.ended_by(engine)
    counts = store.run_status_counts("critiques", run_id)
    result.failed = counts.get("failed", 0)
    result.done = len(deferred) if strategy.deferred else counts.get("ok", 0)
    result.left = len(todo) - result.done - result.failed + left_after_limit
    result.take_usage(stack.usage, engine, run_id)
    result.errors = [f"item {k.item.item_id}: {e}" for k, e in engine.errors]
    result.auroc, result.gold_errors, result.gold_items = critique_auroc(store, strategy.name, model_name)
    return result


def _finish_deferred(
    store: Store,
    strategy: Strategy,
    targets: list[Target],
    fresh: list[tuple[Target, Verdict]],
    run_id: int,
    model_name: str,
    templates: str = "",
) -> int:
    """Rescale over this run's verdicts and the earlier ones still current, write them all, and
    return how many were ranked."""
    fresh_rows = {t.item.rowid for t, _ in fresh}
    by_rowid = {t.item.rowid: t for t in targets}
    earlier: list[tuple[Target, Verdict]] = []
    for rowid, (raw, proposed, rationale) in store.latest_critiques(
        ("raw", "proposed_label", "rationale"), strategy=strategy.name, model=model_name
    ).items():
        t = by_rowid.get(rowid)
        if t is None or rowid in fresh_rows:
            continue
        data = json.loads(raw)
        if data.get("annotation_id") != t.annotation_id or "log_ppl" not in data:
            continue
        if data.get("templates", "") != templates:
            continue
        extra = {
            k: v for k, v in data.items() if k not in ("annotation_id", "machine_label", "text", "templates")
        }
        earlier.append((t, Verdict(float("nan"), proposed, rationale or "", data.get("text", ""), extra)))
    everything = fresh + earlier
    if everything:
        strategy.finalize([v for _, v in everything])
        store.add_critiques(
            _ok_record(t, run_id, model_name, strategy.name, v, templates) for t, v in everything
        )
    return len(everything)


def _critique_confidence(store: Store, name: str, *, limit: int | None) -> CritiqueResult:
    """A critic that writes its own records in batches (critics/confidence.py)."""
    start = time.monotonic()
    with stage_run(store, "critique", {"strategy": name, "limit": limit}, on_error="failed") as run:
        run_id = run.id
        info, auroc, gold_errors, gold_items = CRITICS[name].load()(store, run_id=run_id, limit=limit)
        run.message = one_line(info.summary(), 500)
    result = CritiqueResult(name, info.model, done=info.items, run_id=run_id, notes=[info.summary()])
    result.elapsed = time.monotonic() - start
    result.auroc, result.gold_errors, result.gold_items = auroc, gold_errors, gold_items
    return result


def _critique_offline(
    store: Store, name: str, members: Sequence[str] | None, *, limit: int | None, seed: int
) -> CritiqueResult:
    """consistency / learned / ensemble: no chat model; every current machine label is rescored each run."""
    start = time.monotonic()
    targets = load_targets(store)
    if limit is not None:
        targets = targets[:limit]
    params = {"strategy": name, "members": members, "limit": limit}
    with stage_run(store, "critique", params, on_error="failed") as run:
        run_id = run.id
        critic = CRITICS[name]
        options: dict[str, Any] = {"run_id": run_id}
        if critic.seeded:
            options["seed"] = seed
        if critic.takes_members:
            options["members"] = members
        records, info = critic.load()(store, targets, **options)
        store.add_critiques(records)
        run.message = one_line(info.summary(), 500)
    result = CritiqueResult(name, info.model, done=len(records), run_id=run_id, notes=[info.summary()])
    result.elapsed = time.monotonic() - start
    result.auroc, result.gold_errors, result.gold_items = critique_auroc(store, name, info.model)
    return result


# ---- calibration ---------------------------------------------------------------------------------

CALIBRATED_SUFFIX = "+calibrated"
MIN_CALIBRATION_REVIEWS = 20


@dataclass
class CalibrationResult:
    strategy: str
    model: str
    method: str
    reviewed: int
    wrong: int
    ece_before: float
    ece_after: float
    folds: int
    written: int
    weighted: bool

    def __str__(self) -> str:
        how = f"{self.folds}-fold cross-fitted" if self.folds > 1 else "in-sample"
        weights = ", weighted by 1/review_prob" if self.weighted else ""
        return (
            f"calibrated {self.strategy} ({self.model}) with {self.method} on {self.reviewed} reviewed items "
            f"({self.wrong} wrong machine labels{weights}): ECE {self.ece_before:.3f} -> {self.ece_after:.3f} "
            f"({how}); wrote {self.written} critiques as {self.strategy}{CALIBRATED_SUFFIX}"
        )


def _latest_critic(store: Store, strategy: str | None) -> tuple[str, str]:
    for s, m in store.critics_newest_first(strategy):
        if not s.endswith(CALIBRATED_SUFFIX):
            return s, m
    if strategy:
        raise UserError(
            f"no {strategy} critiques to calibrate; run actlabel critique DIR --strategy {strategy}"
        )
    raise UserError("no critiques to calibrate; run actlabel critique first")


def calibrate(
    store: Store,
    *,
    method: str = "isotonic",
    strategy: str | None = None,
    model: str | None = None,
    seed: int = 0,
) -> CalibrationResult:
    """Fit `method` (isotonic | platt, metrics.fit_calibrator) mapping a critic's error_prob to the
    observed rate of wrong machine labels on reviewed items, and write calibrated copies of its
    critiques (strategy NAME+calibrated) for every item.

    The critic is `strategy` (and `model`) or, by default, the one that wrote the latest critique.
    Reviewed items were selected with probability review_prob; when the selection recorded one,
    items are weighted by 1/review_prob so the fit describes the whole dataset rather than the
    items the critic found suspicious. ECE before/after is cross-fitted on the reviewed items
    (metrics.ece_before_after), so "after" is not flattered by fitting and scoring the same items.
    """
    from actlabel.metrics import ece_before_after, fit_calibrator

    if method not in ("isotonic", "platt"):
        raise UserError(f"unknown calibration method {method!r}: choose isotonic or platt")
    if strategy is not None and strategy.endswith(CALIBRATED_SUFFIX):
        raise UserError("calibrate the original critic, not an already calibrated one")
    name, critic_model = (
        _latest_critic(store, strategy)
        if model is None
        else (strategy or _latest_critic(store, None)[0], model)
    )
    ann = store.current_annotations()
    rows = [
        (rowid, float(e), proposed, rationale, raw)
        for rowid, (e, proposed, rationale, raw) in store.latest_critiques(
            ("error_prob", "proposed_label", "rationale", "raw"), strategy=name, model=critic_model
        ).items()
        if rowid in ann and raw_annotation_id(raw) in (None, ann[rowid].id)
    ]
    if not rows:
        raise UserError(f"no current {name} critiques by {critic_model} to calibrate")
    reviews = store.current_reviews()
    pis = {r: pi for r, (_selected, pi) in store.current_selections().items()}
    rev = [(e, reviews[r] != ann[r].label, pis.get(r)) for r, e, *_ in rows if r in reviews]
    wrong = sum(y for _e, y, _p in rev)
    if len(rev) < MIN_CALIBRATION_REVIEWS or wrong == 0 or wrong == len(rev):
        raise UserError(
            f"calibration fits on reviewed items and has {len(rev)} ({wrong} wrong machine labels); it needs at "
            f"least {MIN_CALIBRATION_REVIEWS} with both right and wrong labels: review more items first"
        )
    e = np.array([r[0] for r in rev])
    y = np.array([r[1] for r in rev])
    weighted = all(p is not None and p > 0 for _e, _y, p in rev) and len({p for *_, p in rev}) > 1
    w = np.array([1.0 / p for *_, p in rev]) if weighted else None
    folds = int(min(5, wrong, len(rev) - wrong))
    report = ece_before_after(e, y, method, n_folds=max(folds, 1), seed=seed, sample_weight=w)  # type: ignore[arg-type]
    calibrator = fit_calibrator(e, y, method, sample_weight=w)  # type: ignore[arg-type]
    calibrated = calibrator.predict(np.array([r[1] for r in rows]))
    run_id = store.start_run("calibrate", {"strategy": name, "model": critic_model, "method": method})
    records = []
    for (rowid, e_raw, proposed, rationale, raw), e_cal in zip(rows, calibrated, strict=True):
        data = json.loads(raw) if raw else {}
        data.update({"uncalibrated_error_prob": e_raw, "calibration": method})
        records.append(
            {
                "item_rowid": rowid,
                "run_id": run_id,
                "model": critic_model,
                "strategy": name + CALIBRATED_SUFFIX,
                "error_prob": float(min(max(e_cal, 0.0), 1.0)),
                "proposed_label": proposed,
                "rationale": rationale,
                "raw": json.dumps(data, ensure_ascii=False),
                "status": "ok",
            }
        )
    store.add_critiques(records)
    result = CalibrationResult(
        name,
        critic_model,
        method,
        len(rev),
        int(wrong),
        report.ece_before,
        report.ece_after,
        report.n_folds,
        len(records),
        weighted,
    )
    store.finish_run(run_id, "done", str(result))
    return result


__all__ = [
    "CALIBRATED_SUFFIX",
    "DEFAULT_STRATEGY",
    "EMBEDDED_DEFAULT_STRATEGY",
    "OFFLINE_STRATEGIES",
    "STRATEGIES",
    "CalibrationResult",
    "CritiqueResult",
    "calibrate",
    "critique",
    "critique_async",
    "default_strategy",
    "is_derived",
]
