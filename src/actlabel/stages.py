"""What the model-calling stages share: the model stack they call through, caps, the sync entry,
and which annotation records count as done. annotate.py, multilabel_annotate.py, critique.py,
plan.py and batch.py all build on it, so none of them needs another stage's module (which is what
made annotate <-> batch an import cycle)."""

from __future__ import annotations

import asyncio
import functools
import json
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from actlabel import prompting
from actlabel.errors import UserError
from actlabel.models import DEFAULT_MODEL, load_backend
from actlabel.models.base import Backend, ModelError
from actlabel.models.cache import CachedBackend
from actlabel.models.retry import ParseFailure
from actlabel.models.spec import IMAGE_ANNOTATOR_SPEC, ModelSpec
from actlabel.models.usage import CallCounts, MeteredBackend, PriceTable, RunUsage
from actlabel.options import StageOptions
from actlabel.store import Item, Store

P = ParamSpec("P")
R = TypeVar("R")

#: rowids per page when the store lists the items left to annotate
PENDING_BATCH = 20000


@dataclass
class ModelStack:
    """A backend as a stage uses it: metered(cached(raw)); `usage` counts calls and cache hits."""

    raw: Backend
    cached: CachedBackend
    backend: MeteredBackend
    usage: RunUsage

    @property
    def spec(self) -> str:
        return self.raw.spec

    async def aclose(self) -> None:
        await self.raw.aclose()


def open_model(
    store: Store,
    spec: str,
    *,
    base_url: str | None = None,
    backend: Backend | None = None,
    templates: Sequence[str] = (),
    engine: str = "async",
    workers: int | None = None,
    backend_options: dict[str, Any] | None = None,
) -> ModelStack:
    """Load `spec` (or take `backend` as given) and wrap it in the project's cache and a meter.
    The templates' hash is part of every cache key. engine="ray" sends the calls to a pool of Ray
    workers (distributed.py); it sits under the cache, so a cached call never reaches a worker.
    backend_options go to the backend's constructor (n_ctx=, n_threads= for local models)."""
    raw = backend if backend is not None else load_backend(spec, base_url=base_url, **(backend_options or {}))
    if engine != "async":
        from actlabel.distributed import wrap_engine

        raw = wrap_engine(
            raw, engine, spec=spec, base_url=base_url, workers=workers, given=backend is not None
        )
    cached = CachedBackend(raw, store.response_cache(), template_hash=prompting.templates_hash(templates))
    usage = RunUsage(prices=PriceTable.load(store.root))
    return ModelStack(raw, cached, MeteredBackend(cached, usage), usage)


def open_stage_model(store: Store, spec: str, opts: StageOptions, templates: Sequence[str]) -> ModelStack:
    """open_model as a stage's options say: their backend or endpoint, engine and constructor options."""
    return open_model(
        store,
        spec,
        base_url=opts.base_url,
        backend=opts.backend,
        templates=templates,
        engine=opts.engine,
        workers=opts.workers,
        backend_options=opts.backend_options,
    )


@asynccontextmanager
async def model_in_use(stack: ModelStack, *, owned: bool) -> AsyncIterator[ModelStack]:
    """The stack for one stage, closed when the stage ends if the stage opened it: a backend
    passed in belongs to the caller, who may use it again."""
    try:
        yield stack
    finally:
        if owned:
            await stack.aclose()


def default_concurrency(spec: str) -> int:
    """Endpoints serve many calls at once; an in-process model runs one at a time anyway."""
    return 16 if ModelSpec.parse(spec).can("concurrent_calls") else 1


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_async(coro: Awaitable[Any]) -> Any:
    """Run a stage's coroutine from sync code (the CLI, scripts, notebooks with no running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    raise RuntimeError("call the async variant (annotate_async / critique_async) from inside an event loop")


def synchronous(stage: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    """The sync entry of an async stage, with the same signature and docs: `annotate =
    synchronous(annotate_async)`, so the options are declared once."""

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return run_async(stage(*args, **kwargs))

    run.__name__ = run.__qualname__ = stage.__name__.removesuffix("_async")
    return run


def label_max_tokens(names: Sequence[str]) -> int:
    """Room for the longest label (about 3 characters per token) plus a little slack."""
    return max(8, max(len(n) for n in names) // 3 + 6)


def gold_accuracy(store: Store) -> tuple[float | None, int]:
    """Accuracy of the current ok machine labels on items with a gold label, and how many there are."""
    agree, n = store.gold_agreement()
    return (agree / n if n else None), n


# ---- one stage run: its `runs` row and its result -----------------------------------------------


@dataclass
class StageRun:
    """The `runs` row of a stage while it works. The stage sets `status` and `message` before its
    block ends; `stage_run` writes them, or the failure, when the block is left."""

    id: int
    status: str = "done"
    message: str | None = None

    def ended_by(self, engine: Any) -> None:
        """The engine's verdict: a cost or token cap stops the run early (a re-run continues)."""
        if engine.stopped_by_cap:
            self.status, self.message = "stopped", engine.cap_reason


@contextmanager
def stage_run(
    store: Store,
    stage: str,
    params: dict[str, Any],
    *,
    usage: RunUsage | None = None,
    on_error: str = "interrupted",
) -> Iterator[StageRun]:
    """Start a `runs` row for `stage` and finish it however the block ends: a Ctrl-C or a crash is
    recorded with its one-line cause (as `on_error`) before it propagates, so `status` never shows a
    run that is still "running" after its process is gone. usage: the counters stored with the row."""
    run = StageRun(store.start_run(stage, params))
    try:
        yield run
    except BaseException as exc:
        fields = usage.run_fields() if usage is not None else {}
        store.finish_run(run.id, on_error, one_line(f"{type(exc).__name__}: {exc}"), **fields)
        raise
    store.finish_run(run.id, run.status, run.message, **(usage.run_fields() if usage is not None else {}))


@dataclass(kw_only=True)
class StageResult(CallCounts):
    """What every item stage reports: how many items ended how, and what the model calls cost
    (CallCounts). AnnotateResult and CritiqueResult add what only they know (accuracy, AUROC vs gold)."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    left: int = 0
    elapsed: float = 0.0
    stopped: str | None = None
    run_id: int | None = None
    errors: list[str] = field(default_factory=list)

    def take_usage(self, usage: RunUsage, engine: Any, run_id: int) -> None:
        """Copy the run's call counters and the engine's time and stop reason."""
        self.copy_counts(usage.counts())
        self.elapsed, self.stopped, self.run_id = engine.elapsed, engine.cap_reason, run_id

    def line(self, head: str, extra: Sequence[str] = ()) -> str:
        """The one summary line the CLI prints: `head` (what was done, with what), counts, usage."""
        parts = [
            f"{head}: {self.done} ok, {self.failed} failed, {self.skipped} already done"
            + (f", {self.left} left" if self.left else ""),
            f"calls {self.calls} (cache hits {self.cache_hits})",
            f"tokens {self.input_tokens} in / {self.output_tokens} out",
            f"${self.cost:.4f}",
            f"{self.elapsed:.1f} s",
            *extra,
        ]
        if self.stopped:
            parts.append(f"stopped: {self.stopped}; re-run to continue")
        return " | ".join(parts)


# ---- annotation records shared by the single- and multi-label annotators ---------------------


def failed_record(item: Item, run_id: int, model: str, failure: ParseFailure | ModelError) -> dict[str, Any]:
    if isinstance(failure, ParseFailure):
        return {
            "item_rowid": item.rowid,
            "run_id": run_id,
            "model": model,
            "label": None,
            "raw": failure.raw_text,
            "status": "failed",
            "error": one_line(f"no label in the answer after {failure.attempts} attempts: {failure.error}"),
        }
    return failed_item_record(item, run_id, model, f"model call failed: {failure}")


def failed_item_record(item: Item, run_id: int, model: str, reason: str) -> dict[str, Any]:
    """A failed annotation record with its reason on one line."""
    return {
        "item_rowid": item.rowid,
        "run_id": run_id,
        "model": model,
        "label": None,
        "status": "failed",
        "error": one_line(reason),
    }


def settings_key(model: str, cot: bool, templates: str, label_model: int | None = None) -> str:
    # The endpoint URL is left out ('openai/x@http://host/v1' -> 'openai/x'): the same model moved to
    # another host is still the same annotator (the response cache, which must be exact, keeps it).
    key: dict[str, Any] = {"model": ModelSpec.parse(model).bare, "cot": cot, "templates": templates}
    if label_model is not None:
        key["label_model"] = label_model
    return json.dumps(key, sort_keys=True)


def pending_items(store: Store, settings: str, limit: int | None) -> tuple[array[int], int]:
    """(rowids to annotate in rowid order, how many are skipped as already done with `settings`).

    The store picks the pending items batch by batch and the rowids are kept as 8-byte machine
    integers: a dict of every item's latest annotation plus a list of rowids was ~200 bytes an
    item, most of a million-item annotate's memory. `limit` is the callers' to apply (they report
    how many are left beyond it)."""
    done_runs = [
        run["run_id"]
        for run in store.runs("annotate")
        if json.loads(run["params"] or "{}").get("settings") == settings
    ]
    todo: array[int] = array("q")
    for rowids in store.iter_pending_annotation_rowids(done_runs, batch=PENDING_BATCH):
        todo.extend(rowids)
    return todo, store.count_items() - len(todo)


# ---- choosing the annotator -------------------------------------------------------------------


def task_modalities(store: Store) -> tuple[bool, bool]:
    """(has text, has images) over the imported items."""
    task = store.task
    has_images = bool(task.image_column or store.has_images())
    has_text = bool(task.text_columns)
    if not has_text and not task.image_column:
        has_text = True  # items imported without declared roles: their fields are text
    return has_text, has_images


def resolve_annotator(store: Store, model: str | None) -> str:
    """The annotator spec for `model` (None = the embedded default) on this task's modalities."""
    has_text, has_images = task_modalities(store)
    spec = (model or DEFAULT_MODEL).strip()
    embedded_default = spec == DEFAULT_MODEL
    parsed = ModelSpec.parse(spec)
    if parsed.is_features:
        if spec != IMAGE_ANNOTATOR_SPEC:
            raise UserError(f"unknown feature model {spec!r}: use {IMAGE_ANNOTATOR_SPEC}")
        if not has_images:
            raise UserError(f"{IMAGE_ANNOTATOR_SPEC} labels images, and this task has none")
        return spec
    if parsed.is_composite:
        return spec
    if has_images and embedded_default:
        return IMAGE_ANNOTATOR_SPEC if not has_text else ModelSpec.composite(IMAGE_ANNOTATOR_SPEC, spec).text
    return spec
