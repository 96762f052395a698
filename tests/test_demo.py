"""The main job end to end: real tweets, a real llama.cpp model (the tiny one, for speed), every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actlabel.store import Store

pytestmark = pytest.mark.slow


def run_demo(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actlabel.cli", "demo", "--size", "60", "--model", "local/smollm2",
         "--dir", str(directory), "--no-progress", "--llm-critic", "logit"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_demo_runs_every_stage_and_reruns_from_cache(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    first = run_demo(directory)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Downstream test accuracy" in first.stdout and "report:" in first.stdout
    report = (directory / "report.html").read_text()
    assert "data:image/png;base64," in report
    with Store.open(directory) as store:
        downstream = json.loads(store.get_meta("downstream"))
        assert [r["training data"] for r in downstream["rows"]][:2] == [
            "full human labels",
            "full machine labels",
        ]
        assert store.count("annotations") >= 60
        strategies = {r[0] for r in store.conn.execute("SELECT DISTINCT strategy FROM critiques")}
        assert {"logit", "learned"} <= strategies
        assert store.count("reviews") > 0
        calls_before = sum(r["calls"] for r in store.runs())
    second = run_demo(directory)
    assert second.returncode == 0, second.stderr[-3000:]
    with Store.open(directory) as store:
        assert sum(r["calls"] for r in store.runs()) == calls_before  # everything came from the cache


def test_demo_refuses_a_folder_holding_something_else(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "actlabel.cli", "demo", "--dir", str(tmp_path / "busy")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and "not empty" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("dataset", ["reuters", "fashion", "fashion-captions"])
def test_every_documented_dataset_runs_end_to_end(tmp_path: Path, dataset: str) -> None:
    args = ["--dataset", dataset, "--size", "40", "--test-size", "40", "--dir", str(tmp_path / dataset)]
    if dataset != "fashion":
        args += ["--model", "local/smollm2"]
    r = subprocess.run(
        [sys.executable, "-m", "actlabel.cli", "demo", *args, "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())  # the summary table wraps its cells at the terminal's width
    assert "Downstream test accuracy" in out and "random review, same" in out
    assert "of the machine-to-human gap" in out or "no gap to close" in out


def test_the_residual_line_never_shows_a_point_outside_what_is_possible() -> None:
    from actlabel.demo import residual_line
    from actlabel.metrics import ResidualErrorEstimate

    def est(value: float) -> ResidualErrorEstimate:
        return ResidualErrorEstimate(
            value, 71.0, 480.0, 120.0, 0.95, 480, 120, 52, value + 52, 200.0, True, ""
        )

    line = residual_line(est(514.3))
    assert "about 480 " in line and "unbiased estimate 514" in line and "71 to 480" in line
    assert "about 0 " in residual_line(est(-12.0))
    assert residual_line(est(150.2)).endswith("(95% CI 71 to 480)")
