"""Review in a terminal, for machines without a browser (an SSH session, a tmux pane).

Same queue, same records and same keys as the web app, typed as one line each (Enter after the
key), so it works over any terminal, under tmux, and with piped input:

  1-9 or any label number   pick that label          a   accept the machine label
  a label name (or prefix)  pick that label          c   accept the critic's proposal
  s                         skip                     u   undo (re-open the last saved item)
  q (or end of input)       quit; everything answered is already saved
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable
from typing import TextIO

from actlabel.errors import UserError
from actlabel.review.queue import ReviewItem, ReviewQueue
from actlabel.store import Store

SOURCE = "terminal"
MAX_FIELD_CHARS = 4000
LIST_ALL_LABELS_UP_TO = 30


def run_terminal_review(
    store: Store,
    *,
    reviewer: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    lease_s: float | None = None,
) -> int:
    """Review the queue from `stdin` until it is empty or the reviewer quits; returns how many were saved."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout

    def say(text: str = "") -> None:
        stdout.write(text + "\n")
        stdout.flush()

    def ask(prompt: str) -> str | None:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        return None if line == "" else line.strip()

    if not reviewer:
        default = _default_name()
        answer = ask(f"Your name [{default}]: ")
        if answer is None:
            return 0
        reviewer = answer or default
    reviewer = reviewer.strip()
    if not reviewer or len(reviewer) > 64:
        raise UserError("the reviewer name must be 1 to 64 characters")

    queue = ReviewQueue(store) if lease_s is None else ReviewQueue(store, lease_s=lease_s)
    labels = queue.labels
    saved = 0
    note = ""
    try:
        while True:
            item = queue.next_item(reviewer)
            if item is None:
                say(
                    f"\nNothing left to review ({queue.progress().describe(', ')}). Next: actlabel export DIR labels.csv"
                )
                answer = ask("u to re-open your last saved item, q to quit> ")
                if answer is not None and answer.lower() == "u" and queue.undo(reviewer) is not None:
                    note = "(re-opened your last saved item)"
                    continue
                return saved
            _show(say, item, labels, queue.progress().describe(", "), note)
            note = ""
            shown = time.monotonic()
            while True:
                answer = ask("label [1-9 a c s u q]> ")
                if answer is None or answer.lower() in ("q", "quit", "exit"):
                    say(f"Stopped. {saved} reviews saved this session.")
                    return saved
                key = answer.lower()
                if key == "s":
                    queue.skip(reviewer, item.rowid)
                    break
                if key == "u":
                    reopened = queue.undo(reviewer)
                    note = "(re-opened your last saved item)" if reopened else "(nothing to undo)"
                    break
                resolve = _resolve_set if queue.store.task.multi_label else _resolve
                label, problem = resolve(answer, item, labels)
                if label is None:
                    say(problem)
                    continue
                queue.save(
                    reviewer,
                    item.rowid,
                    label,
                    duration_ms=int((time.monotonic() - shown) * 1000),
                    source=SOURCE,
                )
                saved += 1
                break
    finally:
        queue.release_all()


def _default_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def _resolve_set(answer: str, item: ReviewItem, labels: list[str]) -> tuple[str | None, str]:
    """A multi-label answer: `a` (the machine set), `c` (the critic's), `-` (no label applies), or
    labels by number or name separated by commas, e.g. `1,3` or `crude,ship`."""
    from actlabel import multilabel

    key = answer.strip().lower()
    if key in ("a", "c"):
        chosen = item.machine_label if key == "a" else item.proposed_label
        return (
            (chosen, "") if chosen is not None else (None, "Nothing to accept here; list the labels instead.")
        )
    if key == "-":
        return "[]", ""
    if not key:
        return None, "Type label numbers or names separated by commas, - for none (s to skip, q to quit)."
    picked = []
    for part in (p.strip() for p in answer.split(",")):
        label, why = _resolve(part, item, labels, single=True)
        if label is None:
            return None, why
        picked.append(label)
    return multilabel.encode(picked, labels), ""


def _resolve(
    answer: str, item: ReviewItem, labels: list[str], *, single: bool = False
) -> tuple[str | None, str]:
    """The label an answer names, or (None, why not)."""
    key = "" if single else answer.lower()  # inside a set, a and c are label names or prefixes
    if key == "a":
        if item.machine_label in labels:
            return item.machine_label, ""
        return None, "This item has no machine label; pick a label by number or name."
    if key == "c":
        if item.proposed_label in labels:
            return item.proposed_label, ""
        return None, "The critic proposed no label for this item; pick a label by number or name."
    if answer.isdigit():
        n = int(answer)
        if 1 <= n <= len(labels):
            return labels[n - 1], ""
        return None, f"Pick a number from 1 to {len(labels)}."
    if not answer:
        return (
            None,
            "An empty label in the list."
            if single
            else "Type a label number or name (or s to skip, q to quit).",
        )
    exact = [lab for lab in labels if lab.casefold() == answer.casefold()]
    if exact:
        return exact[0], ""
    matches = [lab for lab in labels if lab.casefold().startswith(answer.casefold())]
    if len(matches) == 1:
        return matches[0], ""
    if matches:
        shown = ", ".join(matches[:8]) + (" ..." if len(matches) > 8 else "")
        return None, f"{answer!r} matches {len(matches)} labels ({shown}); type more of the name."
    return None, f"No label matches {answer!r}."


def _show(say: Callable[[str], None], item: ReviewItem, labels: list[str], progress: str, note: str) -> None:
    say("")
    say("=" * 72)
    say(f"{progress}    item {item.item_id}" + (f"  {note}" if note else ""))
    say("-" * 72)
    for name, value in item.fields:
        text = value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + " [...]"
        say(f"[{name}] {text}" if len(item.fields) > 1 else text)
    if item.image_path:
        say(f"[image] {item.image_path}")
    say("-" * 72)
    conf = f" (confidence {item.machine_confidence:.2f})" if item.machine_confidence is not None else ""
    say(f"machine label:  {item.machine_label or '(none)'}{conf}")
    if item.error_prob is not None or item.proposed_label is not None:
        prob = (
            f"error probability {item.error_prob:.2f}"
            if item.error_prob is not None
            else "no error probability"
        )
        say(f"critic:         proposes {item.proposed_label or '(nothing)'}; {prob}")
    if item.rationale:
        say(f"rationale:      {item.rationale}")
    if item.human_label is not None:
        say(
            f"earlier answer: {item.human_label} by {item.human_reviewer} (a new answer is added; the latest counts)"
        )
    listed = labels if len(labels) <= LIST_ALL_LABELS_UP_TO else labels[:9]
    say("labels: " + "   ".join(f"{i}) {lab}" for i, lab in enumerate(listed, 1)))
    if len(listed) < len(labels):
        say(f"        ... and {len(labels) - len(listed)} more: type a number or the start of a label name")
