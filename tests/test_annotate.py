"""Stage 1 end to end: through the loopback OpenAI-compatible server, the scripted backend, and
the offline image annotator on real EfficientNet-Lite0 features."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from actlabel.annotate import annotate
from actlabel.errors import UserError
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project
from actlabel.stages import resolve_annotator
from actlabel.task import Example
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import LABELS, TWEETS, write_csv
from .helpers_critic import GOLD, WRONG, annotate_responder, tweet_of

MODEL = "openai/test-model"


def annotations(store) -> dict[str, tuple]:
    """tweet -> (label, confidence, status, reasoning, raw, error) of its latest annotation."""
    rows = store.conn.execute(
        "SELECT i.data, a.label, a.confidence, a.status, a.reasoning, a.raw, a.error FROM annotations a "
        "JOIN items i ON i.rowid = a.item_rowid ORDER BY a.id"
    ).fetchall()
    return {json.loads(r[0])["text"]: r[1:] for r in rows}


def test_annotate_through_endpoint_labels_every_item_with_confidence(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        result = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        calls = srv.calls
        body = srv.requests[0].body
    got = annotations(project.store)
    assert len(got) == len(TWEETS)
    for tweet, (label, conf, status, *_rest) in got.items():
        assert status == "ok"
        assert label == (WRONG.get(tweet) or GOLD[tweet])
        # confidence: the first answer token's top alternatives, normalised over the labels
        assert conf == pytest.approx(0.5 if tweet in WRONG else 0.8, abs=1e-6)
    assert calls == len(TWEETS)
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert "Answer with the label only" in body["messages"][-1]["content"]
    assert result.done == len(TWEETS) and result.failed == 0 and result.calls == len(TWEETS)
    assert result.accuracy == pytest.approx(1 - len(WRONG) / len(TWEETS))
    line = str(result)
    assert "\n" not in line and "12 ok" in line and "accuracy vs gold 0.750" in line


def test_rerun_makes_zero_new_calls_and_skips_done_items(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        first = srv.calls
        again = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        assert srv.calls == first
    assert again.skipped == len(TWEETS) and again.done == 0 and again.calls == 0
    assert project.store.count("annotations") == len(TWEETS)


def test_cached_answers_are_free_when_records_must_be_rewritten(project: Project) -> None:
    """Changing settings back and forth re-annotates, but answers already paid come from the cache."""
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False, cot=True)
        paid = srv.calls
        back = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        assert srv.calls == paid
    assert back.done == len(TWEETS) and back.calls == 0 and back.cache_hits == len(TWEETS)


def test_limit_annotates_only_the_first_items_left(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        first = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False, limit=5)
        assert first.done == 5 and first.left == len(TWEETS) - 5
        rest = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False, limit=100)
    assert rest.skipped == 5 and rest.done == len(TWEETS) - 5 and rest.left == 0


def test_malformed_answers_are_retried_then_stored_as_failed_with_raw_text(project: Project) -> None:
    hopeless, flaky = TWEETS[0][0], TWEETS[3][0]
    seen: dict[str, int] = {}

    def responder(body):
        tweet = tweet_of(body)
        seen[tweet] = seen.get(tweet, 0) + 1
        if tweet == hopeless:
            return f"I am not sure what to say (try {seen[tweet]})"
        if tweet == flaky and seen[tweet] == 1:
            return "Hmm, hard to tell."
        return annotate_responder(body)

    with OpenAICompatServer(responder=responder) as srv:
        result = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        bodies = [r.body for r in srv.requests if tweet_of(r.body) == hopeless]
        # A re-run retries the failed item only, and the cache answers it (the model is deterministic).
        paid = srv.calls
        again = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
        assert srv.calls == paid
    got = annotations(project.store)
    label, conf, status, _reasoning, raw, error = got[hopeless]
    assert status == "failed" and label is None and conf is None
    assert raw == "I am not sure what to say (try 3)"  # the last answer, kept verbatim
    assert "3 attempts" in error and "not one of the labels" in error
    assert seen[hopeless] == 3  # asked once, re-asked twice
    assert len({b["seed"] for b in bodies}) == 3 and bodies[1]["temperature"] > 0  # re-asks vary
    assert got[flaky][2] == "ok" and got[flaky][0] == GOLD[flaky]
    assert result.failed == 1 and result.done == len(TWEETS) - 1
    assert again.skipped == len(TWEETS) - 1 and again.failed == 1


def test_transport_failures_are_recorded_as_failed(project: Project) -> None:
    bad = TWEETS[2][0]
    with OpenAICompatServer(
        responder=annotate_responder, faults=lambda n, body: "400" if tweet_of(body) == bad else None
    ) as srv:
        result = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
    label, _c, status, _r, _raw, error = annotations(project.store)[bad]
    assert status == "failed" and label is None and "HTTP 400" in error
    assert result.failed == 1 and result.done == len(TWEETS) - 1


def test_cot_stores_reasoning_and_reads_confidence_after_answer(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        result = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False, cot=True)
    got = annotations(project.store)
    for tweet, (label, conf, status, reasoning, raw, _e) in got.items():
        assert status == "ok" and label == (WRONG.get(tweet) or GOLD[tweet])
        assert reasoning == f"The tweet reads as {label} to me."
        assert raw.endswith(f"Answer: {label}")
        # the server's default logprobs put the spoken token first among alternatives that are
        # not labels, so the label gets all the probability mass among the labels
        assert conf == pytest.approx(1.0)
    assert result.mode == "chain-of-thought"


def test_cot_cut_off_before_the_answer_is_finished_by_a_constrained_continuation(project: Project) -> None:
    def responder(body):
        last = body["messages"][-1]
        if last["role"] == "assistant":  # the continuation: answer the label
            return GOLD[tweet_of(body)]
        return "Let me think about the tone of this tweet, which seems"

    with OpenAICompatServer(responder=responder) as srv:
        result = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False, cot=True)
        prefills = [
            r.body["messages"][-1]["content"]
            for r in srv.requests
            if r.body["messages"][-1]["role"] == "assistant"
        ]
    assert result.done == len(TWEETS) and result.calls == 2 * len(TWEETS)
    assert prefills and all(p.endswith("which seems\nAnswer:") for p in prefills)
    for tweet, (label, _c, _s, reasoning, raw, _e) in annotations(project.store).items():
        assert label == GOLD[tweet] and reasoning.endswith("which seems") and raw.endswith(f"Answer:{label}")


def test_few_shot_examples_are_sent_as_chat_turns(tmp_path: Path, tweets_csv: Path) -> None:
    proj = Project.init(
        tmp_path / "p",
        LABELS,
        instructions="Classify the sentiment.",
        examples=[Example("positive", "Sunny and happy"), Example("negative", "Rainy and sad")],
    )
    proj.import_file(tweets_csv, text_columns=["text"], gold_column="gold")
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(proj.store, model=MODEL, base_url=srv.base_url, progress=False, limit=1)
        msgs = srv.requests[0].body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Sunny and happy" in msgs[1]["content"] and msgs[2]["content"] == "positive"
    proj.close()


def test_scripted_backend_without_logprobs_gives_no_confidence(project: Project) -> None:
    def gold_answer(request) -> str:
        return GOLD[tweet_of({"messages": [{"role": "user", "content": request.messages[-1].plain_text}]})]

    backend = ScriptedBackend(gold_answer)
    result = annotate(project.store, backend=backend, progress=False)
    assert result.done == len(TWEETS) and result.accuracy == 1.0
    assert all(conf is None for _l, conf, *_ in annotations(project.store).values())
    assert result.model == "scripted/default"


def test_bad_requests_are_one_line_user_errors(project: Project, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="limit"):
        annotate(project.store, backend=ScriptedBackend("positive"), limit=0, progress=False)
    with pytest.raises(UserError, match="max-cost"):
        annotate(project.store, backend=ScriptedBackend("positive"), max_cost=-1, progress=False)
    empty = Project.init(tmp_path / "empty", LABELS)
    with pytest.raises(UserError, match="no items"):
        annotate(empty.store, backend=ScriptedBackend("positive"), progress=False)
    empty.close()


def test_cost_cap_stops_cleanly_and_a_rerun_resumes(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        first = annotate(
            project.store,
            model=MODEL,
            base_url=srv.base_url,
            progress=False,
            max_run_tokens=300,
            concurrency=1,
        )
        assert first.stopped and 0 < first.done < len(TWEETS)
        assert "stopped" in str(first)
        second = annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
    assert second.skipped == first.done and second.done == len(TWEETS) - first.done


# ---- images -------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle")


def draw_shape(path: Path, shape: str, rng: random.Random) -> Path:
    from PIL import Image, ImageDraw

    size = 96
    img = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    r = rng.randint(22, 34)
    cx, cy = rng.randint(r + 4, size - r - 4), rng.randint(r + 4, size - r - 4)
    color = tuple(rng.randint(0, 120) for _ in range(3))
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    img.save(path)
    return path


def make_shapes_project(tmp_path: Path) -> Project:
    """3 shapes x 8 generated images, 4 example images per shape; the caller closes it."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    rng = random.Random(7)
    examples = []
    for shape in SHAPES:
        for k in range(4):
            p = draw_shape(tmp_path / f"ex_{shape}_{k}.png", shape, rng)
            examples.append(Example(shape, image=str(p)))
    folder = tmp_path / "images"
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True)
        for k in range(8):
            draw_shape(folder / shape / f"{k}.png", shape, rng)
    proj = Project.init(
        tmp_path / "shapes", list(SHAPES), instructions="Which shape is drawn?", examples=examples
    )
    proj.import_file(folder)
    return proj


@pytest.fixture
def shapes_project(tmp_path: Path):
    proj = make_shapes_project(tmp_path)
    yield proj
    proj.close()


def test_offline_image_annotator_learns_from_few_shot_example_images(shapes_project: Project) -> None:
    store = shapes_project.store
    assert resolve_annotator(store, None) == "features/efficientnet-lite0"
    result = annotate(store, progress=False)
    assert result.done == 24 and result.failed == 0
    assert result.model.startswith("features/efficientnet-lite0")
    assert result.accuracy >= 0.75, str(result)
    rows = store.conn.execute("SELECT label, confidence, raw FROM annotations").fetchall()
    for label, conf, raw in rows:
        probs = json.loads(raw)
        assert set(probs) == set(SHAPES) and sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert conf == pytest.approx(max(probs.values()), abs=1e-5) and probs[label] == max(probs.values())
    assert (store.root / ".features" / "efficientnet-lite0.npy").exists()  # features cached per image
    again = annotate(store, progress=False)
    assert again.skipped == 24 and again.done == 0


def test_image_annotator_needs_an_example_image_per_label(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rng = random.Random(1)
    folder = tmp_path / "imgs"
    (folder / "circle").mkdir(parents=True)
    draw_shape(folder / "circle" / "a.png", "circle", rng)
    ex = draw_shape(tmp_path / "ex.png", "circle", rng)
    proj = Project.init(tmp_path / "p", list(SHAPES), examples=[Example("circle", image=str(ex))])
    proj.import_file(folder)
    with pytest.raises(UserError, match="has none for 2 label"):
        annotate(proj.store, progress=False)
    proj.close()


def test_text_models_that_cannot_see_images_are_refused(shapes_project: Project) -> None:
    with pytest.raises(UserError, match="cannot see images"):
        annotate(
            shapes_project.store, backend=ScriptedBackend("circle", supports_images=False), progress=False
        )


def test_images_go_to_a_multimodal_endpoint_as_image_parts(shapes_project: Project) -> None:
    with OpenAICompatServer(responder=lambda body: "circle") as srv:
        result = annotate(shapes_project.store, model=MODEL, base_url=srv.base_url, progress=False, limit=2)
        images = srv.requests[-1].images()
    assert result.done == 2
    # 12 few-shot example images + the item's own
    assert len(images) == 13 and all(mime == "image/png" for mime, _ in images)


def _captioned_shapes(
    tmp_path: Path, example_text: Callable[[str], str], caption: Callable[[str], str], seed: int
) -> Project:
    """An image+text project: 3 example images and 4 items a shape, each with a caption."""
    rng = random.Random(seed)
    examples = [
        Example(s, text=example_text(s), image=str(draw_shape(tmp_path / f"e{s}{k}.png", s, rng)))
        for s in SHAPES
        for k in range(3)
    ]
    rows = []
    for s in SHAPES:
        for k in range(4):
            p = draw_shape(tmp_path / f"i{s}{k}.png", s, rng)
            rows.append({"caption": caption(s), "image": p.name, "gold": s})
    table = write_csv(tmp_path / "items.csv", rows)
    proj = Project.init(tmp_path / "mm", list(SHAPES), examples=examples)
    proj.import_file(table, text_columns=["caption"], image_column="image", gold_column="gold")
    return proj


def test_image_and_text_offline_composite_pools_both_experts(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proj = _captioned_shapes(tmp_path, lambda s: f"a {s}", lambda s: f"a picture of a {s}", seed=3)
    store = proj.store
    assert resolve_annotator(store, None).startswith("composite/efficientnet-lite0+local/default")

    def text_expert(req):  # a text model that reads the caption, 60% sure
        return next(s for s in SHAPES if f"a {s}" in req.messages[-1].plain_text.split("caption: ")[-1])

    def probs(req, answer):
        return {c: (0.6 if c == answer else 0.2) for c in req.choices}

    backend = ScriptedBackend(text_expert, name="text", choice_logprobs=probs, supports_images=False)
    result = annotate(
        store, model="composite/efficientnet-lite0+scripted/text", backend=backend, progress=False
    )
    assert result.done == 12 and result.accuracy == 1.0
    assert backend.requests and all(r.choices == SHAPES for r in backend.requests)
    for raw, conf in store.conn.execute("SELECT raw, confidence FROM annotations"):
        pooled = json.loads(raw)["pooled"]
        assert sum(pooled.values()) == pytest.approx(1, abs=1e-4) and conf == pytest.approx(
            max(pooled.values()), abs=1e-5
        )
    proj.close()


def test_composite_label_model_divides_out_the_text_models_prior(tmp_path: Path) -> None:
    """Captions that say nothing and a text model sure of one label (as the 0.5B on Fashion-MNIST
    captions): pooled raw, its prior outvotes the images; through the label model (the image
    classifier as the probe, the text model's pool prior divided out) the images decide."""
    pytest.importorskip("torch")
    proj = _captioned_shapes(tmp_path, lambda s: "a photo", lambda s: "a photo", seed=5)

    def sure_of_the_first(req, answer):
        return {c: (0.996 if c == SHAPES[0] else 0.002) for c in req.choices}

    def backend() -> ScriptedBackend:
        return ScriptedBackend(
            SHAPES[0], name="text", choice_logprobs=sure_of_the_first, supports_images=False
        )

    model = "composite/efficientnet-lite0+scripted/text"
    raw = annotate(proj.store, model=model, backend=backend(), progress=False, label_model="off")
    pooled = annotate(proj.store, model=model, backend=backend(), progress=False, label_model="on")
    assert raw.accuracy is not None and raw.accuracy < 0.5  # the prior wins when pooled raw
    assert pooled.accuracy == 1.0
    how = proj.store.conn.execute(
        "SELECT params FROM runs WHERE stage = 'annotate' ORDER BY rowid DESC LIMIT 1"
    ).fetchone()[0]
    assert json.loads(how)["label_model"]["features"] == "efficientnet-lite0", how
    proj.close()


def test_interrupted_run_keeps_every_answer_it_was_given(project: Project) -> None:
    import sqlite3

    from actlabel.store import DB_NAME

    answered: list[str] = []

    def answer(request) -> str:
        answered.append(request.messages[-1].plain_text)
        return "positive"

    backend = ScriptedBackend(answer, faults={8: KeyboardInterrupt})
    with pytest.raises(KeyboardInterrupt):
        annotate(project.store, backend=backend, concurrency=3, progress=False, label_model="off")
    # Read as another process would, before the store is closed (closing also writes what waits).
    conn = sqlite3.connect(project.store.root / DB_NAME)
    try:
        cached = conn.execute("SELECT count(*) FROM model_calls").fetchone()[0]
        ok = conn.execute("SELECT count(*) FROM annotations WHERE status = 'ok'").fetchone()[0]
        status = conn.execute("SELECT status FROM runs WHERE stage = 'annotate'").fetchall()
    finally:
        conn.close()
    assert len(answered) == 7
    assert cached == ok == len(answered)
    assert status == [("interrupted",)]
