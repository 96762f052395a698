"""Terminal review: same queue and records as the web app, driven by stdin and through a real pty."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from actlabel.review.terminal import run_terminal_review
from actlabel.store import Store

from .test_review_support import LABELS, expected_order, make_project, reviews


def test_keys_save_skip_undo_quit(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 8)
    order = expected_order(8)
    out = io.StringIO()
    # item 1: "2" -> LABELS[1]; item 2: "a" (machine); item 3: "s" skip; item 4: "c" (critic);
    # "u" re-opens item 4, "neu" (label prefix) answers it again; "9" is out of range; then quit.
    keys = "2\na\ns\nc\nu\nneu\n9\nq\n"
    with Store.open(root) as store:
        saved = run_terminal_review(store, reviewer="tina", stdin=io.StringIO(keys), stdout=out)
        machine = {store.get_item(r).item_id: v[0] for r, v in store.latest("annotations", ["label"]).items()}
        proposal = {
            store.get_item(r).item_id: v[0] for r, v in store.latest("critiques", ["proposed_label"]).items()
        }
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0  # released on quit
    assert saved == 4
    text = out.getvalue()
    assert "machine label:" in text and "rationale:" in text and "1) positive" in text
    assert "Pick a number from 1 to 3." in text
    assert "earlier answer:" in text
    recs = reviews(root)
    assert [(r["item_id"], r["label"]) for r in recs] == [
        (order[0], LABELS[1]),
        (order[1], machine[order[1]]),
        (order[3], proposal[order[3]]),
        (order[3], "neutral"),
    ]
    assert {r["reviewer"] for r in recs} == {"tina"} and {r["source"] for r in recs} == {"terminal"}
    assert all(r["duration_ms"] is not None and r["duration_ms"] >= 0 for r in recs)


def test_end_of_input_quits_and_empty_queue_says_done(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 2)
    out = io.StringIO()
    with Store.open(root) as store:
        assert run_terminal_review(store, reviewer="x", stdin=io.StringIO("1\n"), stdout=out) == 1
        assert run_terminal_review(store, reviewer="x", stdin=io.StringIO("1\n"), stdout=out) == 1
        assert run_terminal_review(store, reviewer="x", stdin=io.StringIO(""), stdout=out) == 0
    assert "Nothing left to review (2 of 2 reviewed)" in out.getvalue()


def test_asks_for_the_name_once(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 2)
    out = io.StringIO()
    with Store.open(root) as store:
        run_terminal_review(store, stdin=io.StringIO("Zoe\n3\nq\n"), stdout=out)
    assert out.getvalue().startswith("Your name [")
    assert [r["reviewer"] for r in reviews(root)] == ["Zoe"]


def _read_until(fd: int, needle: bytes, buf: bytearray, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {bytes(buf[-500:])!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the pty
                chunk = b""
            if not chunk:
                raise AssertionError(f"the process ended before {needle!r}; got {bytes(buf[-500:])!r}")
            buf.extend(chunk)


def test_cli_terminal_review_through_a_pty(tmp_path: Path) -> None:
    """`actlabel review DIR --terminal` in a real pseudo-terminal, as under tmux or SSH."""
    root = make_project(tmp_path / "p", 4)
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "review", str(root), "--terminal", "--reviewer", "pat"],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        close_fds=True,
    )
    os.close(child_fd)
    buf = bytearray()
    try:
        for key in (b"1", b"a", b"3"):
            _read_until(main_fd, b"> ", buf)
            del buf[:]
            os.write(main_fd, key + b"\n")
        _read_until(main_fd, b"> ", buf)
        assert b"3 of 4 reviewed" in buf
        os.write(main_fd, b"q\n")
        _read_until(main_fd, b"3 reviews saved", buf)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)
    assert [(r["reviewer"], r["source"]) for r in reviews(root)] == [("pat", "terminal")] * 3


def test_undo_from_the_done_prompt(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", 1)
    out = io.StringIO()
    with Store.open(root) as store:
        assert run_terminal_review(store, reviewer="x", stdin=io.StringIO("1\nu\n2\nq\n"), stdout=out) == 2
    assert [r["label"] for r in reviews(root)] == [LABELS[0], LABELS[1]]
    assert "re-opened your last saved item" in out.getvalue()
