"""The review queue: which selected item a reviewer sees next, and the progress of the review.

The queue is built once from the store (one SQL pass over the latest selection of every item) and
kept in memory, ordered most suspicious first (highest `error_prob`; items without a critique
last). Handing out an item and saving a review are each one small transaction, so the queue stays
fast with a million items in the store while the store remains the source of truth:

- reviews are appended to `reviews` (latest wins) and committed before `save` returns;
- leases live in memory *and* in the store's `leases` table, so two processes reviewing the same
  project (two terminals, or a terminal and the web app) also get distinct items;
- before handing out an item the queue checks the store for a review written by another process.

Every public method takes the queue's lock: the web app calls it from a thread pool and all store
access goes through one SQLite connection, which must not run two transactions at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actlabel.errors import UserError
from actlabel.store import Store

LEASE_S = 600.0
# Pace is measured over the most recent saves only, so it follows the reviewers' current speed.
PACE_WINDOW = 30
PACE_MAX_AGE_S = 900.0
UNDO_DEPTH = 200
_CHUNK = 900  # SQLite's default limit on host parameters is 999

# Latest selection per item (bare-column max(): `selected` comes from the row with the highest id),
# then, for the selected ones only, the latest critique's error_prob and whether any review exists.
# MATERIALIZED keeps SQLite from folding the outer WHERE into the grouping, which would change
# which row the bare column is read from.


class UnknownItem(UserError):
    """A review for an item rowid that is not in the project."""


@dataclass(frozen=True)
class ReviewItem:
    """Everything a reviewer needs to judge one item."""

    rowid: int
    item_id: str
    fields: list[tuple[str, str]]  # the text fields, in import order, as (column, text)
    image_path: str | None
    machine_label: str | None
    machine_confidence: float | None
    error_prob: float | None
    proposed_label: str | None
    rationale: str | None
    review_prob: float | None
    human_label: str | None  # the latest review, if any (shown when an item is re-opened)
    human_reviewer: str | None
    gold_label: str | None

    @property
    def text(self) -> str:
        return "\n".join(value for _, value in self.fields)


@dataclass(frozen=True)
class Progress:
    done: int  # selected items that have a human review
    budget: int  # selected items
    pace_per_min: float | None  # saves per minute over the recent saves; None until measurable
    seconds_left: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.done)

    @property
    def fraction(self) -> float:
        return 1.0 if self.budget == 0 else self.done / self.budget

    def describe(self, sep: str = " · ") -> str:
        parts = [f"{self.done} of {self.budget} reviewed"]
        if self.pace_per_min is not None:
            parts.append(f"{self.pace_per_min:.1f} items/min")
        if self.seconds_left is not None and self.remaining:
            left = format_duration(self.seconds_left)
            parts.append(f"{left} left" if left.startswith("under") else f"about {left} left")
        return sep.join(parts)


def format_duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass(frozen=True)
class SelectedItem:
    rowid: int
    error_prob: float | None
    reviewed: bool


def selected_items(store: Store) -> list[SelectedItem]:
    """Every item whose latest selection has `selected = 1`, in review order (most suspicious first)."""
    rows = [SelectedItem(r, p, bool(rev)) for r, p, rev in store.selected_for_review()]
    rows.sort(key=_priority)
    return rows


def _priority(item: SelectedItem) -> tuple[bool, float, int]:
    return (item.error_prob is None, -(item.error_prob or 0.0), item.rowid)


def text_fields(store: Store, data: dict[str, Any], image_path: str | None) -> list[tuple[str, str]]:
    """The item's text columns; the image column holds a path and is shown as the image instead."""
    image_column = store.task.image_column
    out = []
    for key, value in data.items():
        if value is None or key == "__image__" or (image_path and key == image_column):
            continue
        out.append((key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return out


def load_items(store: Store, rowids: Sequence[int]) -> list[ReviewItem]:
    """Full review details for `rowids` (in that order; unknown rowids are left out), a few queries per chunk."""
    out: list[ReviewItem] = []
    for start in range(0, len(rowids), _CHUNK):
        chunk = list(rowids[start : start + _CHUNK])
        annotations = store.latest("annotations", ("label", "confidence"), rowids=chunk)
        critiques = store.latest("critiques", ("error_prob", "proposed_label", "rationale"), rowids=chunk)
        selections = store.latest("selections", ("review_prob",), rowids=chunk)
        reviews = store.latest("reviews", ("label", "reviewer"), rowids=chunk)
        for item in store.iter_items(chunk):
            rowid = item.rowid
            label, confidence = annotations.get(rowid, (None, None))
            error_prob, proposed, rationale = critiques.get(rowid, (None, None, None))
            human, human_reviewer = reviews.get(rowid, (None, None))
            out.append(
                ReviewItem(
                    rowid=rowid,
                    item_id=item.item_id,
                    fields=text_fields(store, item.data, item.image_path),
                    image_path=item.image_path,
                    machine_label=label,
                    machine_confidence=confidence,
                    error_prob=error_prob,
                    proposed_label=proposed,
                    rationale=rationale,
                    review_prob=selections.get(rowid, (None,))[0],
                    human_label=human,
                    human_reviewer=human_reviewer,
                    gold_label=item.gold_label,
                )
            )
    return out


@dataclass
class _Lease:
    reviewer: str
    expires_at: float


class ReviewQueue:
    """The selected items without a human review, most suspicious first, shared by several reviewers.

    `next_item(reviewer)` leases an item to the reviewer (the same one again until it is saved,
    skipped or the lease expires), `save` records a review, `skip` puts the item back for others,
    `undo` re-opens the reviewer's last saved item. `clock` is injectable for tests.
    """

    def __init__(self, store: Store, *, lease_s: float = LEASE_S, clock: Callable[[], float] = time.time):
        self.store = store
        self.lease_s = lease_s
        self._clock = clock
        self._lock = threading.RLock()
        self._labels = frozenset(store.task.label_names)
        self.reload()

    def reload(self) -> None:
        """(Re)build the queue from the store: one SQL pass."""
        with self._lock:
            selected = selected_items(self.store)
            self._selected = {s.rowid for s in selected}
            self._done = {s.rowid for s in selected if s.reviewed}
            self._order = [s.rowid for s in selected if not s.reviewed]
            self._head = 0  # every entry before it is done: the scan for the next item starts here
            self._leases: dict[int, _Lease] = {}
            # reviewer -> (rowid, reopened): the item the reviewer is on; reopened = shown again by undo
            self._current: dict[str, tuple[int, bool]] = {}
            # reviewer -> rowids skipped, least recently skipped first (dicts keep insertion order)
            self._skipped: dict[str, dict[int, None]] = {}
            self._history: dict[str, list[int]] = {}
            self._recent_saves: deque[float] = deque(maxlen=PACE_WINDOW)

    # ---- reading ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.store.task.label_names

    def progress(self) -> Progress:
        with self._lock:
            now = self._clock()
            done, budget = len(self._done), len(self._selected)
            pace = None
            saves = [t for t in self._recent_saves if now - t <= PACE_MAX_AGE_S]
            if len(saves) >= 2 and saves[-1] > saves[0]:
                pace = (len(saves) - 1) / (saves[-1] - saves[0]) * 60.0
            left = None if pace is None else max(0, budget - done) / pace * 60.0
            return Progress(done, budget, pace, left)

    def item(self, rowid: int) -> ReviewItem | None:
        with self._lock:
            found = load_items(self.store, [rowid])
            return found[0] if found else None

    def image_path(self, rowid: int) -> str | None:
        with self._lock:
            return self.store.image_path_of(rowid)

    def current(self, reviewer: str) -> int | None:
        with self._lock:
            entry = self._current.get(reviewer)
            return None if entry is None else entry[0]

    # ---- handing out items ------------------------------------------------------------------
    def next_item(self, reviewer: str) -> ReviewItem | None:
        """The reviewer's current item, or the most suspicious free one (leased to them); None when all are done."""
        with self._lock:
            rowid = self._next_rowid(reviewer, self._clock())
            return None if rowid is None else self.item(rowid)

    def _next_rowid(self, reviewer: str, now: float) -> int | None:
        entry = self._current.get(reviewer)
        if entry is not None:
            rowid, reopened = entry
            if (reopened or rowid not in self._done) and self._try_lease(rowid, reviewer, now, reopened):
                return rowid
            del self._current[reviewer]
        while self._head < len(self._order) and self._order[self._head] in self._done:
            self._head += 1
        skipped = self._skipped.get(reviewer, {})
        for i in range(self._head, len(self._order)):
            rowid = self._order[i]
            if rowid in self._done or rowid in skipped or self._leased_by_other(rowid, reviewer, now):
                continue
            if self._try_lease(rowid, reviewer, now):
                self._current[reviewer] = (rowid, False)
                return rowid
        # Only items this reviewer skipped are left: offer them again, least recently skipped first.
        for rowid in list(skipped):
            if rowid in self._done:
                del skipped[rowid]
            elif not self._leased_by_other(rowid, reviewer, now) and self._try_lease(rowid, reviewer, now):
                self._current[reviewer] = (rowid, False)
                return rowid
        return None

    def _leased_by_other(self, rowid: int, reviewer: str, now: float) -> bool:
        lease = self._leases.get(rowid)
        return lease is not None and lease.reviewer != reviewer and lease.expires_at > now

    def _try_lease(self, rowid: int, reviewer: str, now: float, allow_reviewed: bool = False) -> bool:
        """Lease (or renew) `rowid` for the reviewer in the store; False if another process holds or reviewed it."""
        expires = now + self.lease_s
        refused = self.store.take_lease(rowid, reviewer, expires, now, refuse_reviewed=not allow_reviewed)
        if refused is None:
            self._leases[rowid] = _Lease(reviewer, expires)
            return True
        if refused.holder is None:  # reviewed by another process since the queue was built
            if rowid in self._selected:
                self._done.add(rowid)
        else:
            self._leases[rowid] = _Lease(refused.holder, refused.expires_at)
        return False

    def _release(self, rowid: int, reviewer: str) -> None:
        lease = self._leases.get(rowid)
        if lease is not None and lease.reviewer == reviewer:
            del self._leases[rowid]
        self.store.release_leases([(rowid, reviewer)])

    # ---- answers ----------------------------------------------------------------------------
    def save(
        self, reviewer: str, rowid: int, label: str, *, duration_ms: int | None = None, source: str = "human"
    ) -> int:
        """Append a review (committed before returning) and release the item. Returns the review id."""
        label = self.store.review_label(rowid, label)  # a set, in a multi-label task
        with self._lock:
            now = self._clock()
            review_id = self.store.save_leased_review(rowid, label, reviewer, source, duration_ms, now)
            if review_id is None:
                raise UnknownItem(f"item {rowid} does not exist in this project")
            lease = self._leases.get(rowid)
            if lease is not None and lease.reviewer == reviewer:
                del self._leases[rowid]
            if rowid in self._selected:
                self._done.add(rowid)
            if self._current.get(reviewer, (None,))[0] == rowid:
                del self._current[reviewer]
            self._skipped.get(reviewer, {}).pop(rowid, None)
            history = self._history.setdefault(reviewer, [])
            history.append(rowid)
            del history[:-UNDO_DEPTH]
            self._recent_saves.append(now)
            return review_id

    def skip(self, reviewer: str, rowid: int) -> None:
        """Put the item back for the others; this reviewer sees it again only when nothing else is left."""
        with self._lock:
            skipped = self._skipped.setdefault(reviewer, {})
            skipped.pop(rowid, None)
            skipped[rowid] = None  # re-insert: now the most recently skipped
            if self._current.get(reviewer, (None,))[0] == rowid:
                del self._current[reviewer]
            self._release(rowid, reviewer)

    def undo(self, reviewer: str) -> int | None:
        """Re-open the reviewer's last saved item (before the one on screen); a new save appends a record."""
        with self._lock:
            if reviewer not in self._history:
                # Nothing saved in this process (e.g. after a restart): fall back to the store.
                last = self.store.last_reviewed_by(reviewer)
                self._history[reviewer] = [] if last is None else [last]
            history = self._history[reviewer]
            current = self._current.get(reviewer, (None,))[0]
            while history:
                rowid = history.pop()
                if rowid == current:
                    continue
                if current is not None:
                    self._release(current, reviewer)
                self._current[reviewer] = (rowid, True)
                self._try_lease(rowid, reviewer, self._clock(), allow_reviewed=True)
                return rowid
            return None

    def release_all(self) -> None:
        """Give back every lease this queue holds (on shutdown), so other processes can take the items."""
        with self._lock:
            held = [(rowid, lease.reviewer) for rowid, lease in self._leases.items()]
            self.store.release_leases(held)
            self._leases.clear()
            self._current.clear()


def pending_rowids(store: Store) -> list[int]:
    """Selected items without a review, in review order."""
    return [s.rowid for s in selected_items(store) if not s.reviewed]
