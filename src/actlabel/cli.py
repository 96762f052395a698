"""The command line: a thin layer over `actlabel.project.Project` and the stage modules.

Every user mistake ends as one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from actlabel.critics.registry import strategy_help
from actlabel.errors import UserError
from actlabel.options import (
    COT_REASONING_TOKENS,
    CRITIC_REASONING_TOKENS,
    AnnotateOptions,
    CritiqueOptions,
    RunOptions,
)
from actlabel.review.adapters import FORMATS as TOOL_FORMATS

EXIT_USER_ERROR = 1
#: select.RULES, spelled out so a CLI start does not import numpy with select.py (a test keeps them equal)
RULES = ("threshold", "exponential", "normalized")


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    click.echo(f"actlabel: error: {message}", err=True)
    sys.exit(code)


def _open(directory: str):
    from actlabel.project import Project

    return Project.open(directory)


#: the extra that brings an optional dependency (`pip install 'actlabel[EXTRA]'`)
_EXTRAS = {
    "torch": "ml",
    "sklearn": "ml",
    "sentence_transformers": "ml",
    "llama_cpp": "local",
    "starlette": "review",
    "uvicorn": "review",
    "jinja2": "review",
    "matplotlib": "report",
}


class _Group(click.Group):
    """Turns the errors a user can cause into one line; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from actlabel.models.base import ModelError

        try:
            return super().invoke(ctx)
        except (UserError, ModelError) as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except sqlite3.OperationalError as exc:
            # The store maps these itself; this catches a write outside its transactions.
            if not any(w in str(exc) for w in ("readonly", "disk is full", "unable to open")):
                raise
            _fail(f"the project database cannot be written ({exc})")
        except PermissionError as exc:
            _fail(f"{exc.filename or 'a file'}: permission denied")
        except ModuleNotFoundError as exc:
            # The stages import their optional dependencies when they run (Project's methods).
            if not exc.name or exc.name.split(".")[0] == "actlabel":
                raise
            hint = _EXTRAS.get(exc.name.split(".")[0])
            _fail(f"missing dependency {exc.name!r}" + (f": pip install 'actlabel[{hint}]'" if hint else ""))
        except KeyboardInterrupt:
            click.echo(
                f"actlabel: interrupted; {_INTERRUPTED.get(ctx.invoked_subcommand, _RESUME)}", err=True
            )
            sys.exit(130)


_RESUME = "everything finished so far is saved, re-run to resume"
#: commands that write all at once: an interrupt leaves nothing of them behind
_INTERRUPTED = {
    "import": "nothing of this import was stored (an import is all-or-nothing); re-run it",
    "select": "a selection round is written all at once: it was saved whole or not at all",
}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="actlabel")
def main() -> None:
    """actlabel: labelled datasets at a fraction of the human cost (the ACT method).

    A model annotates every item, a critic estimates which labels are wrong, humans review only the
    most suspicious items, and downstream models train with the ACT loss.
    """


# ---- init / import / export / status --------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--labels", help="Comma-separated label names, e.g. positive,negative,neutral.")
@click.option(
    "--labels-file", type=click.Path(dir_okay=False), help="One label per line: `name: description`."
)
@click.option("--instructions", default="", help="Instructions for annotators (models and humans).")
@click.option(
    "--instructions-file", type=click.Path(dir_okay=False), help="Read the instructions from a file."
)
@click.option(
    "--examples",
    "examples_file",
    type=click.Path(dir_okay=False),
    help="Few-shot examples: CSV/JSONL with `label` and `text` (and/or `image`) columns.",
)
@click.option(
    "--multi-label",
    is_flag=True,
    help="Each item takes a set of labels (possibly empty) instead of exactly one.",
)
def init(
    directory: str,
    labels: str | None,
    labels_file: str | None,
    instructions: str,
    instructions_file: str | None,
    examples_file: str | None,
    multi_label: bool,
) -> None:
    """Create a project in DIRECTORY with a label set and instructions."""
    from actlabel.project import Project
    from actlabel.task import parse_labels, read_examples_file, read_labels_file

    if bool(labels) == bool(labels_file):
        raise UserError("give the labels with exactly one of --labels or --labels-file")
    label_list = parse_labels(labels) if labels else read_labels_file(Path(labels_file))
    if instructions_file:
        try:
            instructions = Path(instructions_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{instructions_file}: cannot read instructions ({exc})") from None
    examples = read_examples_file(Path(examples_file)) if examples_file else []
    Project.init(
        directory, label_list, instructions=instructions, examples=examples, multi_label=multi_label
    ).close()
    click.echo(
        f"created {directory} with {len(label_list)} labels{' (multi-label)' if multi_label else ''}: "
        f"{', '.join(lab.name for lab in label_list)}"
    )
    click.echo(f"next: actlabel import {directory} FILE --text COLUMN")


@main.command("import")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("file", type=click.Path())
@click.option("--text", "text_columns", multiple=True, help="A text column (repeat for several).")
@click.option("--image", "image_column", help="Column with image paths, relative to the table file.")
@click.option("--id", "id_column", help="Column with stable item ids (default: a hash of the content).")
@click.option(
    "--gold", "gold_column", help="Column with known-correct labels (for evaluation and --simulate gold)."
)
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/JSONL files.")
@click.option(
    "--image-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder the images must lie in, symlinks followed [default: the table's folder].",
)
def import_(
    directory: str,
    file: str,
    text_columns: tuple[str, ...],
    image_column: str | None,
    id_column: str | None,
    gold_column: str | None,
    encoding: str,
    image_root: str | None,
) -> None:
    """Import items from a CSV, JSONL or Parquet file, or an image folder (sub-folders = classes)."""
    with _open(directory) as project:
        result = project.import_file(
            file,
            text_columns=text_columns,
            image_column=image_column,
            id_column=id_column,
            gold_column=gold_column,
            encoding=encoding,
            image_root=image_root,
        )
    click.echo(
        f"imported {result.rows} rows from {file}: {result.new_items} new, "
        f"{result.already_present} already present"
    )
    for note in result.notes:
        click.echo(f"  note: {note}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TOOL_FORMATS),
    help="Export the selected items as tasks for Label Studio or records for Argilla.",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export(directory: str, out: str, fmt: str | None, force: bool) -> None:
    """Write the labelled dataset to OUT (.csv, .jsonl or .parquet)."""
    with _open(directory) as project:
        n = project.export(out, format=fmt, force=force)
    click.echo(f"wrote {n} rows to {out}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(directory: str, as_json: bool) -> None:
    """Counts per stage, label distribution, usage and what is left to do."""
    from dataclasses import asdict

    with _open(directory) as project:
        st = project.status()
    if as_json:
        out = asdict(st)
        out["residual"] = None if st.residual is None else _residual_dict(st.residual)
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"project {st.root}: {st.items} items, labels: {', '.join(st.labels)}")
    click.echo(
        f"  annotated  {st.annotated.done:>8} ok  {st.annotated.failed:>6} failed  {st.annotated.left:>8} left"
    )
    click.echo(
        f"  critiqued  {st.critiqued.done:>8} ok  {st.critiqued.failed:>6} failed  {st.critiqued.left:>8} left"
    )
    click.echo(
        f"  selected   {st.selected:>8}     reviewed {st.reviewed}"
        + (
            f"   ({st.selected_not_reviewed} selected but not reviewed yet: the ACT loss needs them)"
            if st.selected_not_reviewed
            else ""
        )
    )
    if st.gold_items:
        click.echo(f"  gold labels on {st.gold_items} items")
    if st.machine_label_counts:
        click.echo("  machine labels: " + ", ".join(f"{k} {v}" for k, v in st.machine_label_counts.items()))
    if st.final_label_counts:
        click.echo("  final labels:   " + ", ".join(f"{k} {v}" for k, v in st.final_label_counts.items()))
    q = st.multi_label_quality
    if q is not None:
        click.echo(
            f"  machine sets vs gold ({q['items']} items): exact-set match {q['exact_match']:.3f}, "
            f"Hamming loss {q['hamming']:.3f}, micro-F1 {q['micro_f1']:.3f}, macro-F1 {q['macro_f1']:.3f}"
        )
        click.echo(
            "  F1 per label:   "
            + ", ".join(f"{k} {'n/a' if v != v else f'{v:.2f}'}" for k, v in q["f1"].items())
        )
    u = st.usage
    click.echo(
        f"  model usage: {int(u['calls'])} calls, {int(u['cache_hits'])} cache hits, "
        f"{int(u['input_tokens'])} input + {int(u['output_tokens'])} output tokens, ${u['cost']:.4f}"
    )
    if st.residual is not None:
        click.echo("  " + _residual_line(st.residual))
    for step in st.next_steps:
        click.echo(f"  next: {step}")


def _residual_dict(residual: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(residual) if is_dataclass(residual) else dict(residual)


def _residual_line(residual: Any) -> str:
    d = _residual_dict(residual)
    if not d.get("identifiable", True):
        return f"errors left among unreviewed labels: {d.get('note')}"
    est = d["estimate"]
    # the estimate is unbiased, so it can fall below 0 by chance: say so rather than print "-3"
    about = f"{est:.0f}" if est >= 0 else f"0 (unbiased estimate {est:.1f}, below 0 by chance)"
    line = (
        f"errors left among {d['n_unreviewed']} unreviewed labels: about {about} "
        f"({d['confidence']:.0%} CI {d['lower']:.0f} to {d['upper']:.0f}); {d['errors_found']} found by review"
    )
    more = d.get("uniform_reviews_to_halve")
    if more and d["upper"] > d["lower"]:
        line += f"; about {more} more uniform reviews would halve the interval"
    return line


# ---- model stages ---------------------------------------------------------------------------

_model_options = [
    click.option(
        "--model",
        help="openai/NAME (with --base-url) or local/NAME or local/PATH.gguf [default: the embedded model]",
    ),
    click.option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."),
    click.option(
        "--concurrency",
        type=click.IntRange(1, 1024),
        default=None,
        help="Calls in flight at once [default: 16 for endpoints, 1 for local models].",
    ),
    click.option(
        "--max-cost", type=float, help="Stop cleanly once the estimated cost reaches this many dollars."
    ),
    click.option(
        "--max-tokens", "max_run_tokens", type=int, help="Stop cleanly after this many tokens in the run."
    ),
    click.option("--limit", type=click.IntRange(1), help="Only the first N items not done yet (a pilot)."),
    click.option("--no-progress", is_flag=True, help="No live progress bar."),
]


def _with_model_options(fn: Callable) -> Callable:
    for option in reversed(_model_options):
        fn = option(fn)
    return fn


# Beyond one machine (batch.py, distributed.py): annotate and critique only.
_scale_options = [
    click.option(
        "--batch",
        is_flag=True,
        help="Send the calls through the provider's batch API (cheaper, slower); run again to collect.",
    ),
    click.option(
        "--wait", is_flag=True, help="With --batch: poll until the batch is done and finish the stage."
    ),
    click.option(
        "--engine",
        type=click.Choice(["async", "ray"]),
        default="async",
        show_default=True,
        help="ray: send the calls to Ray workers (RAY_ADDRESS or a local cluster).",
    ),
    click.option(
        "--workers", type=click.IntRange(1), default=None, help="Ray workers [default: cluster CPUs]."
    ),
]


# Options of the embedded (local/) models.
_local_model_options = [
    click.option(
        "--n-ctx",
        type=click.IntRange(256, 1 << 20),
        default=None,
        help="local/ models: context size in tokens [default: grows to fit the prompt].",
    ),
    click.option(
        "--threads",
        type=click.IntRange(1, 512),
        default=None,
        help="local/ models: CPU threads [default: $ACTLABEL_THREADS, else every core].",
    ),
]


def _with_local_model_options(fn: Callable) -> Callable:
    for option in reversed(_local_model_options):
        fn = option(fn)
    return fn


def _local_backend_options(opts: dict[str, Any]) -> dict[str, Any] | None:
    """Pop --n-ctx / --threads into backend constructor options (local models only)."""
    from actlabel.models.spec import ModelSpec

    n_ctx, threads = opts.pop("n_ctx", None), opts.pop("threads", None)
    model = opts.get("model") or "local/"
    if (n_ctx or threads) and not ModelSpec.parse(str(model)).can("embedded"):
        raise UserError("--n-ctx and --threads apply to local/ models only")
    out = {k: v for k, v in (("n_ctx", n_ctx), ("n_threads", threads)) if v is not None}
    return out or None


def _reasoning_tokens_option(default: int, help: str) -> Callable:
    """--reasoning-tokens: one reasoning step's budget (options.py), the same flag in both stages."""
    return click.option(
        "--reasoning-tokens", type=click.IntRange(16, 8192), default=default, show_default=True, help=help
    )


def _with_scale_options(fn: Callable) -> Callable:
    for option in reversed(_scale_options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_with_model_options
@_with_scale_options
@click.option(
    "--cot", is_flag=True, help="Let the annotator reason before answering (needed by the devil critic)."
)
@_reasoning_tokens_option(COT_REASONING_TOKENS, "With --cot: the most tokens of reasoning per item.")
@_with_local_model_options
@click.option(
    "--label-model",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Correct the model's label prior and pool it with a feature probe fitted on the examples "
    "(auto: on for local models).",
)
@click.option(
    "--refine",
    is_flag=True,
    help="Relabel every item with what the reviews taught (cross-fitted; no model calls).",
)
def annotate(directory: str, **opts: Any) -> None:
    """Stage 1: a model labels every item."""
    refine, progress = opts.pop("refine"), not opts.pop("no_progress")
    backend_options = _local_backend_options(opts)
    with _open(directory) as project:
        if refine:
            click.echo(str(project.refine(progress=progress)))
            return
        result = project.annotate(AnnotateOptions(progress=progress, backend_options=backend_options, **opts))
        click.echo(str(result))
        _report_failures(project, "annotations", result)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_with_model_options
@_with_scale_options
@click.option(
    "--strategy",
    default=None,
    help=strategy_help("per-label for multi-label tasks, consistency for embedded models, else cot"),
)
@_reasoning_tokens_option(
    CRITIC_REASONING_TOKENS, "The most tokens of reasoning per item (cot, devil, cot-logit, cot-ppl)."
)
@_with_local_model_options
def critique(directory: str, **opts: Any) -> None:
    """Stage 2: a critic estimates each machine label's probability of being wrong."""
    progress = not opts.pop("no_progress")
    backend_options = _local_backend_options(opts)
    with _open(directory) as project:
        result = project.critique(CritiqueOptions(progress=progress, backend_options=backend_options, **opts))
        click.echo(str(result))
        _report_failures(project, "critiques", result)


def _report_failures(project: Any, table: str, result: Any) -> None:
    """The most common reasons items failed in this run; a run where every item failed exits 1."""
    run_id, failed = getattr(result, "run_id", None), getattr(result, "failed", 0)
    if run_id is None or not failed:
        return
    reasons = project.failure_reasons(table, run_id)
    for count, reason in reasons:
        click.echo(f"  failed {count}x: {reason}", err=True)
    if not getattr(result, "done", 0):
        top = f"; most common: {reasons[0][1]}" if reasons else ""
        _fail(f"every item failed ({failed}){top}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(["isotonic", "platt"]), default="isotonic", show_default=True)
@click.option("--strategy", default=None, help="The critic to calibrate [default: the latest one run].")
def calibrate(directory: str, method: str, strategy: str | None) -> None:
    """Calibrate a critic's error probabilities on reviewed items (ECE before and after)."""
    with _open(directory) as project:
        click.echo(str(project.calibrate(method=method, strategy=strategy)))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--budget", required=True, help="Items to review: a count (500), a share (20%), or auto (pilot)."
)
@click.option(
    "--rule",
    type=click.Choice(RULES),
    default="threshold",
    show_default=True,
)
@click.option(
    "--uniform",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of the budget spread uniformly, so every item has review_prob > 0.",
)
@click.option("--beta", type=float, default=None, help="Steepness of the exponential rule.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--max-budget",
    default=None,
    help="With --budget auto: never more than this many reviews in all (a count or a percentage).",
)
@click.option(
    "--pilot-size",
    type=click.IntRange(1),
    default=None,
    help="With --budget auto: the uniform pilot's size [default: 5% of the items, 30 to 300].",
)
def select(directory: str, **opts: Any) -> None:
    """Stage 3: choose the items humans review, within a budget."""
    with _open(directory) as project:
        result = project.select(**opts)
    click.echo(str(result))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port."
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser window.")
@click.option("--terminal", is_flag=True, help="Review in the terminal instead of the browser.")
@click.option("--reviewer", default=None, help="Your name, recorded with each review.")
@click.option("--simulate", type=click.Choice(["gold"]), help="Answer selected items with the gold labels.")
@click.option(
    "--error-rate", type=click.FloatRange(0, 1), default=0.0, help="With --simulate: share of wrong answers."
)
@click.option("--seed", type=int, default=0)
def review(
    directory: str,
    host: str,
    port: int,
    no_browser: bool,
    terminal: bool,
    reviewer: str | None,
    simulate: str | None,
    error_rate: float,
    seed: int,
) -> None:
    """Stage 4: humans review the selected items (web app, terminal, or simulated)."""
    with _open(directory) as project:
        if simulate:
            click.echo(str(project.simulate_review(source=simulate, error_rate=error_rate, seed=seed)))
        elif terminal:
            project.review(terminal=True, reviewer=reviewer)
        else:
            project.review(host=host, port=port, open_browser=not no_browser, reviewer=reviewer)


@main.command("import-reviews")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(TOOL_FORMATS), required=True)
def import_reviews(directory: str, file: str, fmt: str) -> None:
    """Read human labels back from a Label Studio or Argilla export."""
    with _open(directory) as project:
        click.echo(str(project.import_reviews(file, fmt)))


@main.group(cls=_Group)
def serve() -> None:
    """Serve the project to other tools while they run."""


@serve.command("labelstudio")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=9090, show_default=True, help="0: any free port."
)
@click.option(
    "--secret",
    default=None,
    help="Shared secret for the webhook [default: $ACTLABEL_LABELSTUDIO_SECRET, else a fresh one, printed].",
)
def serve_labelstudio(directory: str, host: str, port: int, secret: str | None) -> None:
    """A Label Studio ML backend (machine label, critic, suspicious-first scores) and webhook receiver
    that records the answers given in Label Studio as reviews."""
    with _open(directory) as project:
        project.serve_labelstudio(host=host, port=port, secret=secret)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", help="Annotator model [default: the embedded model].")
@click.option("--critic-model", help="Critic model [default: see critique].")
@click.option("--base-url")
@click.option("--strategy", default="cot", show_default=True)
@click.option("--cot", is_flag=True)
def plan(directory: str, **opts: Any) -> None:
    """Dry run: one real prompt per stage, and calls, tokens and cost for the whole dataset."""
    with _open(directory) as project:
        click.echo(project.plan(**opts))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="[default: DIR/report.html]")
def report(directory: str, out: str | None) -> None:
    """Write a self-contained HTML report with plots."""
    with _open(directory) as project:
        path = project.report(out or str(Path(directory) / "report.html"))
    click.echo(f"wrote {path}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_with_model_options
@click.option("--critic-model", help="Critic model [default: the annotator's, or a second configured model].")
@click.option(
    "--strategy",
    default=None,
    help="Critic strategy [default: learned for embedded models (falls back to consistency), cot for endpoints].",
)
@click.option("--cot", is_flag=True)
@click.option(
    "--budget", default="auto", show_default=True, help="All reviews: a count, a share, or auto (pilot)."
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 50),
    default=None,
    help="Review rounds the budget is spent in (after the pilot with auto) [default: 2]; kept in the project.",
)
@click.option("--max-budget", default=None, help="With --budget auto: at most this many reviews in all.")
@click.option("--rule", type=click.Choice(RULES), default="threshold")
@click.option("--uniform", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0)
@_with_local_model_options
def run(directory: str, **opts: Any) -> None:
    """Annotate + critique + select in one go."""
    progress = not opts.pop("no_progress")
    backend_options = _local_backend_options(opts)
    options = RunOptions(progress=progress, backend_options=backend_options, **opts)
    with _open(directory) as project:
        click.echo(str(project.run(options)))


@main.command()
@click.option(
    "--dataset",
    type=click.Choice(["tweets", "reuters", "fashion", "fashion-captions"]),
    default="tweets",
    show_default=True,
)
@click.option("--size", type=click.IntRange(20), default=None, help="Items to label [default: per dataset].")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False), default="demo-project", show_default=True
)
@click.option(
    "--model", default=None, help="Annotator model [default: local/qwen2.5-0.5b, the faster embedded model]."
)
@click.option("--seed", type=int, default=0)
@click.option("--max-budget", default="20%", show_default=True, help="Most human reviews, pilot included.")
@click.option(
    "--llm-critic",
    default=None,
    help="Also criticize with the embedded LLM (e.g. logit, cot) before the learned critic.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=2,
    show_default=True,
    help="Review rounds after the pilot (the labels and the critic learn from each).",
)
@click.option(
    "--test-size", type=click.IntRange(20), default=None, help="Held-out test items [default: per dataset]."
)
@click.option("--no-progress", is_flag=True)
def demo(**opts: Any) -> None:
    """The whole pipeline on a real dataset with the embedded default model, offline."""
    from actlabel.demo import run_demo

    run_demo(progress=not opts.pop("no_progress"), **opts)


if __name__ == "__main__":
    main()
