"""annotate at scale: pending items come from the store page by page, and the label model's pass
reads and writes in batches; both must give what the all-at-once versions gave."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actlabel import annotate as ann
from actlabel import label_model as lm
from actlabel import stages
from actlabel.annotate import annotate
from actlabel.project import Project
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import LABELS, TWEETS
from .helpers_critic import annotate_responder, tweet_of

MODEL = "openai/test-model"


def test_resume_with_pending_items_streamed_in_pages(project: Project, monkeypatch) -> None:
    monkeypatch.setattr(stages, "PENDING_BATCH", 5)
    store = project.store
    pages: list[int] = []
    listed = store.iter_pending_annotation_rowids

    def spy(done_runs, batch):
        for page in listed(done_runs, batch):
            pages.append(len(page))
            yield page

    monkeypatch.setattr(store, "iter_pending_annotation_rowids", spy)
    hopeless = TWEETS[7][0]

    def failing(body):
        return "no idea" if tweet_of(body) == hopeless else annotate_responder(body)

    with OpenAICompatServer(responder=annotate_responder) as srv:
        first = annotate(store, model=MODEL, base_url=srv.base_url, limit=5, progress=False)
    assert (first.done, first.skipped, first.left) == (5, 0, len(TWEETS) - 5)
    assert pages == [5, 5, 2] and first.calls == 5

    with OpenAICompatServer(responder=failing) as srv:
        second = annotate(store, model=MODEL, base_url=srv.base_url, progress=False)
        sent = {tweet_of(r.body) for r in srv.requests}
    # the 5 done items are skipped: not one request for them
    assert sent == {t for t, _g in TWEETS[5:]}
    assert (second.done, second.failed, second.skipped) == (len(TWEETS) - 6, 1, 5)

    store.conn.execute("DELETE FROM model_calls")  # so the retry has to reach the model
    with OpenAICompatServer(responder=annotate_responder) as srv:
        third = annotate(store, model=MODEL, base_url=srv.base_url, progress=False)
        sent = [tweet_of(r.body) for r in srv.requests]
    assert sent == [hopeless]  # the failed item alone is retried
    assert (third.done, third.failed, third.skipped) == (1, 0, len(TWEETS) - 1)
    assert store.current_status_counts("annotations") == {"ok": len(TWEETS)}


def test_pending_rowids_skip_ok_records_of_the_given_runs_only(project: Project) -> None:
    store = project.store
    rowids = store.item_rowids()
    done, other = store.start_run("annotate", {}), store.start_run("annotate", {})
    base = {"model": "m", "label": "positive"}
    store.add_annotations(
        [
            base | {"item_rowid": rowids[0], "run_id": done, "status": "ok"},
            base | {"item_rowid": rowids[1], "run_id": done, "status": "ok"},
            base | {"item_rowid": rowids[1], "run_id": other, "status": "failed"},  # the latest counts
            base | {"item_rowid": rowids[2], "run_id": other, "status": "ok"},  # other settings
            base | {"item_rowid": rowids[3], "run_id": done, "status": "failed"},
        ]
    )
    pages = list(store.iter_pending_annotation_rowids([done], batch=4))
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [r for p in pages for r in p] == rowids[1:]
    assert [r for p in store.iter_pending_annotation_rowids([], batch=100) for r in p] == rowids
    todo, skipped = stages.pending_items(store, "no such settings", None)
    assert list(todo) == rowids and skipped == 0


def _reference_pass(llm: np.ndarray, zero: ann.ZeroReviewModel) -> tuple[lm.Pooling, np.ndarray]:
    """What the label model's pass computed when it held every item's distribution at once."""
    log_prior = np.log(lm.pool_prior(np.exp(llm)))
    pooling = lm.choose_pooling(
        zero.example_labels, zero.example_llm_logp, zero.example_logq, log_prior, source="examples"
    )
    return pooling, pooling.combine(llm, zero.probe_logq)


@pytest.mark.parametrize("batch", [3, 20000])
def test_label_model_pass_in_batches_matches_the_whole_pool(
    project: Project, monkeypatch, batch: int
) -> None:
    monkeypatch.setattr(ann, "LABEL_MODEL_BATCH", batch)
    store = project.store
    rowids = store.item_rowids()
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=len(rowids))
    run_id = store.start_run("annotate", {"settings": "s"})
    store.add_annotations(
        {
            "item_rowid": r,
            "run_id": run_id,
            "model": MODEL,
            "label": LABELS[int(p.argmax())],
            "status": "ok",
            "probs": json.dumps({n: round(float(v), 6) for n, v in zip(LABELS, p, strict=True)}),
        }
        for r, p in zip(rowids, probs, strict=True)
    )
    n_ex = 9
    ex_labels = np.arange(n_ex) % len(LABELS)
    zero = ann.ZeroReviewModel(
        example_llm_logp=lm.safe_log(rng.dirichlet(np.ones(len(LABELS)), size=n_ex)),
        example_labels=ex_labels,
        example_logq=lm.safe_log(np.eye(len(LABELS))[ex_labels] * 0.7 + 0.1),
        probe_logq=lm.safe_log(rng.dirichlet(np.ones(len(LABELS)), size=len(rowids))),
        features="test",
        probe_rowids=np.array(rowids, dtype=np.int64),
    )
    params = ann.finish_label_model(store, zero, run_id, "s", MODEL)

    stored = [json.loads(store.latest("annotations", ("probs",), rowids=[r])[r][0]) for r in rowids]
    llm = lm.safe_log(np.array([[d[n] for n in LABELS] for d in stored]))
    pooling, pooled = _reference_pass(llm, zero)
    assert params is not None and (params["a"], params["b"]) == (pooling.a, pooling.b)
    assert params["log_prior"] == pytest.approx(pooling.log_prior.tolist(), abs=1e-12)
    assert pooling.b > 0  # the probe's scores took part
    latest = store.latest("annotations", ("label", "confidence", "run_id", "probs"))
    pass_id = latest[rowids[0]][2]
    assert pass_id != run_id
    for j, r in enumerate(rowids):
        label, confidence, record_run, carried = latest[r]
        assert record_run == pass_id
        assert label == LABELS[int(pooled[j].argmax())]
        assert confidence == pytest.approx(float(pooled[j].max()), abs=1e-9)
        assert json.loads(carried) == stored[j]  # the annotator's own distribution, unchanged
