"""`Project`: the one easy entry object. The CLI is a thin layer over it; each method calls one stage."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actlabel.errors import UserError
from actlabel.store import Store
from actlabel.task import Example, Label, Task

if TYPE_CHECKING:
    from actlabel import data

# multilabel and metrics (numpy) are imported where used: a CLI start needs neither.


@dataclass
class StageStatus:
    done: int
    failed: int = 0
    left: int = 0


@dataclass
class ProjectStatus:
    root: str
    items: int
    labels: list[str]
    annotated: StageStatus
    critiqued: StageStatus
    selected: int
    reviewed: int
    selected_not_reviewed: int
    machine_label_counts: dict[str, int]
    final_label_counts: dict[str, int]
    gold_items: int
    runs: list[dict[str, Any]]
    usage: dict[str, float]
    residual: Any = None
    next_steps: list[str] = field(default_factory=list)
    #: multi-label projects: machine sets against gold (exact-set match, Hamming, F1 per label)
    multi_label_quality: dict[str, Any] | None = None


def _os_reason(exc: BaseException) -> str:
    """The reason an OS call failed, without Python's exception syntax."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return str(exc) or type(exc).__name__


class Project:
    """An actlabel project folder. `Project.init(...)` creates one, `Project.open(dir)` opens one.

    Every stage is a method here and the CLI is a thin mapping onto them, so a notebook and the
    command line run the same code: `Project.open(dir).annotate(model="openai/gpt-4o-mini")`.
    A method that writes takes the project's writer lock for its duration (a second writer, in
    this process or another, is told who holds it). The stage modules are imported when their
    method runs, so opening a project (and `actlabel --help`) stays fast and an optional extra
    that is not installed is reported only by the stage that needs it.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.store = Store.open(self.root)
        self._writing = 0

    @classmethod
    def open(cls, root: str | Path) -> Project:
        return cls(root)

    @classmethod
    def init(
        cls,
        root: str | Path,
        labels: list[Label] | list[str],
        *,
        instructions: str = "",
        examples: list[Example] | None = None,
        multi_label: bool = False,
    ) -> Project:
        task = Task(
            labels=[lab if isinstance(lab, Label) else Label(lab) for lab in labels],
            instructions=instructions,
            examples=list(examples or []),
            multi_label=multi_label,
        )
        try:
            Store.create(root, task).close()
        except (OSError, sqlite3.OperationalError) as exc:
            raise UserError(f"cannot create the project {root}: {_os_reason(exc)}") from None
        return cls(root)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def task(self) -> Task:
        return self.store.task

    # ---- stages ----------------------------------------------------------------------------
    @contextmanager
    def writing(self, command: str) -> Iterator[Store]:
        """The store under the writer lock, held for `command` (as `actlabel COMMAND` names it in
        the busy message). Nested uses share the outer lock, released when the outermost ends."""
        if self._writing == 0:
            self.store.acquire_writer(command)
        self._writing += 1
        try:
            yield self.store
        finally:
            self._writing -= 1
            if self._writing == 0:
                self.store.release_writer()

    def import_file(self, path: str | Path, **roles: Any) -> data.ImportResult:
        from actlabel import data  # pyarrow: only import and export need it, not every CLI start

        with self.writing("import") as store:
            return data.import_path(store, path, **roles)

    def annotate(self, options: Any = None, /, **kwargs: Any) -> Any:
        """Stage 1: machine labels for every item not yet labelled with these settings: an
        options.AnnotateOptions, or its fields as keyword arguments (model=, cot=, limit=, ...).
        Returns an AnnotateResult, or a BatchOutcome with batch=True."""
        from actlabel.annotate import annotate
        from actlabel.options import AnnotateOptions, stage_options

        opts = stage_options(AnnotateOptions, options, kwargs)  # a mistake is refused before the lock
        with self.writing("annotate") as store:
            return annotate(store, opts)

    def refine(self, *, progress: bool = True) -> Any:
        """`annotate --refine`: relabel every item from what the reviews taught (no model calls)."""
        from actlabel.refine import refine_labels

        with self.writing("annotate") as store:
            return refine_labels(store, progress=progress)

    def critique(self, options: Any = None, /, **kwargs: Any) -> Any:
        """Stage 2: each machine label's error probability: an options.CritiqueOptions, or its
        fields as keyword arguments (model=, strategy=, seed=, ...)."""
        from actlabel.critique import critique
        from actlabel.options import CritiqueOptions, stage_options

        opts = stage_options(CritiqueOptions, options, kwargs)  # a mistake is refused before the lock
        with self.writing("critique") as store:
            return critique(store, opts)

    def calibrate(self, **opts: Any) -> Any:
        """Calibrate a critic's error probabilities on the reviewed items (method=, strategy=)."""
        from actlabel.critique import calibrate

        with self.writing("calibrate") as store:
            return calibrate(store, **opts)

    def select(self, **opts: Any) -> Any:
        """Stage 3: the next review round within a budget (budget=, rule=, uniform=, seed=, ...)."""
        from actlabel.selection import select_for_review

        with self.writing("select") as store:
            return select_for_review(store, **opts)

    def simulate_review(self, **opts: Any) -> Any:
        """Stage 4 without humans: answer the selected items from the gold labels (source=, error_rate=, seed=)."""
        from actlabel.review.simulate import simulate_review

        with self.writing("review --simulate") as store:
            return simulate_review(store, **opts)

    def review(self, *, terminal: bool = False, **opts: Any) -> None:
        """Stage 4: humans review the selected items in the browser (host=, port=, open_browser=,
        reviewer=) or in the terminal (reviewer=). The review queue leases items per reviewer, so
        several reviewers may work at once: no writer lock."""
        if terminal:
            from actlabel.review.terminal import run_terminal_review

            run_terminal_review(self.store, **opts)
            return
        from actlabel.review.app import serve

        serve(self.store, **opts)

    def import_reviews(self, file: str | Path, fmt: str) -> Any:
        """Human labels back from a Label Studio or Argilla export."""
        from actlabel.review.adapters import import_from_tool

        with self.writing("import-reviews") as store:
            return import_from_tool(store, file, fmt)

    def serve_labelstudio(self, **opts: Any) -> None:
        """A Label Studio ML backend and webhook receiver (host=, port=, secret=)."""
        from actlabel.review.labelstudio_live import serve

        serve(self.store, **opts)

    def run(self, options: Any = None, /, **kwargs: Any) -> str:
        """`actlabel run`: what is due of annotate, refine, critique and the next review round
        (pipeline.py): an options.RunOptions, or its fields as keyword arguments (model=,
        budget=, rounds=, rule=, ...)."""
        from actlabel.options import RunOptions, stage_options
        from actlabel.pipeline import run_pipeline

        opts = stage_options(RunOptions, options, kwargs)  # a mistake is refused before the lock
        with self.writing("run") as store:
            return run_pipeline(store, opts)

    def plan(self, **opts: Any) -> str:
        """Dry run: one real prompt per stage, and calls, tokens and cost for the whole dataset."""
        from actlabel.plan import plan

        return plan(self.store, **opts)

    def report(self, out: str | Path | None = None) -> Path:
        """Write the self-contained HTML report (default: DIR/report.html) and return its path."""
        from actlabel.report import write_report

        return write_report(self.store, out if out is not None else self.root / "report.html")

    def export(self, out: str | Path, *, format: str | None = None, force: bool = False) -> int:
        """Write the labelled table (or tool tasks with `format`) to `out`; an existing file is
        refused unless `force`."""
        from actlabel import data

        if format:
            from actlabel.review import adapters

            data.check_export_target(Path(out), force=force)
            return adapters.export_for_tool(self.store, out, format)
        return data.export(self.store, out, force=force)

    def failure_reasons(self, table: str, run_id: int, top: int = 3) -> list[tuple[int, str]]:
        """The most common reasons items failed in one annotate ("annotations") or critique run."""
        return self.store.failure_reasons(table, run_id, top)

    # ---- status ----------------------------------------------------------------------------
    def status(self) -> ProjectStatus:
        from actlabel import multilabel

        store = self.store
        n = store.count_items()
        machine = Counter()
        final = Counter()
        ann_ok = ann_failed = crit_ok = crit_failed = sel = rev = sel_not_rev = gold = 0
        multi = store.task.multi_label
        gold_pairs: list[tuple[str, str]] = []  # (machine set, gold set) where both exist
        for rows in store.iter_current_rows():
            for r in rows:
                gold_label, m_label, a_status = r.gold_label, r.machine_label, r.annotation_status
                selected, human = r.selected, r.human_label
                if a_status == "ok":
                    ann_ok += 1
                    if multi:
                        machine.update(multilabel.decode(m_label) or ["(empty set)"])
                        if gold_label is not None:
                            gold_pairs.append((m_label, gold_label))
                    else:
                        machine[m_label] += 1
                elif a_status == "failed":
                    ann_failed += 1
                if r.error_prob is not None:
                    crit_ok += 1
                if selected:
                    sel += 1
                    if human is None:
                        sel_not_rev += 1
                if human is not None:
                    rev += 1
                label = human if human is not None else m_label
                if label is not None and multi:
                    final.update(multilabel.decode(label) or ["(empty set)"])
                elif label is not None:
                    final[label] += 1
                if gold_label is not None:
                    gold += 1
        crit_failed = store.current_status_counts("critiques").get("failed", 0)
        runs = store.runs()
        usage = {
            k: sum(float(r[k] or 0) for r in runs)
            for k in ("calls", "cache_hits", "input_tokens", "output_tokens", "cost")
        }
        steps = []
        if n == 0:
            steps.append(f"actlabel import {self.root} FILE")
        elif ann_ok + ann_failed < n or ann_failed:
            steps.append(f"actlabel annotate {self.root}")
        elif crit_ok < ann_ok:
            steps.append(f"actlabel critique {self.root}")
        elif sel == 0:
            steps.append(f"actlabel select {self.root} --budget 20%")
        elif sel_not_rev:
            steps.append(f"actlabel review {self.root}")
        else:
            steps.append(f"actlabel export {self.root} labels.csv")
        residual = None
        try:
            from actlabel.residual import estimate_for_store

            residual = estimate_for_store(store)
        except ImportError:
            residual = None
        return ProjectStatus(
            root=str(self.root),
            items=n,
            labels=store.task.label_names,
            annotated=StageStatus(ann_ok, ann_failed, n - ann_ok - ann_failed),
            critiqued=StageStatus(crit_ok, crit_failed, max(0, ann_ok - crit_ok)),
            selected=sel,
            reviewed=rev,
            selected_not_reviewed=sel_not_rev,
            machine_label_counts=dict(machine.most_common()),
            final_label_counts=dict(final.most_common()),
            gold_items=gold,
            runs=runs,
            usage=usage,
            residual=residual,
            next_steps=steps,
            multi_label_quality=_set_quality(store.task.label_names, gold_pairs) if multi else None,
        )


def _set_quality(names: list[str], pairs: list[tuple[str, str]]) -> dict[str, Any] | None:
    from actlabel import metrics, multilabel

    if not pairs:
        return None
    agreement = metrics.set_agreement(
        multilabel.indicators([m for m, _ in pairs], names),
        multilabel.indicators([g for _, g in pairs], names),
    )
    return {
        "items": agreement.n,
        "exact_match": agreement.exact_match,
        "hamming": agreement.hamming,
        "micro_f1": agreement.micro_f1,
        "macro_f1": agreement.macro_f1,
        "f1": dict(zip(names, agreement.f1, strict=True)),
    }
