"""Builders shared by the review tests: real projects in the real store, and a real server in a thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from actlabel.store import Store
from actlabel.task import Label, Task

LABELS = ["positive", "negative", "neutral"]

# A 1x1 PNG: enough for the image route and the browser to load.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a2d6c5d90000000049454e44ae426082"
)


def error_prob_of(i: int) -> float:
    """Distinct, shuffled error probabilities (37 is coprime with 100)."""
    return round((i * 37 % 100) / 100 + 0.001, 3)


def make_project(
    root: Path,
    n: int = 30,
    *,
    labels: Sequence[str] = LABELS,
    selected: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
    gold: bool | Sequence[int] = True,
    critique: Sequence[int] | None = None,
    images: bool = False,
    rationale: str | None = None,
) -> Path:
    """A project of n items, all annotated; `selected` (default all) chosen for review.

    Item i (0-based) has item_id f"it{i:04d}", gold label labels[i % len(labels)], a machine label that is
    wrong for every third item, and (for items in `critique`, default all) error_prob_of(i) and a
    proposed label equal to gold on the wrong items. `gold=False` stores no gold; a sequence keeps gold
    only on those indices.
    """
    task = Task(
        labels=[Label(name) for name in labels],
        text_columns=["text"],
        image_column="image" if images else None,
    )
    store = Store.create(root, task)
    run = store.start_run("import")
    rows = []
    for i in range(n):
        data: dict[str, Any] = {"text": texts[i] if texts is not None else f"text of item {i}"}
        image_path = None
        if images:
            img = root / "images" / f"img{i}.png"
            img.parent.mkdir(exist_ok=True)
            img.write_bytes(PNG_1X1)
            data["image"] = f"images/img{i}.png"
            image_path = str(img.resolve())
        has_gold = gold is True or (not isinstance(gold, bool) and i in gold)
        rows.append(
            (f"it{i:04d}", json.dumps(data), image_path, labels[i % len(labels)] if has_gold else None)
        )
    with store.transaction():
        store.insert_items(rows, run)
        store.add_input_columns(["text"] + (["image"] if images else []))
    rowids = store.item_rowids()
    ann, crit, sel = [], [], []
    chosen = set(range(n) if selected is None else selected)
    critiqued = set(range(n) if critique is None else critique)
    for i, rowid in enumerate(rowids):
        gold_label = labels[i % len(labels)]
        wrong = i % 3 == 0
        machine = labels[(i + 1) % len(labels)] if wrong else gold_label
        ann.append(
            {
                "item_rowid": rowid,
                "run_id": run,
                "model": "scripted",
                "label": machine,
                "confidence": 0.9,
                "status": "ok",
            }
        )
        if i in critiqued:
            proposed = gold_label if wrong else labels[(i + 2) % len(labels)]
            crit.append(
                {
                    "item_rowid": rowid,
                    "run_id": run,
                    "model": "scripted",
                    "strategy": "cot",
                    "error_prob": error_prob_of(i),
                    "proposed_label": proposed,
                    "rationale": rationale if rationale is not None else f"because of item {i}",
                    "status": "ok",
                }
            )
        sel.append(
            {
                "item_rowid": rowid,
                "run_id": run,
                "round": 1,
                "selected": int(i in chosen),
                "review_prob": 1.0 if i in chosen else 0.1,
            }
        )
    store.add_annotations(ann)
    store.add_critiques(crit)
    store.add_selections(sel)
    store.close()
    return root


def expected_order(n: int, selected: Sequence[int] | None = None) -> list[str]:
    chosen = range(n) if selected is None else selected
    return [f"it{i:04d}" for i in sorted(chosen, key=lambda i: -error_prob_of(i))]


def reviews(root: Path) -> list[dict[str, Any]]:
    """All review records, oldest first, with the item_id."""
    with Store.open(root) as store:
        cur = store.conn.execute(
            "SELECT r.id, i.item_id, r.reviewer, r.label, r.source, r.duration_ms, r.created_at"
            " FROM reviews r JOIN items i ON i.rowid = r.item_rowid ORDER BY r.id"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on 127.0.0.1 (ephemeral port); yields the base URL."""
    import uvicorn

    from actlabel.review.app import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the review server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_make_project_builds_what_the_tests_assume(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 6, selected=[0, 2, 3])
    with Store.open(root) as store:
        assert store.count_items() == 6
        assert sum(1 for v in store.latest("selections", ["selected"]).values() if v[0]) == 3
        wrong = {r: v[0] for r, v in store.latest("annotations", ["label"]).items()}
        assert wrong[store.rowid_of("it0000")] != store.get_item(store.rowid_of("it0000")).gold_label
        assert wrong[store.rowid_of("it0001")] == store.get_item(store.rowid_of("it0001")).gold_label
