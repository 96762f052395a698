"""Annotator and white-box critics through in-process llama.cpp with a real (tiny) model.

SmolLM2-135M labels at chance: these tests check the plumbing only (constrained choices, choice
and token probabilities, assistant prefill, records in the store), not quality.
"""

from __future__ import annotations

import json

import pytest

from actlabel.annotate import annotate
from actlabel.critique import critique
from actlabel.project import Project

pytestmark = pytest.mark.slow

MODEL = "local/smollm2"


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp")
    from actlabel.models import ModelError, load_backend

    try:
        backend = load_backend(MODEL, n_ctx=2048, n_threads=2)
    except ModelError as exc:
        pytest.skip(str(exc))
    yield backend
    backend.close()


@pytest.fixture
def small_project(project: Project) -> Project:
    return project


def test_llama_annotator_gives_label_confidences(small_project: Project, smollm2) -> None:
    store = small_project.store
    result = annotate(store, backend=smollm2, progress=False, limit=4)
    assert result.done == 4 and result.failed == 0 and result.model == MODEL
    rows = store.conn.execute("SELECT label, confidence, status FROM annotations").fetchall()
    for label, conf, status in rows:
        assert status == "ok" and label in store.task.label_names
        assert 0.0 < conf <= 1.0  # normalised over the 3 labels: at least 1/3 for the chosen one
        assert conf >= 1 / 3 - 1e-9
    again = annotate(store, backend=smollm2, progress=False, limit=2)
    assert again.skipped == 4 and again.done == 2 and again.left == len(store.item_rowids()) - 6


@pytest.mark.parametrize("strategy", ["logit", "cot-logit", "cot-ppl"])
def test_white_box_critics_through_llama(small_project: Project, smollm2, strategy: str) -> None:
    store = small_project.store
    annotate(store, backend=smollm2, progress=False, limit=2)
    result = critique(store, backend=smollm2, strategy=strategy, progress=False, reasoning_tokens=16)
    assert result.done == 2 and result.failed == 0, result.errors
    rows = store.conn.execute(
        "SELECT error_prob, proposed_label, rationale, raw, status FROM critiques WHERE strategy = ?",
        (strategy,),
    ).fetchall()
    assert len(rows) == 2
    for e, proposed, rationale, raw, status in rows:
        assert status == "ok" and 0.0 <= e <= 1.0
        assert proposed is None or proposed in store.task.label_names
        assert rationale
        data = json.loads(raw)
        assert data["machine_label"] in store.task.label_names
        if strategy == "cot-ppl":
            assert data["log_ppl"] > 0
    if strategy == "cot-ppl":
        assert sorted(r[0] for r in rows) == pytest.approx([1 / 4, 3 / 4])  # ranks over 2 items


def test_cot_annotation_then_devil_through_llama(small_project: Project, smollm2) -> None:
    store = small_project.store
    result = annotate(store, backend=smollm2, progress=False, limit=2, cot=True, reasoning_tokens=24)
    # a 135M model rarely reaches `Answer:` in 24 tokens: the constrained continuation finishes it
    assert result.done == 2
    reasons = [r[0] for r in store.conn.execute("SELECT reasoning FROM annotations")]
    assert all(reasons)
    out = critique(store, backend=smollm2, strategy="devil", progress=False, reasoning_tokens=24, limit=2)
    assert out.done + out.failed == 2


def test_cli_local_model_options_reach_the_critic(tmp_path) -> None:
    """--n-ctx and --threads on `critique` go to the embedded critic: a context too small for the
    critic's prompt fails every item with the reason, one that fits succeeds."""
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys

    from .conftest import TWEETS, write_csv

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "actlabel.cli", *args], capture_output=True, text=True, timeout=300
        )

    proj = str(tmp_path / "proj")
    # items of ~400 tokens: more than a 256-token context holds, well within 2048
    data = write_csv(tmp_path / "t.csv", [{"text": " ".join([t] * 25), "gold": g} for t, g in TWEETS[:3]])
    assert cli("init", proj, "--labels", "positive,negative,neutral").returncode == 0
    assert cli("import", proj, str(data), "--text", "text", "--gold", "gold").returncode == 0
    r = cli("annotate", proj, "--model", MODEL, "--label-model", "off", "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("critique", proj, "--strategy", "logit", "--model", MODEL, "--n-ctx", "256", "--no-progress")
    assert r.returncode == 1 and "context" in r.stderr, (r.stdout, r.stderr)
    r = cli("critique", proj, "--strategy", "logit", "--model", MODEL, "--n-ctx", "2048", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "3 ok" in r.stdout or "done 3" in r.stdout or "3 criticized" in r.stdout, r.stdout
    r = cli("critique", proj, "--strategy", "consistency", "--threads", "2")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--threads" in r.stderr, r.stderr
