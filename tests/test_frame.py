"""`actlabel.label(df, ...)`: the pipeline over a DataFrame, through real model paths (the loopback
OpenAI-compatible server, the scripted backend, and SmolLM2 in process), into real projects."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import actlabel
from actlabel.errors import UserError
from actlabel.frame import OUTPUT_COLUMNS
from actlabel.models.scripted import ScriptedBackend, request_text
from actlabel.project import Project
from actlabel.store import DB_NAME, Store
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import LABELS, TWEETS
from .helpers_critic import GOLD, WRONG, annotate_responder, annotator_label, critic_responder

pd = pytest.importorskip("pandas")

MODEL = "openai/test-model"


def responder(body: dict) -> object:
    is_critic = "Machine label" in str(body["messages"]) or 'Is "' in str(body["messages"])
    return critic_responder(body) if is_critic else annotate_responder(body)


def tweets_frame() -> object:
    # A string index and a column actlabel does not use: both must come back as they were.
    return pd.DataFrame(
        {"text": [t for t, _ in TWEETS], "gold": [g for _, g in TWEETS], "source": range(len(TWEETS))},
        index=[f"row-{i}" for i in range(len(TWEETS))],
    )


@pytest.fixture
def endpoint():
    with OpenAICompatServer(responder=responder) as srv:
        yield srv


def run(df, srv, **kw):
    opts = dict(labels=LABELS, text="text", gold="gold", model=MODEL, base_url=srv.base_url, budget=3,
                uniform=0.0, progress=False)  # fmt: skip
    return actlabel.label(df, **(opts | kw))


def test_label_adds_the_export_columns_in_the_input_order(endpoint) -> None:
    df = tweets_frame()
    before = df.copy()
    out = run(df, endpoint)
    pd.testing.assert_frame_equal(df, before)  # the input is not touched
    assert list(out.columns) == [*df.columns, *OUTPUT_COLUMNS]
    assert list(out.index) == list(df.index) and list(out["source"]) == list(df["source"])
    assert list(out["machine_label"]) == [annotator_label(t) for t in df["text"]]
    assert list(out["gold_label"]) == [GOLD[t] for t in df["text"]]
    flagged = set(out.loc[out["error_prob"] >= 0.5, "text"])
    assert flagged == set(WRONG)
    # budget 3, threshold rule: exactly the three machine errors go to review, with pi = 1
    assert set(out.loc[out["selected"] == 1, "text"]) == set(WRONG)
    assert out.loc[out["selected"] == 1, "review_prob"].tolist() == [1.0, 1.0, 1.0]
    assert out["reviewed"].sum() == 0 and out["human_label"].isna().all()
    assert (out["final_label"] == out["machine_label"]).all() and set(out["label_source"]) == {"machine"}
    assert out["selected"].dtype == "Int8" and out["error_prob"].dtype == "float64"
    assert out["item_id"].is_unique
    assert out.attrs["actlabel"]["directory"] is None  # a temporary project, gone now


def test_a_kept_directory_resumes_and_keeps_its_selection(endpoint, tmp_path: Path) -> None:
    df = tweets_frame()
    first = run(df, endpoint, directory=tmp_path / "proj")
    calls = endpoint.calls
    again = run(df, endpoint, directory=tmp_path / "proj", budget="50%")
    assert endpoint.calls == calls  # nothing paid twice: stage resume and the response cache
    pd.testing.assert_frame_equal(first, again)
    assert "kept the selection" in again.attrs["actlabel"]["summary"][-1]
    with Project(tmp_path / "proj") as project:
        assert project.status().items == len(TWEETS)
        assert project.status().selected == 3


def test_identical_rows_stay_distinct_items(endpoint) -> None:
    df = pd.DataFrame({"text": [TWEETS[0][0], TWEETS[1][0], TWEETS[0][0]]})
    out = run(df, endpoint, gold=None, budget=1)
    assert out["item_id"].is_unique
    assert out["machine_label"].tolist() == [annotator_label(t) for t in df["text"]]


def test_a_hugging_face_dataset_comes_back_as_a_dataset(endpoint) -> None:
    datasets = pytest.importorskip("datasets")
    df = tweets_frame().reset_index(drop=True)
    ds = datasets.Dataset.from_pandas(df, preserve_index=False)
    out = run(ds, endpoint)
    assert isinstance(out, datasets.Dataset)
    assert out.column_names == [*ds.column_names, *OUTPUT_COLUMNS]
    assert out.features["source"] == ds.features["source"]
    expected = run(df, endpoint)
    for column in ("item_id", "machine_label", "selected", "final_label"):
        assert out[column] == expected[column].tolist()


def test_a_backend_object_and_a_running_event_loop(tmp_path: Path) -> None:
    """A notebook cell runs inside an event loop; a ready backend stands in for a spec."""

    def answer(request) -> str:
        text = request_text(request)
        tweet = next(t for t, _ in TWEETS if t in text)
        if "Machine label" in text:
            wrong = tweet in WRONG
            return f"Correct label: {GOLD[tweet]}\nProbability wrong: {0.9 if wrong else 0.1}\nReason: it reads so."
        return annotator_label(tweet)

    backend = ScriptedBackend(answer, name="frame")
    df = tweets_frame()

    async def cell():
        return actlabel.label(df, labels=LABELS, model=backend, budget=3, uniform=0.0, progress=False)

    out = asyncio.run(cell())
    assert set(out.loc[out["selected"] == 1, "text"]) == set(WRONG)
    assert backend.calls == 2 * len(TWEETS)  # one annotation and one critique per item


@pytest.mark.parametrize(
    ("make", "kw", "message"),
    [
        (lambda: pd.DataFrame({"text": []}), {}, "the DataFrame is empty"),
        (lambda: pd.DataFrame({"body": ["a"], "other": ["b"]}), {}, "say which column holds the text"),
        (lambda: pd.DataFrame({"body": ["a"]}), {"text": "text"}, "text column 'text' not found"),
        (lambda: pd.DataFrame({"text": ["a", " "]}), {}, "row 2: empty text in column 'text'"),
        (
            lambda: pd.DataFrame({"text": ["a", "b"], "gold": ["positive", "happy"]}, index=["x", "y"]),
            {"gold": "gold"},
            "row 2 (index 'y'): gold label 'happy' in column 'gold' is not one of the labels",
        ),
        (lambda: pd.DataFrame({"text": ["a"]}), {"labels": "positive,negative"}, "a list of names"),
        (lambda: pd.DataFrame({"text": ["a"]}), {"labels": ["positive"]}, "at least 2 labels"),
        (lambda: pd.DataFrame({"text": ["a"]}), {"budget": 5}, "larger than the 1 items"),
        (lambda: pd.DataFrame({"text": ["a"]}), {"budget": 1.5}, "between 0 and 1"),
        (
            lambda: [{"text": "a"}],
            {},
            "takes a pandas DataFrame or a Hugging Face datasets.Dataset, not a list",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, make, kw, message) -> None:
    target = tmp_path / "proj"
    with pytest.raises(UserError) as err:
        actlabel.label(make(), **({"labels": LABELS, "directory": target, "progress": False} | kw))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not target.exists()  # refused before a project was made


def test_a_dataset_dict_is_told_to_pick_a_split() -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})})
    with pytest.raises(UserError, match=re.escape("pick a split")):
        actlabel.label(dd, labels=LABELS)


def test_an_existing_project_with_other_labels_is_left_alone(endpoint, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    run(tweets_frame(), endpoint, directory=root)
    db = (root / DB_NAME).read_bytes()
    with pytest.raises(UserError, match="is a project with the labels positive, negative, neutral"):
        run(tweets_frame(), endpoint, directory=root, labels=["yes", "no"], gold=None)
    other = pd.DataFrame({"body": ["something new"]})
    with pytest.raises(UserError, match="text columns text, not body"):
        run(other, endpoint, directory=root, text="body", gold=None)
    assert (root / DB_NAME).read_bytes() == db
    with Store.open(root) as store:
        assert store.count_items() == len(TWEETS)


def test_image_cells_as_bytes_are_written_into_the_project(endpoint, tmp_path: Path) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    png = buffer.getvalue()
    df = pd.DataFrame(
        {
            "text": [t for t, _ in TWEETS[:3]],
            "picture": [png, Image.new("RGB", (4, 4), "blue"), {"bytes": png}],
        }
    )
    out = run(df, endpoint, image="picture", gold=None, budget=1, directory=tmp_path / "proj")
    assert out["machine_label"].tolist() == [annotator_label(t) for t, _ in TWEETS[:3]]
    assert (
        len(list((tmp_path / "proj" / "images").iterdir())) == 2
    )  # content-addressed: bytes twice, one file
    with Store.open(tmp_path / "proj") as store:
        paths = {it.image_path for it in store.iter_items()}
    assert len(paths) == 2
    assert {Path(p).parent for p in paths} == {(tmp_path / "proj" / "images").resolve()}


@pytest.mark.slow
def test_the_embedded_model_path() -> None:
    """SmolLM2-135M in process: the plumbing of the embedded default, not its quality."""
    pytest.importorskip("llama_cpp")
    df = pd.DataFrame({"text": [t for t, _ in TWEETS[:4]]})
    out = actlabel.label(df, labels=LABELS, model="local/smollm2", strategy="logit", budget=2, progress=False)
    assert set(out["machine_label"]) <= set(LABELS) and out["machine_label"].notna().all()
    assert out["error_prob"].between(0, 1).all()
    assert int(out["selected"].sum()) == 2


def test_a_failing_critic_is_named_and_the_paid_work_kept(tmp_path: Path) -> None:
    def annotator(request) -> str:
        return annotator_label(next(t for t, _ in TWEETS if t in request_text(request)))

    annotate_backend, critic = ScriptedBackend(annotator, name="a"), ScriptedBackend("no idea", name="c")
    kw = dict(
        labels=LABELS, model=annotate_backend, critic_model=critic, progress=False, directory=tmp_path / "p"
    )
    with pytest.raises(
        UserError, match=r"the critic failed on 12 items \(most common: .*Probability wrong"
    ) as err:
        actlabel.label(tweets_frame(), **kw)
    assert "call label() again" in str(err.value) and "\n" not in str(err.value)
    calls = annotate_backend.calls
    with pytest.raises(UserError):
        actlabel.label(tweets_frame(), **kw)
    assert annotate_backend.calls == calls  # the annotations were kept: only the critic is asked again


def test_multi_label_frame_returns_list_columns(tmp_path: Path) -> None:
    """Issue 15: multi_label=True takes gold sets (lists or `a|b`) and returns the label columns
    as lists; a gold cell with an unknown label is one line naming the row, nothing written."""
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {"text": ["oil tanker", "wheat crop", "a quiet day"], "gold": [["crude", "ship"], "grain", []]}
    )

    def yes_no(request: object) -> str:
        last = request.messages[-1].plain_text
        item, label = last.split("\n")[0], last.split('"')[1]
        wanted = {"oil tanker": {"crude", "ship"}, "wheat crop": {"grain"}}.get(item.split(": ", 1)[1], set())
        return "yes" if label in wanted else "no"

    backend = ScriptedBackend(yes_no, choice_logprobs=True)
    out = actlabel.label(
        df, labels=["crude", "ship", "grain"], gold="gold", multi_label=True, model=backend, budget=1,
        directory=tmp_path / "p", progress=False,
    )  # fmt: skip
    assert out["machine_label"].tolist() == [["crude", "ship"], ["grain"], []]
    assert out["gold_label"].tolist() == [["crude", "ship"], ["grain"], []]
    assert out["error_prob"].notna().all() and int(out["selected"].sum()) == 1
    bad = df.assign(gold=[["crude"], "grain|zebra", []])
    with pytest.raises(UserError, match=r"^row 2: gold label set in column 'gold': label 'zebra'"):
        actlabel.label(bad, labels=["crude", "ship", "grain"], gold="gold", multi_label=True, model=backend,
                       directory=tmp_path / "q", progress=False)  # fmt: skip
    assert not (tmp_path / "q").exists()
