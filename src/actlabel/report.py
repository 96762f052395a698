"""`actlabel report`: one self-contained HTML file describing a project, with plots.

Everything is embedded (PNG plots as base64 data URLs, CSS inline, no scripts, no remote
resources) so the file can be mailed, archived or opened offline.  The numbers come from the pure
functions of :mod:`actlabel.metrics` and :mod:`actlabel.residual`; this module only gathers arrays
from the store, calls them, and lays the results out.  Every string that comes from data (labels,
item text, rationales, reviewer and model names) goes through :func:`html.escape`.

Sections: overview, label distribution, annotator accuracy, critic, budget curve, residual errors,
reviewers, downstream.  Those that need gold labels say so when the project has none, and fall
back to human reviews where that is meaningful.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from actlabel import metrics
from actlabel.residual import estimate_for_store
from actlabel.store import Store

# Colours shared by every plot, so "machine" / "final" / "gold" read the same everywhere.
MACHINE_COLOUR = "#4c72b0"
FINAL_COLOUR = "#55a868"
GOLD_COLOUR = "#c44e52"
RANDOM_COLOUR = "#8c8c8c"
ORACLE_COLOUR = "#dd8452"

#: plots with more classes than this show only the most frequent ones (and say so)
MAX_BAR_CLASSES = 30
#: longer per-class tables fold into a <details> element so they do not bury the next section
MAX_INLINE_ROWS = 12
MAX_HEATMAP_CLASSES = 20
#: number of suspicious unreviewed items listed, and characters of their text shown
SUSPICIOUS_ROWS = 10
SNIPPET_CHARS = 240
N_BUDGET_POINTS = 101
N_CALIBRATION_BINS = 10

esc = html.escape
#: text properties for strings from data drawn in plots: a label such as "$5 or $10" must show as
#: typed, not be parsed as TeX math (which garbles it, or fails outright on unknown commands)
DATA_TEXT: dict[str, Any] = {"parse_math": False}


# ----------------------------------------------------------------------------------------------
# gathering the data


@dataclass(frozen=True)
class _Data:
    """Current state of every item as integer label codes (-1 = none), for vectorised metrics."""

    names: list[str]  # task labels, then any label seen in the data but not in the task
    n_task_labels: int
    rowids: np.ndarray
    item_ids: list[str]
    gold: np.ndarray  # int codes
    machine: np.ndarray  # int codes; -1 unless the latest annotation succeeded
    annotation_failed: np.ndarray  # bool
    error_prob: np.ndarray  # float, NaN where no critique
    proposed: np.ndarray  # int codes
    rationale: list[str | None]
    selected: np.ndarray  # bool
    review_prob: np.ndarray  # float, NaN where never selected
    human: np.ndarray  # int codes
    reviewer: list[str | None]

    @property
    def n(self) -> int:
        return int(self.rowids.size)

    @property
    def reviewed(self) -> np.ndarray:
        return self.human >= 0

    @property
    def final(self) -> np.ndarray:
        """The label a user exports: the human label where reviewed, else the machine label."""
        return np.where(self.reviewed, self.human, self.machine)


def _load(store: Store) -> _Data:
    """One pass over `store.iter_current()`.

    `selection.current_state` holds a subset of these columns; reading everything here once keeps
    the report to a single scan of the store on large projects (gold, proposals and reviewers are
    needed too).  Machine labels count only when the latest annotation succeeded, as there.
    """
    cols = {name: i for i, name in enumerate(store.CURRENT_COLUMNS)}
    parts: dict[str, list[Any]] = {
        k: []
        for k in (
            "rowid",
            "item_id",
            "gold_label",
            "machine_label",
            "annotation_status",
            "error_prob",
            "proposed_label",
            "critic_rationale",
            "selected",
            "review_prob",
            "human_label",
            "reviewer",
        )
    }
    for rows in store.iter_current():
        columns = list(zip(*rows, strict=True))
        for key, values in parts.items():
            values.extend(columns[cols[key]])
    status = parts["annotation_status"]
    machine_raw = [m if s == "ok" else None for m, s in zip(parts["machine_label"], status, strict=True)]

    names = list(store.task.label_names)
    index = {name: i for i, name in enumerate(names)}
    n_task = len(names)
    # A label outside the task (e.g. the task was edited after annotating) still gets counted.
    for column in (parts["gold_label"], machine_raw, parts["proposed_label"], parts["human_label"]):
        for value in sorted(set(column) - index.keys() - {None}):
            index[value] = len(names)
            names.append(value)

    def codes(values: list[str | None]) -> np.ndarray:
        return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))

    def floats(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    return _Data(
        names=names,
        n_task_labels=n_task,
        rowids=np.array(parts["rowid"], dtype=np.int64),
        item_ids=parts["item_id"],
        gold=codes(parts["gold_label"]),
        machine=codes(machine_raw),
        annotation_failed=np.array([s == "failed" for s in status], dtype=bool),
        error_prob=floats(parts["error_prob"]),
        proposed=codes(parts["proposed_label"]),
        rationale=parts["critic_rationale"],
        selected=np.array([bool(s) for s in parts["selected"]], dtype=bool),
        review_prob=floats(parts["review_prob"]),
        human=codes(parts["human_label"]),
        reviewer=parts["reviewer"],
    )


def _latest_critiques_by_strategy(store: Store, data: _Data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """strategy -> (item indexes, error_prob) from the latest critique with an error_prob, per strategy and item.

    Empty unless the store holds two strategies or more: the common single-strategy project then
    skips the grouped scan of the whole critiques table.
    """
    strategies = [r[0] for r in store.distinct("critiques", "strategy")]
    if len(strategies) < 2 or data.n == 0:
        return {}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for strategy in strategies:
        latest = store.latest(
            "critiques", ("error_prob",), "strategy = ? AND error_prob IS NOT NULL", (strategy,)
        )
        rowids = np.fromiter(latest.keys(), dtype=np.int64, count=len(latest))
        probs = np.fromiter((v[0] for v in latest.values()), dtype=float, count=len(latest))
        # iter_current orders items by rowid, so a sorted search maps rowids to item indexes.
        pos = np.minimum(np.searchsorted(data.rowids, rowids), data.n - 1)
        found = data.rowids[pos] == rowids
        out[str(strategy)] = (pos[found], probs[found])
    return out


# ----------------------------------------------------------------------------------------------
# formatting helpers


def _pct(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.{digits}f}%"


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _int(x: float) -> str:
    return f"{int(x):,}"


def _short(label: str, width: int = 18) -> str:
    """Plot tick labels: long class names would swallow the axes."""
    return label if len(label) <= width else label[: width - 1] + "…"


def _escaped(value: Any) -> Any:
    """Every value the templates print, escaped as html.escape does (&quot; and &#x27;, where
    markupsafe writes &#34; and &#39;): the same bytes the report always had. Markup passes as is."""
    return value if hasattr(value, "__html__") else Markup(esc(str(value)))


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("actlabel", "templates"),
        autoescape=True,
        finalize=_escaped,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


@functools.cache
def _parts() -> Any:
    """The macros of templates/report_parts.html."""
    return _templates().get_template("report_parts.html").module


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; every cell is escaped (callers pass plain text, never markup)."""
    return str(_parts().table(list(headers), [list(r) for r in rows], set(numeric), row_classes))


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column key/value table for headline numbers (values are already-escaped markup)."""
    return str(_parts().kv([(k, Markup(v)) for k, v in pairs]))


def _note(text: str, kind: str = "note") -> str:
    """A callout; `text` is markup (callers escape the data inside it)."""
    return str(_parts().note(Markup(text), kind))


def _caption(text: str) -> str:
    """A caption under a table or plot; `text` is plain text."""
    return str(_parts().caption(text))


def _needs_gold(what: str) -> str:
    return _note(
        f"<strong>Needs gold labels.</strong> {what} Gold labels come in with "
        "<code>actlabel import DIR FILE --gold COL</code>."
    )


def _png(fig: Figure, alt: str) -> str:
    """Embed a figure as a base64 PNG: the report stays one file with no external requests."""
    buf = io.BytesIO()
    # Software metadata would carry matplotlib's URL into the file; it says nothing useful here.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return str(_parts().figure(alt, data))


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    # Figure() without pyplot: no global state, no GUI backend, safe in threads and servers.
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _style(ax: Any) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


# ----------------------------------------------------------------------------------------------
# plots


def _label_bars(names: list[str], series: list[tuple[str, np.ndarray, str]]) -> str:
    """Grouped bars of label counts; `series` is (legend, counts per class, colour)."""
    total = np.sum([counts for _, counts, _ in series], axis=0)
    order = np.argsort(-total, kind="stable")
    if order.size > MAX_BAR_CLASSES:
        order = order[:MAX_BAR_CLASSES]
    k, m = order.size, len(series)
    fig, ax = _figure(min(10.0, 3.0 + 0.3 * k * m), 3.0)
    width = 0.8 / m
    x = np.arange(k)
    for j, (legend, counts, colour) in enumerate(series):
        ax.bar(x + (j - (m - 1) / 2) * width, counts[order], width, label=legend, color=colour)
    ax.set_xticks(
        x,
        [_short(names[i]) for i in order],
        rotation=30 if k > 6 else 0,
        ha="right" if k > 6 else "center",
        **DATA_TEXT,
    )
    ax.set_ylabel("items")
    # Above the axes: inside, the legend would hide the tallest bars.
    ax.legend(frameon=False, ncols=m, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    _style(ax)
    return _png(fig, "label distribution")


def _confusion_heatmap(
    names: list[str], reference: np.ndarray, predicted: np.ndarray, ref_name: str, pred_name: str
) -> tuple[str, str]:
    """Row-normalised confusion matrix (reference rows x predicted columns), as PNG markup and a caption."""
    k = len(names)
    support = np.bincount(reference, minlength=k)
    caption = ""
    if k > MAX_HEATMAP_CLASSES:
        # Too many classes to read: keep the most frequent and pool the rest into "(other)".
        top = np.sort(np.argsort(-support, kind="stable")[: MAX_HEATMAP_CLASSES - 1])
        remap = np.full(k, top.size, dtype=np.int64)
        remap[top] = np.arange(top.size)
        reference, predicted = remap[reference], remap[predicted]
        shown = [names[i] for i in top] + ["(other)"]
        caption = f"The {top.size} most frequent classes; the other {k - top.size} are pooled as (other). "
    else:
        shown = list(names)
    s = len(shown)
    matrix = np.bincount(reference * s + predicted, minlength=s * s).reshape(s, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = matrix / matrix.sum(axis=1, keepdims=True)
    share = np.nan_to_num(share)
    size = min(7.0, 2.6 + 0.25 * s)
    fig, ax = _figure(size + 1.6, size)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = [_short(n, 14) for n in shown]
    ax.set_xticks(
        np.arange(s), ticks, rotation=45 if s > 4 else 0, ha="right" if s > 4 else "center", **DATA_TEXT
    )
    ax.set_yticks(np.arange(s), ticks, **DATA_TEXT)
    ax.set_xlabel(pred_name)
    ax.set_ylabel(ref_name)
    if s <= 12:
        for i in range(s):
            for j in range(s):
                if matrix[i, j]:
                    colour = "white" if share[i, j] > 0.55 else "#222222"
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"share of the {ref_name} row")
    caption += f"Cells count items; colour is the share of each {ref_name} row."
    return _png(fig, "confusion matrix"), caption


def _reliability_plot(rd: metrics.ReliabilityDiagram, error_prob: np.ndarray, is_error: np.ndarray) -> str:
    fig, (ax, hist) = _figure(10.0, 3.8, ncols=2)
    full = rd.weights > 0
    width = float(rd.bin_edges[1] - rd.bin_edges[0]) * 0.9
    ax.bar(
        rd.bin_centers[full],
        rd.observed_frequency[full],
        width,
        color=MACHINE_COLOUR,
        alpha=0.8,
        label="observed error rate",
    )
    ax.plot([0, 1], [0, 1], "--", color=RANDOM_COLOUR, linewidth=1, label="perfect calibration")
    ax.plot(
        rd.mean_predicted[full],
        rd.observed_frequency[full],
        "o",
        color=GOLD_COLOUR,
        markersize=4,
        label="bin mean error_prob",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("critic error_prob")
    ax.set_ylabel("share of machine labels wrong")
    ax.set_title("Reliability diagram", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    _style(ax)
    bins = np.linspace(0, 1, 21)
    hist.hist(
        [error_prob[~is_error], error_prob[is_error]],
        bins=bins,
        stacked=True,
        color=[FINAL_COLOUR, GOLD_COLOUR],
        label=["machine label right", "machine label wrong"],
    )
    hist.set_xlim(0, 1)
    hist.set_xlabel("critic error_prob")
    hist.set_ylabel("items")
    hist.set_title("Where right and wrong labels fall", fontsize=10)
    hist.legend(frameon=False, fontsize=8)
    _style(hist)
    return _png(fig, "reliability diagram")


def _budget_plot(
    share: np.ndarray,
    curves: list[tuple[str, np.ndarray, str, str]],
    actual_share: float | None,
    actual_accuracy: float | None,
) -> str:
    fig, ax = _figure(8.0, 4.2)
    for legend, accuracy, colour, style in curves:
        ax.plot(100 * share, 100 * accuracy, style, color=colour, linewidth=1.8, label=legend)
    if actual_share is not None:
        ax.axvline(100 * actual_share, color="#444444", linewidth=1, linestyle=":")
        if actual_accuracy is not None:
            ax.plot(
                [100 * actual_share],
                [100 * actual_accuracy],
                "*",
                color="#222222",
                markersize=11,
                label=f"actual reviews ({_pct(actual_share)} of items)",
            )
    ax.set_xlim(0, 100)
    ax.set_xlabel("human review budget (% of items)")
    ax.set_ylabel("final label accuracy (%)")
    ax.legend(frameon=False, loc="lower right")
    _style(ax)
    return _png(fig, "budget curve")


# ----------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class _Truth:
    """What the critic and annotator are judged against: gold where imported, else human reviews."""

    mask: np.ndarray  # items with a machine label and a reference label
    labels: np.ndarray  # reference label codes (valid where mask)
    name: str  # "gold" or "human review"
    is_gold: bool


def _truth(data: _Data) -> _Truth | None:
    has_machine = data.machine >= 0
    gold_mask = has_machine & (data.gold >= 0)
    if gold_mask.any():
        return _Truth(gold_mask, data.gold, "gold", True)
    human_mask = has_machine & data.reviewed
    if human_mask.any():
        return _Truth(human_mask, data.human, "human review", False)
    return None


def _overview(store: Store, data: _Data) -> str:
    n = data.n
    annotated = int((data.machine >= 0).sum())
    failed = int(data.annotation_failed.sum())
    critiqued = int(np.isfinite(data.error_prob).sum())
    selected = int(data.selected.sum())
    reviewed = int(data.reviewed.sum())
    pending = int((data.selected & ~data.reviewed).sum())
    gold = int((data.gold >= 0).sum())
    rounds = store.last_round()

    stages = _parts().stages(
        [
            ("import", n > 0, f"{_int(n)} items"),
            (
                "annotate",
                n > 0 and annotated == n,
                f"{_int(annotated)} of {_int(n)}" + (f", {_int(failed)} failed" if failed else ""),
            ),
            ("critique", annotated > 0 and critiqued >= annotated, f"{_int(critiqued)} items"),
            ("select", rounds > 0, f"{_int(selected)} selected, {rounds} round{'s' * (rounds != 1)}"),
            ("review", selected > 0 and pending == 0, f"{_int(reviewed)} reviewed"),
        ]
    )
    labels = data.names[: data.n_task_labels]
    headline = _kv(
        [
            ("items", _int(n)),
            (
                "labels",
                f"{len(labels)}: "
                + str(_parts().codes(labels[:40]))
                + (f" and {len(labels) - 40} more" if len(labels) > 40 else ""),
            ),
            ("gold labels", f"{_int(gold)} items" if gold else "none imported"),
            ("selected for review", f"{_int(selected)} ({_pct(selected / n if n else math.nan)} of items)"),
            ("reviewed by humans", _int(reviewed)),
            ("selected but not reviewed", _int(pending)),
        ]
    )
    out = [str(stages), headline]
    if pending:
        out.append(
            _note(
                f"<strong>Selected but not reviewed: {_int(pending)} item{'s' * (pending != 1)}.</strong> "
                "The ACT loss needs every selected item reviewed: it and the "
                "residual-error estimate treat them as unreviewed, which biases both unless skipping is "
                f"unrelated to the label being wrong: review them (<code>actlabel review "
                f"{esc(str(store.root))}</code>) before training.",
                "warn",
            )
        )
    out.append("<h3>Model usage</h3>")
    out.append(_usage_table(store))
    return "".join(out)


def _usage_table(store: Store) -> str:
    runs = store.runs()
    if not runs:
        return "<p>No runs recorded yet.</p>"
    fields = ("calls", "cache_hits", "failures", "input_tokens", "output_tokens", "cost")
    by_stage: dict[str, dict[str, float]] = {}
    for run in runs:
        acc = by_stage.setdefault(run["stage"], {"runs": 0.0} | {f: 0.0 for f in fields})
        acc["runs"] += 1
        for f in fields:
            acc[f] += float(run[f] or 0)
    total = {k: sum(s[k] for s in by_stage.values()) for k in ("runs", *fields)}
    models = {
        "annotate": [r[0] for r in store.distinct("annotations", "model")],
        "critique": [f"{m} ({s})" for m, s in store.distinct("critiques", "model, strategy")],
    }

    def row(name: str, s: dict[str, float]) -> list[str]:
        return [
            name,
            ", ".join(models.get(name, [])),
            _int(s["runs"]),
            _int(s["calls"]),
            _int(s["cache_hits"]),
            _int(s["failures"]),
            _int(s["input_tokens"]),
            _int(s["output_tokens"]),
            f"${s['cost']:,.4f}",
        ]

    rows = [row(name, s) for name, s in by_stage.items()] + [row("total", total)]
    return _table(
        [
            "stage",
            "models",
            "runs",
            "calls",
            "cache hits",
            "failures",
            "input tokens",
            "output tokens",
            "cost",
        ],
        rows,
        numeric=range(2, 9),
        row_classes=[""] * len(by_stage) + ["total"],
    )


def _distribution(data: _Data) -> str:
    if data.n == 0:
        return "<p>No items yet.</p>"
    k = len(data.names)

    def counts(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes[codes >= 0], minlength=k)

    series = [("machine", counts(data.machine), MACHINE_COLOUR), ("final", counts(data.final), FINAL_COLOUR)]
    has_gold = bool((data.gold >= 0).any())
    if has_gold:
        series.append(("gold", counts(data.gold), GOLD_COLOUR))
    if not any(c.sum() for _, c, _ in series):
        return "<p>No labels yet: run <code>actlabel annotate</code>.</p>"
    out = [_label_bars(data.names, series)]
    if k > MAX_BAR_CLASSES:
        out.append(f'<p class="caption">The {MAX_BAR_CLASSES} most frequent of {k} classes.</p>')
    out.append(
        '<p class="caption">Final label = the human label where reviewed, else the machine label.'
        + ("" if has_gold else " No gold labels imported.")
        + "</p>"
    )
    order = np.argsort(-np.sum([c for _, c, _ in series], axis=0), kind="stable")
    rows = [[data.names[i], *(_int(c[i]) for _, c, _ in series)] for i in order]
    table = _table(["label", *(s[0] for s in series)], rows, numeric=range(1, len(series) + 1))
    out.append(
        table
        if k <= MAX_INLINE_ROWS
        else f"<details><summary>counts for all {k} classes</summary>{table}</details>"
    )
    return "".join(out)


def _per_class_table(data: _Data, mask: np.ndarray, reference: np.ndarray, final: bool) -> str:
    k = len(data.names)
    ref, mac = reference[mask], data.machine[mask]
    support = np.bincount(ref, minlength=k)
    predicted = np.bincount(mac, minlength=k)
    hits = np.bincount(ref[ref == mac], minlength=k)
    fin = data.final[mask]
    final_hits = np.bincount(ref[ref == fin], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision, final_recall = hits / support, hits / predicted, final_hits / support
    order = np.argsort(-support, kind="stable")
    order = order[(support[order] > 0) | (predicted[order] > 0)]
    headers = ["class", "items", "machine recall", "machine precision"] + (["final recall"] if final else [])
    rows = [
        [data.names[i], _int(support[i]), _pct(recall[i]), _pct(precision[i])]
        + ([_pct(final_recall[i])] if final else [])
        for i in order
    ]
    table = _table(headers, rows, numeric=range(1, len(headers)))
    return (
        table
        if len(rows) <= MAX_INLINE_ROWS
        else f"<details><summary>recall and precision for all {len(rows)} classes</summary>{table}</details>"
    )


def _accuracy(data: _Data) -> str:
    has_machine = data.machine >= 0
    gold_mask = has_machine & (data.gold >= 0)
    if gold_mask.any():
        m = int(gold_mask.sum())
        machine_acc = float((data.machine[gold_mask] == data.gold[gold_mask]).mean())
        final_acc = float((data.final[gold_mask] == data.gold[gold_mask]).mean())
        out = [
            _kv(
                [
                    ("machine label accuracy", f'<span id="machine-accuracy">{_pct(machine_acc)}</span>'),
                    ("final label accuracy", f'<span id="final-accuracy">{_pct(final_acc)}</span>'),
                    ("measured on", f"{_int(m)} items with a machine label and a gold label"),
                ]
            )
        ]
        img, caption = _confusion_heatmap(
            data.names, data.gold[gold_mask], data.machine[gold_mask], "gold", "machine"
        )
        out += [
            img,
            _caption(caption),
            _per_class_table(data, gold_mask, data.gold, True),
        ]
        return "".join(out)

    out = [_needs_gold("Annotator accuracy is measured against gold labels.")]
    rev = has_machine & data.reviewed
    if not rev.any():
        out.append(
            "<p>No human reviews yet either, so there is nothing to compare the machine labels with.</p>"
        )
        return "".join(out)
    agree = float((data.machine[rev] == data.human[rev]).mean())
    out.append(
        "<h3>Agreement with human reviews</h3>"
        + _kv(
            [
                (
                    "machine label confirmed by the reviewer",
                    f'<span id="human-agreement">{_pct(agree)}</span>',
                ),
                ("reviewed items", _int(rev.sum())),
            ]
        )
        + _note(
            "Reviewed items were mostly chosen because the critic suspected them, so this agreement "
            "understates the accuracy on the whole dataset."
        )
    )
    img, caption = _confusion_heatmap(data.names, data.human[rev], data.machine[rev], "human", "machine")
    out += [img, _caption(caption), _per_class_table(data, rev, data.human, False)]
    return "".join(out)


def _critic(store: Store, data: _Data, truth: _Truth | None) -> str:
    if not np.isfinite(data.error_prob).any():
        return "<p>No critiques yet: run <code>actlabel critique</code>.</p>"
    if truth is None:
        return _needs_gold(
            "Error detection is measured against gold labels, or against human reviews once there are some."
        )
    mask = truth.mask & np.isfinite(data.error_prob)
    if not mask.any():
        return "<p>No item has both a critique and a reference label yet.</p>"
    e = np.clip(data.error_prob[mask], 0.0, 1.0)
    is_error = data.machine[mask] != truth.labels[mask]
    auroc = metrics.error_detection_auroc(e, is_error)
    out: list[str] = []
    if truth.is_gold:
        basis = f"against gold labels (machine label != gold) on {_int(mask.sum())} items"
        weights = None
        calibration_basis = "on the same items"
    else:
        out.append(_needs_gold("Without them the critic is judged against human reviews."))
        basis = (
            f"against human reviews (machine label != human label) on {_int(mask.sum())} reviewed items; "
            "these were mostly chosen by the critic itself, so this is a rough guide only"
        )
        # Weighting reviewed items by 1 / review_prob estimates the whole population's calibration
        # from the design (exact where pi > 0 for every item, e.g. with a uniform share).
        pi = data.review_prob[mask]
        weights = np.where(np.isfinite(pi) & (pi > 0), 1.0 / np.where(pi > 0, pi, 1.0), 1.0)
        calibration_basis = "on reviewed items weighted by 1 / review_prob"
    rd = metrics.reliability_diagram(e, is_error, N_CALIBRATION_BINS, sample_weight=weights)
    ece = metrics.expected_calibration_error(e, is_error, N_CALIBRATION_BINS, sample_weight=weights)
    out.append(
        _kv(
            [
                ("error-detection AUROC", f'<span id="critic-auroc">{_num(auroc)}</span>'),
                ("measured", esc(basis)),
                ("machine labels wrong", f"{_int(is_error.sum())} of {_int(is_error.size)}"),
                (
                    "expected calibration error (ECE)",
                    f'<span id="critic-ece">{_num(ece)}</span> ({esc(calibration_basis)})',
                ),
            ]
        )
    )
    if not math.isfinite(auroc):
        out.append(_note("AUROC needs both right and wrong machine labels among these items."))
    out.append(
        '<p class="caption">AUROC: the chance that a wrong machine label gets a higher error_prob than a right '
        "one (0.5 = no better than chance, 1 = perfect ranking). ECE: the average gap between error_prob and "
        "the observed error rate, over 10 equal-width bins.</p>"
    )
    out.append(_reliability_plot(rd, e, is_error))
    out.append(_strategy_table(store, data, truth))
    return "".join(out)


def _strategy_table(store: Store, data: _Data, truth: _Truth) -> str:
    strategies = _latest_critiques_by_strategy(store, data)
    if len(strategies) < 2:
        return ""
    rows = []
    for name, (idx, probs) in strategies.items():
        keep = truth.mask[idx]
        idx, probs = idx[keep], np.clip(probs[keep], 0.0, 1.0)
        if idx.size == 0:
            rows.append([name, "0", "n/a", "n/a"])
            continue
        wrong = data.machine[idx] != truth.labels[idx]
        rows.append(
            [
                name,
                _int(idx.size),
                _num(metrics.error_detection_auroc(probs, wrong)),
                _num(metrics.expected_calibration_error(probs, wrong, N_CALIBRATION_BINS)),
            ]
        )
    return (
        "<h3>Critique strategies</h3>"
        + _table(["strategy", "items", "AUROC", "ECE"], rows, numeric=(1, 2, 3))
        + f'<p class="caption">The latest critique of each strategy per item, against {esc(truth.name)} labels '
        "and the current machine label. The selection uses each item's latest critique of any strategy.</p>"
    )


def _budget(data: _Data) -> str:
    mask = (data.machine >= 0) & (data.gold >= 0) & np.isfinite(data.error_prob)
    if not (data.gold >= 0).any():
        return _needs_gold(
            "The budget curve compares final label accuracy under critic, random and oracle review orders, "
            "which needs the true label of every item."
        )
    if not mask.any():
        return "<p>No item has a machine label, a critique and a gold label yet.</p>"
    n = int(mask.sum())
    e = np.clip(data.error_prob[mask], 0.0, 1.0)
    machine_correct = data.machine[mask] == data.gold[mask]
    is_error = ~machine_correct
    budgets = np.unique(np.round(np.linspace(0, n, N_BUDGET_POINTS)).astype(int))
    critic = metrics.budget_curve(e, is_error, budgets)
    random = metrics.random_budget_curve(is_error, budgets)
    oracle = metrics.oracle_budget_curve(is_error, budgets)

    reviewed = data.reviewed[mask]
    human_correct = np.where(reviewed, data.human[mask] == data.gold[mask], True)
    budget = int(reviewed.sum())
    gain = metrics.annotation_quality_gain(machine_correct, reviewed, human_correct)
    # Errors fixed by the actual reviews: wrong machine labels a reviewer replaced with the gold label.
    fixed = gain.errors_fixed
    saving = metrics.annotation_budget_saving(fixed, budget, gain.n_errors, n) if budget else math.nan
    at = np.array([budget])
    ranked_at = metrics.budget_curve(e, is_error, at).accuracy[0]
    random_at = metrics.random_budget_curve(is_error, at).accuracy[0]
    oracle_at = metrics.oracle_budget_curve(is_error, at).accuracy[0]

    plot = _budget_plot(
        budgets / n,
        [
            ("rank by critic error_prob", critic.accuracy, MACHINE_COLOUR, "-"),
            ("random review (expected)", random.accuracy, RANDOM_COLOUR, "--"),
            ("oracle (perfect critic)", oracle.accuracy, ORACLE_COLOUR, ":"),
        ],
        budget / n if budget else None,
        gain.final_accuracy if budget else None,
    )
    table = _kv(
        [
            ("items (with machine label, critique and gold)", _int(n)),
            ("machine errors", f"{_int(gain.n_errors)} ({_pct(gain.n_errors / n)})"),
            ("actual budget: items reviewed", f"{_int(budget)} ({_pct(budget / n)} of items)"),
            ("errors fixed by the reviews", _int(fixed)),
            ("errors introduced by the reviews", _int(gain.errors_introduced)),
            ("final accuracy with the actual reviews", _pct(gain.final_accuracy)),
            ("annotation quality gain AQG", f'<span id="aqg">{_pct(gain.aqg, 2)}</span> points'),
            ("efficiency (fixed / min(budget, errors))", _pct(gain.efficiency)),
            ("annotation budget saving ABS", f'<span id="abs">{_pct(saving)}</span>'),
            (
                "at this budget: critic ranking / random / oracle",
                f"{_pct(ranked_at)} / {_pct(random_at)} / {_pct(oracle_at)}",
            ),
        ]
    )
    return (
        plot
        + '<p class="caption">Accuracy of the final labels after reviewing the first B items of each order '
        "(reviewers assumed right). The dotted line and star mark the reviews actually done.</p>"
        + table
        + '<p class="caption">ABS = 1 - B / B<sub>random</sub>: the share of the budget saved against random '
        "review fixing as many errors (n/a when no error was fixed).</p>"
    )


def _residual(store: Store, data: _Data) -> str:
    estimate = estimate_for_store(store)
    out: list[str] = []
    if estimate is None:
        out.append(
            "<p>No selection yet: the estimate needs a selection round (<code>actlabel select</code>).</p>"
        )
    elif not estimate.identifiable:
        out.append(_note(f"<strong>Not identifiable.</strong> {esc(estimate.note)}", "warn"))
        out.append(
            _kv(
                [
                    ("unreviewed items", _int(estimate.n_unreviewed)),
                    ("errors found by reviewers", _int(estimate.errors_found)),
                    (
                        "sum of error_prob over unreviewed items",
                        f"{estimate.model_estimate:,.1f} (right only if the critic is calibrated)",
                    ),
                ]
            )
        )
    else:
        pairs = [
            (
                "wrong labels left among unreviewed items",
                f'<span id="residual-estimate">{estimate.estimate:,.1f}</span> '
                f"({_pct(estimate.rate)} of {_int(estimate.n_unreviewed)} unreviewed)",
            ),
            (
                f"{_pct(estimate.confidence, 0)} confidence interval",
                f"{estimate.lower:,.1f} to {estimate.upper:,.1f}",
            ),
            ("errors found by reviewers", _int(estimate.errors_found)),
            ("estimated machine errors in all", f"{estimate.total_errors_estimate:,.1f}"),
            (
                "sum of error_prob over unreviewed items",
                f"{estimate.model_estimate:,.1f} (right only if the critic is calibrated)",
            ),
        ]
        unreviewed_gold = (data.machine >= 0) & ~data.reviewed & (data.gold >= 0)
        if unreviewed_gold.any():
            actual = int((data.machine[unreviewed_gold] != data.gold[unreviewed_gold]).sum())
            pairs.append(
                (
                    "actual, from gold",
                    f"{_int(actual)} on {_int(unreviewed_gold.sum())} unreviewed items with gold",
                )
            )
        out.append(_kv(pairs))
        if estimate.note:
            out.append(_note(esc(estimate.note)))
        out.append(
            '<p class="caption">Prediction-powered estimate: critic error_prob corrected by the reviews, each '
            "weighted by 1 / review_prob; unbiased whatever the selection rule as long as every item could have "
            "been reviewed.</p>"
        )
    out.append(_suspicious(store, data))
    return "".join(out)


def _suspicious(store: Store, data: _Data) -> str:
    """The unreviewed items the critic distrusts most: where a little more review would pay first."""
    candidates = np.flatnonzero((data.machine >= 0) & ~data.reviewed & np.isfinite(data.error_prob))
    if candidates.size == 0:
        return ""
    top = candidates[np.argsort(-data.error_prob[candidates], kind="stable")[:SUSPICIOUS_ROWS]]
    texts = {item.rowid: item.text for item in store.iter_items([int(r) for r in data.rowids[top]])}
    has_gold = bool((data.gold[top] >= 0).any())

    def name(code: int) -> str:
        return data.names[code] if code >= 0 else ""

    rows, classes = [], []
    for i in top:
        # Rows whose machine label gold shows to be wrong are tinted: the critic was right there.
        classes.append("wrong" if data.gold[i] >= 0 and data.gold[i] != data.machine[i] else "")
        text = texts.get(int(data.rowids[i]), "")
        if len(text) > SNIPPET_CHARS:
            text = text[: SNIPPET_CHARS - 1] + "…"
        row = [
            data.item_ids[i],
            text,
            name(int(data.machine[i])),
            name(int(data.proposed[i])),
            _num(float(data.error_prob[i]), 2),
            data.rationale[i] or "",
        ]
        if has_gold:
            row.append(name(int(data.gold[i])))
        rows.append(row)
    headers = ["item", "text", "machine", "critic proposes", "error_prob", "critic rationale"]
    headers += ["gold"] if has_gold else []
    return (
        "<h3>Most suspicious unreviewed items</h3><div class=scroll>"
        + _table(headers, rows, numeric=(4,), row_classes=classes)
        + "</div>"
        + (
            '<p class="caption">Tinted rows: the gold label shows the machine label is wrong.</p>'
            if has_gold
            else ""
        )
    )


def _reviewers(store: Store, data: _Data) -> str:
    rev = data.reviewed
    if not rev.any():
        return "<p>No human reviews yet: run <code>actlabel review</code>.</p>"
    with_machine = rev & (data.machine >= 0)
    with_proposal = rev & (data.proposed >= 0)
    disagree = with_machine & with_proposal & (data.proposed != data.machine)
    pairs = [
        ("reviewed items", _int(rev.sum())),
        (
            "reviewer kept the machine label",
            _pct(
                float((data.human[with_machine] == data.machine[with_machine]).mean())
                if with_machine.any()
                else math.nan
            ),
        ),
        (
            "reviewer chose the critic's proposed label",
            _pct(
                float((data.human[with_proposal] == data.proposed[with_proposal]).mean())
                if with_proposal.any()
                else math.nan
            ),
        ),
    ]
    if disagree.any():
        h, m, p = data.human[disagree], data.machine[disagree], data.proposed[disagree]
        pairs.append(
            (
                "where the critic proposed another label",
                f"{_int(disagree.sum())} items: reviewer sided with the critic {_pct(float((h == p).mean()))}, "
                f"with the machine {_pct(float((h == m).mean()))}, with neither {_pct(float(((h != p) & (h != m)).mean()))}",
            )
        )
    out = [_kv(pairs)]

    # Per reviewer: agreement on the items whose current (latest) review is theirs.
    names = np.array([r or "" for r in data.reviewer], dtype=object)[rev]
    who, inverse = np.unique(names, return_inverse=True)
    count = np.bincount(inverse, minlength=who.size)

    def share(hit: np.ndarray, valid: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(
                inverse, weights=(hit & valid).astype(float), minlength=who.size
            ) / np.bincount(inverse, weights=valid.astype(float), minlength=who.size)

    human, machine, proposed, gold = data.human[rev], data.machine[rev], data.proposed[rev], data.gold[rev]
    agree_machine = share(human == machine, machine >= 0)
    agree_critic = share(human == proposed, proposed >= 0)
    has_gold = bool((gold >= 0).any())
    agree_gold = share(human == gold, gold >= 0)
    totals = {reviewer: (n, sources, duration) for reviewer, n, sources, duration in store.reviewer_totals()}
    rows = []
    for j, reviewer in enumerate(who.tolist()):
        n_all, sources, duration = totals.get(reviewer, (0, "", None))
        row = [
            reviewer,
            sources or "",
            _int(count[j]),
            _int(n_all),
            "n/a" if duration is None else f"{duration / 1000:.1f} s",
            _pct(agree_machine[j]),
            _pct(agree_critic[j]),
        ]
        if has_gold:
            row.append(_pct(agree_gold[j]))
        rows.append(row)
    headers = [
        "reviewer",
        "source",
        "current labels",
        "reviews submitted",
        "mean time",
        "kept machine",
        "chose critic's",
    ]
    headers += ["agrees with gold"] if has_gold else []
    out.append(_table(headers, rows, numeric=range(2, len(headers))))
    out.append(
        '<p class="caption">"current labels": items whose latest review is theirs; "reviews submitted" counts '
        "every review, including ones later replaced.</p>"
    )
    return "".join(out)


def _format_cell(key: str, value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        lowered = key.lower()
        # The demo writes accuracies and budget shares as fractions: show them as percentages.
        if 0.0 <= value <= 1.0 and any(w in lowered for w in ("accuracy", "share", "budget", "rate")):
            return _pct(value, 2)
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value)
    return "" if value is None else str(value)


def _downstream(store: Store) -> str:
    raw = store.get_meta("downstream")
    if raw is None:
        return (
            "<p>No downstream results in this project. They are produced by <code>actlabel demo</code>, which "
            "trains a classifier on full human labels, full machine labels and the ACT data and compares their "
            "test accuracy.</p>"
        )
    try:
        payload = json.loads(raw)
        rows = payload["rows"] if isinstance(payload, dict) else payload
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("rows must be a list of objects")
    except (ValueError, KeyError, TypeError) as exc:
        return _note(f"The stored downstream results could not be read ({esc(str(exc))}).", "warn")
    if not rows:
        return "<p>The stored downstream results are empty.</p>"
    headers = list(dict.fromkeys(k for r in rows for k in r))
    body = [[_format_cell(h, r.get(h)) for h in headers] for r in rows]
    numeric = [i for i, h in enumerate(headers) if any(isinstance(r.get(h), int | float) for r in rows)]
    out = [_table(headers, body, numeric=numeric)]
    note = payload.get("note") if isinstance(payload, dict) else None
    if note:
        out.append(_caption(str(note)))
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# the page

_SECTIONS: list[tuple[str, str]] = [
    ("overview", "Overview"),
    ("labels", "Label distribution"),
    ("accuracy", "Annotator accuracy"),
    ("critic", "Critic"),
    ("budget", "Budget curve"),
    ("residual", "Residual errors"),
    ("reviewers", "Reviewers"),
    ("downstream", "Downstream"),
]


def _label_sets(store: Store) -> dict[str, Any]:
    """A multi-label project per label: 0/1 matrices of machine, final and gold sets (items with
    an ok annotation), and each label's error probability from the per-label critic."""
    from actlabel import multilabel
    from actlabel.critics.per_label import current_label_error_probs

    names = store.task.label_names
    rows = [r for batch in store.iter_current() for r in batch if r[6] == "ok"]
    machine = multilabel.indicators([r[4] for r in rows], names)
    final = multilabel.indicators([r[12] if r[12] is not None else r[4] for r in rows], names)
    has_gold = np.array([r[3] is not None for r in rows], dtype=bool)
    gold = multilabel.indicators([r[3] for r in rows], names)
    label_e = current_label_error_probs(store)
    has_e = np.array([r[0] in label_e for r in rows], dtype=bool)
    e = np.array([label_e.get(r[0], np.full(len(names), np.nan)) for r in rows]).reshape(
        len(rows), len(names)
    )
    return {"names": names, "machine": machine, "final": final, "gold": gold, "has_gold": has_gold,
            "label_error": e, "has_error": has_e}  # fmt: skip


def _multi_distribution(sets: dict[str, Any]) -> str:
    names, machine, final = sets["names"], sets["machine"], sets["final"]
    if machine.shape[0] == 0:
        return "<p>No labels yet: run <code>actlabel annotate</code>.</p>"
    series = [("machine", machine.sum(axis=0), MACHINE_COLOUR), ("final", final.sum(axis=0), FINAL_COLOUR)]
    if sets["has_gold"].any():
        series.append(("gold", sets["gold"][sets["has_gold"]].sum(axis=0), GOLD_COLOUR))
    rows = [[n, *(_int(c[j]) for _, c, _ in series)] for j, n in enumerate(names)]
    empty = [
        ("machine", int((machine.sum(axis=1) == 0).sum())),
        ("final", int((final.sum(axis=1) == 0).sum())),
    ]
    return (
        _label_bars(names, series)
        + '<p class="caption">Multi-label task: items per label (an item counts once for each of its labels).</p>'
        + _table(["label", *(x[0] for x in series)], rows, numeric=range(1, len(series) + 1))
        + "<p>Items with the empty set: "
        + ", ".join(f"{k} {v}" for k, v in empty)
        + ".</p>"
    )


def _multi_accuracy(sets: dict[str, Any]) -> str:
    mask = sets["has_gold"]
    if not mask.any():
        return _needs_gold("Exact-set match, Hamming loss and F1 per label compare the sets with gold.")
    names = sets["names"]
    gold = sets["gold"][mask]
    m, f = (
        metrics.set_agreement(sets["machine"][mask], gold),
        metrics.set_agreement(sets["final"][mask], gold),
    )
    head = _kv(
        [
            ("items with gold", _int(m.n)),
            ("machine: exact-set match", _pct(m.exact_match)),
            ("machine: Hamming loss", _num(m.hamming)),
            ("machine: micro / macro F1", f"{_num(m.micro_f1)} / {_num(m.macro_f1)}"),
            ("final: exact-set match", _pct(f.exact_match)),
            ("final: micro / macro F1", f"{_num(f.micro_f1)} / {_num(f.macro_f1)}"),
        ]
    )
    rows = [
        [n, _int(gold[:, j].sum()), "n/a" if m.f1[j] != m.f1[j] else _num(m.f1[j]),
         "n/a" if f.f1[j] != f.f1[j] else _num(f.f1[j])]
        for j, n in enumerate(names)
    ]  # fmt: skip
    return head + _table(["label", "gold items", "machine F1", "final F1"], rows, numeric=(1, 2, 3))


def _per_label_auroc(sets: dict[str, Any]) -> str:
    mask = sets["has_gold"] & sets["has_error"]
    if not mask.any():
        return _needs_gold("Per-label AUROC needs the per-label critic's scores and gold sets.")
    wrong = sets["machine"][mask] != sets["gold"][mask]
    aurocs = metrics.per_label_auroc(sets["label_error"][mask], wrong)
    rows = [
        [n, _int(wrong[:, j].sum()), "n/a (no errors or all wrong)" if a is None else _num(a)]
        for j, (n, a) in enumerate(zip(sets["names"], aurocs, strict=True))
    ]
    return (
        "<h3>Per label</h3><p>AUROC of each label's error probability against whether the machine's "
        "decision on that label was wrong (items with gold).</p>"
        + _table(["label", "wrong decisions", "AUROC"], rows, numeric=(1, 2))
    )


def render_report(store: Store) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    data = _load(store)
    truth = _truth(data)
    sets = _label_sets(store) if store.task.multi_label else None
    builders: dict[str, Callable[[], str]] = {
        "overview": lambda: _overview(store, data),
        "labels": lambda: _distribution(data) if sets is None else _multi_distribution(sets),
        "accuracy": lambda: _accuracy(data) if sets is None else _multi_accuracy(sets),
        "critic": lambda: _critic(store, data, truth) + ("" if sets is None else _per_label_auroc(sets)),
        "budget": lambda: _budget(data),
        "residual": lambda: _residual(store, data),
        "reviewers": lambda: _reviewers(store, data),
        "downstream": lambda: _downstream(store),
    }
    if data.n == 0:
        # Without items only the overview and usage say anything.
        builders = {
            k: (v if k in ("overview", "downstream") else (lambda: "<p>No items yet.</p>"))
            for k, v in builders.items()
        }
    return (
        _templates()
        .get_template("report.html")
        .render(
            project=store.root.resolve().name or str(store.root),
            root=str(store.root.resolve()),
            generated=time.strftime("%Y-%m-%d %H:%M", time.localtime()),
            sections=[(key, title, Markup(builders[key]())) for key, title in _SECTIONS],
        )
    )


def write_report(store: Store, out: str | Path) -> Path:
    """Write the HTML report for the project in `store` to `out` and return its path.

    Written to a temporary file first and renamed, so an interrupted run never leaves half a report.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(store)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
