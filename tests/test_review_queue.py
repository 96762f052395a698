"""The review queue: order, leases between reviewers and processes, skip, undo, progress and pace."""

from __future__ import annotations

from pathlib import Path

import pytest

from actlabel.errors import UserError
from actlabel.review.queue import ReviewQueue, UnknownItem, selected_items
from actlabel.store import Store

from .test_review_support import error_prob_of, expected_order, make_project


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _id(store: Store, rowid: int) -> str:
    return store.get_item(rowid).item_id


def test_most_suspicious_first_only_selected_and_unreviewed(tmp_path: Path) -> None:
    selected = [0, 1, 2, 5, 8, 9, 12]
    root = make_project(tmp_path / "p", 15, selected=selected)
    with Store.open(root) as store:
        store.add_review(store.rowid_of("it0005"), "neutral", reviewer="x", source="web")
        queue = ReviewQueue(store)
        order = []
        while (item := queue.next_item("ann")) is not None:
            order.append(item.item_id)
            queue.save("ann", item.rowid, "positive")
        want = [i for i in expected_order(15, selected) if i != "it0005"]
        assert order == want
        assert queue.progress().done == queue.progress().budget == 7


def test_items_without_critique_come_last_and_unselected_rows_count(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 6, critique=[1, 2, 3, 4])
    with Store.open(root) as store:
        # A later selection round unselects item 4: its latest row wins.
        run = store.start_run("select")
        store.add_selections(
            [
                {
                    "item_rowid": store.rowid_of("it0004"),
                    "run_id": run,
                    "round": 2,
                    "selected": 0,
                    "review_prob": 0.2,
                }
            ]
        )
        items = selected_items(store)
        ids = [_id(store, s.rowid) for s in items]
        assert "it0004" not in ids
        assert ids[-2:] == ["it0000", "it0005"]  # no critique: last, by rowid
        assert [s.error_prob for s in items[:3]] == sorted(
            [error_prob_of(i) for i in (1, 2, 3)], reverse=True
        )


def test_reviewers_get_distinct_items_and_keep_theirs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 10)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        a, b = queue.next_item("ann"), queue.next_item("bob")
        assert a.item_id != b.item_id
        assert queue.next_item("ann").rowid == a.rowid  # a reload shows the same item
        assert queue.next_item("bob").rowid == b.rowid
        # The leases are in the store as well.
        leases = dict(store.conn.execute("SELECT item_rowid, reviewer FROM leases"))
        assert leases == {a.rowid: "ann", b.rowid: "bob"}


def test_expired_lease_goes_to_the_next_reviewer(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 5)
    clock = Clock()
    with Store.open(root) as store:
        queue = ReviewQueue(store, lease_s=60, clock=clock)
        first = queue.next_item("ann")
        assert queue.next_item("bob").rowid != first.rowid
        clock.t += 61
        assert queue.next_item("cy").rowid == first.rowid  # ann's lease expired
        # ann comes back: her old item is taken, she gets another one; a late save of hers still counts.
        assert queue.next_item("ann").rowid != first.rowid
        queue.save("ann", first.rowid, "neutral")
        assert store.latest("reviews", ["label", "reviewer"])[first.rowid] == ("neutral", "ann")


def test_two_processes_share_leases_and_reviews_through_the_store(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 6)
    with Store.open(root) as one, Store.open(root) as two:
        q1, q2 = ReviewQueue(one), ReviewQueue(two)
        a = q1.next_item("ann")
        b = q2.next_item("bob")
        assert a.rowid != b.rowid
        q2.save("bob", b.rowid, "positive")
        # q1 was built before bob's save; it must notice the review in the store instead of handing it out.
        seen = set()
        while (item := q1.next_item("ann")) is not None:
            seen.add(item.rowid)
            q1.save("ann", item.rowid, "negative")
        assert b.rowid not in seen
        assert len(seen) == 5


def test_save_validates_label_and_item(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 3)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        item = queue.next_item("ann")
        with pytest.raises(UserError, match="not one of the task's labels"):
            queue.save("ann", item.rowid, "bogus")
        with pytest.raises(UnknownItem):
            queue.save("ann", 99999, "positive")
        assert store.count("reviews") == 0


def test_skip_defers_for_this_reviewer_only(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 3)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        first = queue.next_item("ann")
        queue.skip("ann", first.rowid)
        second = queue.next_item("ann")
        assert second.rowid != first.rowid
        assert queue.next_item("bob").rowid == first.rowid  # free for others at once
        queue.save("ann", second.rowid, "positive")
        third = queue.next_item("ann")
        assert third.rowid not in (first.rowid, second.rowid)
        queue.save("ann", third.rowid, "positive")
        # Only the skipped item is left, and bob holds it.
        assert queue.next_item("ann") is None
        queue.skip("bob", first.rowid)
        assert queue.next_item("ann").rowid == first.rowid


def test_skipping_everything_cycles_instead_of_sticking(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 3)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        seen = []
        for _ in range(6):
            item = queue.next_item("ann")
            seen.append(item.rowid)
            queue.skip("ann", item.rowid)
        assert seen[:3] == seen[3:] and len(set(seen)) == 3


def test_undo_reopens_last_saved_and_a_new_save_appends(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 5)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        a = queue.next_item("ann")
        queue.save("ann", a.rowid, "positive")
        b = queue.next_item("ann")
        queue.save("ann", b.rowid, "negative")
        c = queue.next_item("ann")
        assert queue.undo("ann") == b.rowid
        again = queue.next_item("ann")
        assert again.rowid == b.rowid and again.human_label == "negative"
        assert queue.undo("ann") == a.rowid  # undo twice goes back two items
        assert queue.next_item("ann").rowid == a.rowid
        queue.save("ann", a.rowid, "neutral")
        labels = [
            r[0]
            for r in store.conn.execute(
                "SELECT label FROM reviews WHERE item_rowid = ? ORDER BY id", (a.rowid,)
            )
        ]
        assert labels == ["positive", "neutral"]
        assert store.latest("reviews", ["label"])[a.rowid] == ("neutral",)
        assert queue.progress().done == 2
        # c was released by the undo and comes back next.
        assert queue.next_item("ann").rowid == c.rowid


def test_undo_after_restart_uses_the_store(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 4)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        a = queue.next_item("ann")
        queue.save("ann", a.rowid, "positive")
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        assert queue.undo("ann") == a.rowid
        assert queue.undo("bob") is None


def test_progress_pace_and_time_left(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 12, selected=list(range(10)))
    clock = Clock()
    with Store.open(root) as store:
        queue = ReviewQueue(store, clock=clock)
        p = queue.progress()
        assert (p.done, p.budget, p.pace_per_min, p.seconds_left) == (0, 10, None, None)
        for _ in range(4):
            item = queue.next_item("ann")
            queue.save("ann", item.rowid, "positive")
            clock.t += 30  # one item every 30 s
        p = queue.progress()
        assert p.done == 4
        assert p.pace_per_min == pytest.approx(2.0)
        assert p.seconds_left == pytest.approx(6 / 2.0 * 60)
        assert "4 of 10 reviewed" in p.describe() and "2.0 items/min" in p.describe()
        clock.t += 3600  # idle for an hour: no pace claimed
        assert queue.progress().pace_per_min is None


def test_release_all_frees_the_leases(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 4)
    with Store.open(root) as store:
        queue = ReviewQueue(store)
        queue.next_item("ann")
        queue.next_item("bob")
        queue.release_all()
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
