"""The review app in a real browser (Debian chromium driven by Playwright): keys, reload, XSS, phone width."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actlabel.review.app import create_app
from actlabel.store import Store

from .test_review_support import LABELS, expected_order, make_project, reviews, running

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="needs Debian's chromium (scripts/setup installs it)"
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page_factory(browser: Any) -> Iterator[Any]:
    contexts = []

    def new_page(**kwargs: Any) -> Any:
        context = browser.new_context(**kwargs)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        return page

    yield new_page
    for context in contexts:
        context.close()


def sign_in(page: Any, base: str, name: str) -> None:
    page.goto(base + "/")
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_selector("#item")


def item_id(page: Any) -> str:
    return page.get_attribute("#item", "data-item-id")


def press_and_wait(page: Any, key: str) -> None:
    """Press a key that submits a form and wait for the next page."""
    with page.expect_navigation():
        page.keyboard.press(key)
    page.wait_for_selector("#item, #done")


def test_review_20_items_by_keyboard_then_reload(tmp_path: Path, page_factory: Any) -> None:
    root = make_project(tmp_path / "p", 24)
    order = expected_order(24)
    with running(create_app(root)) as base:
        page = page_factory()
        sign_in(page, base, "Ada")
        expected = {}
        for n in range(20):
            current = item_id(page)
            assert current == order[n]
            machine = page.get_attribute("#item", "data-machine")
            proposal = page.get_attribute("#item", "data-proposal")
            key = ["1", "2", "3", "a", "c"][n % 5]
            expected[current] = {"1": LABELS[0], "2": LABELS[1], "3": LABELS[2], "a": machine, "c": proposal}[
                key
            ]
            page.wait_for_timeout(5)  # a measurable time on the item
            press_and_wait(page, key)
        assert "20 of 24 reviewed" in page.inner_text("#progress-text")
        assert page.get_attribute("#progress-bar", "value") == "20"
        shown = item_id(page)
        page.reload()
        assert item_id(page) == shown  # the lease keeps the same item on reload
        assert page.js_errors == []
    recs = reviews(root)
    assert {r["item_id"]: r["label"] for r in recs} == expected
    assert len(recs) == 20
    assert {r["reviewer"] for r in recs} == {"Ada"} and {r["source"] for r in recs} == {"human"}
    assert all(r["duration_ms"] is not None and r["duration_ms"] > 0 for r in recs)


def test_two_reviewers_at_once_get_distinct_items(tmp_path: Path, page_factory: Any) -> None:
    root = make_project(tmp_path / "p", 10)
    with running(create_app(root)) as base:
        ann, bob = page_factory(), page_factory()
        sign_in(ann, base, "ann")
        sign_in(bob, base, "bob")
        seen_a, seen_b = [item_id(ann)], [item_id(bob)]
        for _ in range(2):
            press_and_wait(ann, "1")
            press_and_wait(bob, "2")
            seen_a.append(item_id(ann))
            seen_b.append(item_id(bob))
        assert not set(seen_a) & set(seen_b)
    recs = reviews(root)
    assert {r["reviewer"] for r in recs} == {"ann", "bob"}
    assert len({r["item_id"] for r in recs}) == 4


def test_xss_payloads_show_as_text_and_do_not_run(tmp_path: Path, page_factory: Any) -> None:
    payloads = [
        '<img src=x onerror="window.__xss = 1">',
        "<script>window.__xss = 2</script>",
        '"><svg onload="window.__xss=3">',
    ]
    root = make_project(tmp_path / "p", 3, texts=payloads, rationale='<img src=y onerror="window.__xss=4">')
    with running(create_app(root)) as base:
        page = page_factory()
        sign_in(page, base, '<b onmouseover="window.__xss=5">eve</b>')
        for _ in payloads:
            text = page.inner_text("#item .text")
            assert text in payloads
            assert page.inner_text("#rationale") == '<img src=y onerror="window.__xss=4">'
            assert page.evaluate("window.__xss") is None
            assert page.query_selector("#item img, #item script, #item svg") is None
            press_and_wait(page, "1")
        assert page.inner_text("#reviewer-name") == '<b onmouseover="window.__xss=5">eve</b>'
        assert page.evaluate("window.__xss") is None


def test_skip_undo_and_filter_keys(tmp_path: Path, page_factory: Any) -> None:
    labels = [f"class {i:02d}" for i in range(30)] + ["zebra"]
    root = make_project(tmp_path / "p", 6, labels=labels)
    order = expected_order(6)
    with running(create_app(root)) as base:
        page = page_factory()
        sign_in(page, base, "sam")
        assert item_id(page) == order[0]
        press_and_wait(page, "s")  # skip
        assert item_id(page) == order[1]
        press_and_wait(page, "2")
        assert item_id(page) == order[2]
        press_and_wait(page, "u")  # re-open the last saved item
        assert item_id(page) == order[1] and page.is_visible("#reopened")
        # The filter box reaches labels beyond the first nine: "/" focuses it, Enter picks the first match.
        page.keyboard.press("/")
        page.keyboard.type("zeb")
        assert page.locator("#labels button:visible").count() == 1
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("#item")
        assert item_id(page) == order[2]
        assert page.js_errors == []
    labels_of = [(r["item_id"], r["label"]) for r in reviews(root)]
    assert labels_of == [(order[1], "class 01"), (order[1], "zebra")]


def test_usable_at_phone_width(tmp_path: Path, page_factory: Any) -> None:
    long_word = "supercalifragilistic" * 8
    root = make_project(tmp_path / "p", 3, texts=[f"a long text {long_word} " * 3] * 3, images=True)
    with running(create_app(root)) as base:
        page = page_factory(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
        sign_in(page, base, "pia")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
        assert page.evaluate("document.querySelector('#item img').naturalWidth") == 1  # the image loaded
        button = page.locator("#labels button").first
        box = button.bounding_box()
        assert box["height"] >= 40 and box["width"] >= 300  # full-width tap targets
        with page.expect_navigation():
            button.tap()
        page.wait_for_selector("#item")
    assert [r["label"] for r in reviews(root)] == [LABELS[0]]


def test_kill_the_server_after_saves_loses_nothing(tmp_path: Path, page_factory: Any) -> None:
    root = make_project(tmp_path / "p", 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "review", str(root), "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "open http" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        url = line.split("open ", 1)[1].split()[0].rstrip("/")
        page = page_factory()
        sign_in(page, url, "kai")
        for key in ("1", "a", "c"):
            press_and_wait(page, key)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    recs = reviews(root)
    assert len(recs) == 3 and {r["reviewer"] for r in recs} == {"kai"}
    with Store.open(root) as store:
        assert len(store.latest("reviews", ["label"])) == 3


def test_multi_label_item_by_keyboard_ticks_and_saves_sets(tmp_path: Path, page_factory: Any) -> None:
    """Issue 15: a multi-label item shows checkboxes ticked with the machine set; number keys toggle
    them, Enter saves the ticked set (none ticked: the empty set), `a` accepts the machine set."""
    from concurrent.futures import ThreadPoolExecutor

    from actlabel import multilabel

    from .test_multilabel import LABELS as ML_LABELS
    from .test_multilabel import make_multilabel_project

    # built in a thread of its own: Playwright's sync API keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        root = pool.submit(make_multilabel_project, tmp_path / "p", 8, budget=3).result()
    with running(create_app(root)) as base:
        page = page_factory()
        sign_in(page, base, "Ada")
        expected = {}
        for step in range(3):
            current = item_id(page)
            machine = set(multilabel.decode(page.get_attribute("#item", "data-machine")))
            ticked = {
                ML_LABELS[i] for i in range(len(ML_LABELS)) if page.is_checked(f'input[data-key="{i + 1}"]')
            }
            assert ticked == machine  # the machine set is pre-ticked
            if step == 0:  # toggle labels 1 and 3, then save
                page.keyboard.press("1")
                page.keyboard.press("3")
                expected[current] = machine ^ {ML_LABELS[0], ML_LABELS[2]}
                press_and_wait(page, "Enter")
            elif step == 1:  # untick everything: the empty set
                for i, name in enumerate(ML_LABELS):
                    if name in machine:
                        page.keyboard.press(str(i + 1))
                expected[current] = set()
                press_and_wait(page, "Enter")
            else:
                expected[current] = machine
                press_and_wait(page, "a")
        assert page.js_errors == []
    got = {r["item_id"]: set(multilabel.decode(r["label"])) for r in reviews(root)}
    assert got == expected
