"""Label Studio live (`actlabel serve labelstudio`) over real HTTP.

Two kinds of evidence that the shapes are Label Studio's:
- tests/labelstudio_payloads/*.json are requests a real Label Studio 1.23.2 server sent to this
  backend (/setup, /predict, and its ANNOTATION_CREATED / ANNOTATION_UPDATED webhooks), recorded
  verbatim but for the scrubbed access token. They run everywhere.
- `test_a_real_label_studio_server` starts Label Studio itself (when the `label-studio` command is
  on PATH or named by $ACTLABEL_LABEL_STUDIO; it is a large package, not a dependency) and goes
  through connect model -> retrieve predictions -> Data Manager order -> annotate -> update.

The recorded project: make_project(8 items, items 0-3 selected), tasks for it0000..it0002.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from actlabel import data
from actlabel.cli import main
from actlabel.review import labelstudio_live as live
from actlabel.store import Store

from .test_review_support import error_prob_of, make_project, running

PAYLOADS = Path(__file__).parent / "labelstudio_payloads"
SECRET = "test-secret-0123456789"
N = 8
SELECTED = [0, 1, 2, 3]


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return make_project(tmp_path / "p", N, selected=SELECTED)


@contextlib.contextmanager
def serving(root: Path, **kw: Any) -> Iterator[httpx.Client]:
    store = Store.open(root)
    app = live.build_app(store, secret=SECRET, close_store=True, **kw)
    with running(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def review_rows(root: Path) -> list[tuple]:
    with Store.open(root) as store:
        return store.conn.execute(
            "SELECT i.item_id, r.reviewer, r.label, r.source, r.duration_ms, r.created_at, r.selected_when_reviewed"
            " FROM reviews r JOIN items i ON i.rowid = r.item_rowid ORDER BY r.id"
        ).fetchall()


def machine_labels(root: Path) -> dict[str, str]:
    with Store.open(root) as store:
        return {
            item_id: label
            for item_id, label in store.conn.execute(
                "SELECT i.item_id, a.label FROM annotations a JOIN items i ON i.rowid = a.item_rowid"
            )
        }


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error
    for word in words:
        assert word in error, error


def webhook_for(item: int, label: str, *, action: str = "ANNOTATION_CREATED", **annotation: Any) -> dict:
    """The recorded webhook, pointed at item `item` with the answer `label`."""
    body = payload("webhook_annotation_created")
    body["action"] = action
    body["task"]["data"] = {"item_id": f"it{item:04d}", "text": f"text of item {item}"}
    body["annotation"]["result"][0]["value"]["choices"] = [label]
    body["annotation"].update(annotation)
    return body


def ls_time(raw: str) -> float:
    return datetime.fromisoformat(raw).timestamp()


# ---- the ML backend ------------------------------------------------------------------------------


def test_health_and_setup_answer_what_label_studio_reads(proj: Path) -> None:
    with serving(proj) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "UP"
        setup = client.post("/setup", json=payload("setup_request"))
        assert setup.status_code == 200 and setup.json() == {"model_version": live.MODEL_VERSION}
        assert client.get("/").json()["status"] == "UP"


def test_predict_answers_every_task_in_order_with_scores_and_the_critic(proj: Path) -> None:
    machine = machine_labels(proj)
    with serving(proj) as client:
        response = client.post("/predict", json=payload("predict_request"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    for i, prediction in enumerate(results):
        score = round(1 - error_prob_of(i), 6)
        assert prediction["model_version"] == "actlabel" and prediction["score"] == pytest.approx(score)
        choice, critic = prediction["result"]
        assert (choice["from_name"], choice["to_name"], choice["type"]) == ("label", "text", "choices")
        assert choice["value"] == {"choices": [machine[f"it{i:04d}"]]}
        assert choice["score"] == pytest.approx(score)  # the per-region score
        assert (critic["from_name"], critic["type"]) == ("critic", "textarea")
        (note,) = critic["value"]["text"]
        assert f"error probability {error_prob_of(i):.2f}" in note and "critic proposes" in note


def test_ascending_prediction_score_is_most_suspicious_first(proj: Path) -> None:
    body = payload("predict_request")
    template = body["tasks"][0]
    body["tasks"] = []
    for i in range(N):
        task = copy.deepcopy(template)
        task["id"], task["data"] = 100 + i, {"item_id": f"it{i:04d}", "text": f"text of item {i}"}
        body["tasks"].append(task)
    with serving(proj) as client:
        results = client.post("/predict", json=body).json()["results"]
    order = sorted(range(N), key=lambda i: results[i]["score"])
    assert order == sorted(range(N), key=lambda i: -error_prob_of(i))


def test_a_config_without_the_critic_area_gets_the_label_only(proj: Path) -> None:
    from actlabel.review.adapters import labelstudio_config

    with Store.open(proj) as store:
        config = labelstudio_config(store.task.labels)  # the file export's config: `critic` is a Text
    body = payload("predict_request") | {"label_config": config}
    with serving(proj) as client:
        results = client.post("/predict", json=body).json()["results"]
    assert [len(r["result"]) for r in results] == [1, 1, 1]
    assert results[0]["result"][0]["type"] == "choices"


def test_predict_refuses_what_it_cannot_answer(proj: Path) -> None:
    body = payload("predict_request")
    unknown = copy.deepcopy(body)
    unknown["tasks"][1]["data"]["item_id"] = "nope"
    no_id = copy.deepcopy(body)
    del no_id["tasks"][2]["data"]["item_id"]
    other_labels = copy.deepcopy(body)
    other_labels["label_config"] = body["label_config"].replace('value="neutral"', 'value="mixed"')
    with serving(proj) as client:
        assert_refused(client.post("/predict", json=unknown), 404, "task 26", "'nope'")
        assert_refused(client.post("/predict", json=no_id), 422, "task 27", "data.item_id")
        assert_refused(client.post("/predict", json=other_labels), 422, "'mixed'")
        assert_refused(client.post("/predict", json={"tasks": "x"}), 400, "tasks")
        assert_refused(client.post("/predict", content=b"{not json"), 400, "JSON")
        bad_setup = payload("setup_request") | {"schema": "<View><Text name='t' value='$t'/></View>"}
        assert_refused(client.post("/setup", json=bad_setup), 422, "Choices")
        assert_refused(client.post("/setup", json=payload("setup_request") | {"schema": "<View"}), 422, "XML")
    assert review_rows(proj) == []


# ---- the webhook ---------------------------------------------------------------------------------


def test_webhook_records_reviews_with_reviewer_time_and_the_design_flag(proj: Path) -> None:
    created, updated = payload("webhook_annotation_created"), payload("webhook_annotation_updated")
    token = {"token": SECRET}
    with serving(proj) as client:
        first = client.post("/webhook", params=token, json=created)
        assert first.status_code == 200 and first.json()["stored"] == 1, first.text
        second = client.post("/webhook", params=token, json=updated)
        assert second.json()["stored"] == 1
        again = client.post("/webhook", params=token, json=updated)  # Label Studio sent it twice
        assert again.json() == again.json() | {"stored": 0, "unchanged": 1}
        outside = client.post("/webhook", params=token, json=webhook_for(6, "positive"))
        assert outside.json()["not_selected"] == 1
    rows = review_rows(proj)
    assert rows == [
        ("it0000", "labelstudio-user-1", "negative", "labelstudio-live", 2500,
         pytest.approx(ls_time(created["annotation"]["updated_at"])), 1),
        ("it0000", "labelstudio-user-1", "neutral", "labelstudio-live", 2500,
         pytest.approx(ls_time(updated["annotation"]["updated_at"])), 1),
        ("it0006", "labelstudio-user-1", "positive", "labelstudio-live", 2500, pytest.approx(rows[2][5]), 0),
    ]  # fmt: skip
    with Store.open(proj) as store:  # the latest answer wins in the export
        table = next(data.iter_export_batches(store))
    final = dict(zip(table["item_id"], table["final_label"], strict=True))
    assert final["it0000"] == "neutral" and final["it0006"] == "positive"


def test_webhook_takes_an_expanded_user_and_a_batch(proj: Path) -> None:
    one = webhook_for(1, "positive", completed_by={"id": 7, "email": "ann@example.org"})
    two = webhook_for(2, "negative", id=99, task=one["task"]["id"] + 1)
    two["task"]["id"] = one["task"]["id"] + 1
    batch = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [one["annotation"], two["annotation"]],
        "task": [one["task"], two["task"]],
        "project": one["project"],
    }
    with serving(proj) as client:
        response = client.post("/webhook", headers={"X-Actlabel-Secret": SECRET}, json=batch)
    assert response.json()["stored"] == 2, response.text
    assert [(r[0], r[1], r[2]) for r in review_rows(proj)] == [
        ("it0001", "ann@example.org", "positive"),
        ("it0002", "labelstudio-user-1", "negative"),
    ]


def test_webhook_needs_the_shared_secret(proj: Path) -> None:
    body = payload("webhook_annotation_created")
    basic = base64.b64encode(f"label-studio:{SECRET}".encode()).decode()
    with serving(proj) as client:
        assert_refused(client.post("/webhook", json=body), 401, "secret")
        assert_refused(client.post("/webhook", params={"token": "wrong-secret-000000"}, json=body), 403)
        assert_refused(client.post("/s/wrong-secret-000000/webhook", json=body), 403)
        assert review_rows(proj) == []
        ok = [
            client.post("/webhook", headers={"Authorization": f"Bearer {SECRET}"}, json=body),
            client.post("/webhook", headers={"Authorization": f"Basic {basic}"}, json=body),
            client.post(f"/s/{SECRET}/webhook", json=body),  # the ML backend's own webhook URL
        ]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.json()["stored"] for r in ok] == [1, 0, 0]  # the same answer is stored once


def test_bad_webhooks_store_nothing(proj: Path) -> None:
    token = {"token": SECRET}
    unknown = webhook_for(0, "negative")
    unknown["task"]["data"]["item_id"] = "nope"
    no_task = webhook_for(0, "negative", task=999)  # a task this server never saw
    del no_task["task"]
    good, bad = webhook_for(1, "negative"), webhook_for(2, "bogus")
    bad["task"]["id"] = bad["annotation"]["task"] = good["task"]["id"] + 1
    batch = {"action": "ANNOTATIONS_CREATED", "annotation": [good["annotation"], bad["annotation"]],
             "task": [good["task"], bad["task"]]}  # fmt: skip
    with serving(proj) as client:
        assert_refused(client.post("/webhook", params=token, json=webhook_for(0, "bogus")), 422, "'bogus'")
        assert_refused(client.post("/webhook", params=token, json=unknown), 404, "'nope'")
        assert_refused(client.post("/webhook", params=token, json=no_task), 422, "task data")
        assert_refused(client.post("/webhook", params=token, json=batch), 422, "'bogus'")
        assert_refused(client.post("/webhook", params=token, content=b"[1, 2"), 400, "JSON")
        assert_refused(client.post("/webhook", params=token, json=[1]), 400, "object")
        skipped = client.post("/webhook", params=token, json=webhook_for(0, "negative", was_cancelled=True))
        assert skipped.json() == skipped.json() | {"stored": 0, "skipped": 1}
        other = client.post("/webhook", params=token, json={"action": "PROJECT_UPDATED", "project": {}})
        assert other.status_code == 200 and other.json()["status"] == "ignored"
    assert review_rows(proj) == []


def test_a_webhook_without_the_task_finds_it_from_predict(proj: Path) -> None:
    # Older Label Studio versions send only the annotation (task id, no data): the task ids the
    # server saw in /predict name the items.
    body = webhook_for(0, "positive")
    del body["task"]
    with serving(proj) as client:
        assert_refused(client.post("/webhook", params={"token": SECRET}, json=body), 422, "task data")
        client.post("/predict", json=payload("predict_request"))
        stored = client.post("/webhook", params={"token": SECRET}, json=body)
    assert stored.json()["stored"] == 1
    assert [(r[0], r[2]) for r in review_rows(proj)] == [("it0000", "positive")]


# ---- security and the command --------------------------------------------------------------------


def test_off_loopback_predictions_need_the_secret_and_hosts_are_checked(proj: Path) -> None:
    body = payload("predict_request")
    basic = base64.b64encode(f"x:{SECRET}".encode()).decode()
    with serving(proj, protect_predictions=True, allowed_hosts=None) as client:
        assert_refused(client.post("/predict", json=body), 401)
        assert (
            client.post("/predict", headers={"Authorization": f"Basic {basic}"}, json=body).status_code == 200
        )
        assert client.post(f"/s/{SECRET}/predict", json=body).status_code == 200
    with serving(proj) as client:  # loopback: Host must name a loopback host (DNS rebinding)
        assert_refused(client.get("/health", headers={"Host": "evil.example:9090"}), 400, "Host")


def test_the_secret_must_be_long_and_url_safe(proj: Path) -> None:
    runner = CliRunner()
    short = runner.invoke(main, ["serve", "labelstudio", str(proj), "--secret", "short"])
    assert short.exit_code == 1 and "at least 16 characters" in short.output
    slash = runner.invoke(main, ["serve", "labelstudio", str(proj), "--secret", "a/b" * 8])
    assert slash.exit_code == 1 and "URL" in slash.output


def test_the_command_serves_until_stopped(proj: Path) -> None:
    env = os.environ | {live.SECRET_ENV: SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "serve", "labelstudio", str(proj), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl+C" in line:
                break
        url = next(m.group(0) for ln in lines if (m := re.search(r"http://\S+/s/\S+", ln)))
        assert url.endswith(f"/s/{SECRET}")
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.json()["status"] == "UP"
        assert (proj / live.CONFIG_NAME).read_text().startswith("<View>")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


# ---- a real Label Studio -------------------------------------------------------------------------


def _label_studio() -> str | None:
    return os.environ.get("ACTLABEL_LABEL_STUDIO") or shutil.which("label-studio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    exe = _label_studio()
    if exe is None:
        pytest.skip("Label Studio is not installed (set ACTLABEL_LABEL_STUDIO to its `label-studio` command)")
    home = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = os.environ | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(home),
        # Label Studio refuses ML backends and webhooks on local addresses by default.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(home), "--username", "reviewer@example.org", "--password", "test-pass-123",
         "--user-token", LS_TOKEN, "--enable-legacy-api-token"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120
    )
    try:
        deadline = time.monotonic() + 300  # the first start migrates a new database
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health").status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not start; see {home / 'server.log'}")
            time.sleep(1)
        yield client
    finally:
        client.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


@pytest.mark.slow
def test_a_real_label_studio_server(proj: Path, tmp_path: Path, label_studio: httpx.Client) -> None:
    ls = label_studio
    with Store.open(proj) as store:
        config = live.write_config(store).read_text()
        data.export(store, tmp_path / "items.csv")
    store = Store.open(proj)
    with running(live.build_app(store, secret=SECRET, close_store=True)) as url:
        project = ls.post("/api/projects", json={"title": "actlabel live", "label_config": config}).json()
        pid = project["id"]
        with (tmp_path / "items.csv").open("rb") as fh:  # the table export, uploaded as a user would
            imported = ls.post(f"/api/projects/{pid}/import", files={"file": ("items.csv", fh, "text/csv")})
        assert imported.status_code == 201 and imported.json()["task_count"] == N, imported.text
        ml = ls.post("/api/ml", json={"url": f"{url}/s/{SECRET}", "project": pid, "title": "actlabel"})
        assert ml.status_code == 201 and ml.json()["state"] == "CO", ml.text
        wrong = ls.post("/api/ml", json={"url": f"{url}/s/wrong-secret-000000", "project": pid, "title": "x"})
        assert wrong.status_code == 400  # a wrong secret fails at connection time
        retrieved = ls.post(
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert retrieved.status_code == 200 and retrieved.json()["processed_items"] == N, retrieved.text

        # The Data Manager sorted by prediction score: the most suspicious items come first.
        view = ls.post(
            "/api/dm/views",
            json={"project": pid, "data": {"ordering": ["tasks:predictions_score"],
                                           "filters": {"conjunction": "and", "items": []}}},
        ).json()  # fmt: skip
        tasks = ls.get("/api/tasks", params={"project": pid, "view": view["id"]}).json()["tasks"]
        order = [int(t["data"]["item_id"][2:]) for t in tasks]
        assert order == sorted(range(N), key=lambda i: -error_prob_of(i))
        assert [t["predictions_score"] for t in tasks] == pytest.approx(
            sorted(round(1 - error_prob_of(i), 6) for i in range(N))
        )
        by_item = {t["data"]["item_id"]: t["id"] for t in tasks}

        # Answers given in Label Studio come back through its own ML webhook.
        def answer(item: str, label: str) -> dict:
            result = [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
            ]
            r = ls.post(f"/api/tasks/{by_item[item]}/annotations", json={"result": result, "lead_time": 3.0})
            assert r.status_code == 201, r.text
            return r.json()

        def wait_for(count: int) -> list[tuple]:
            deadline = time.monotonic() + 30
            while len(rows := review_rows(proj)) < count and time.monotonic() < deadline:
                time.sleep(0.2)
            return rows

        first = answer("it0002", "negative")
        answer("it0005", "positive")  # not selected by actlabel: out of design
        rows = wait_for(2)
        patched = ls.patch(
            f"/api/annotations/{first['id']}",
            json={"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                              "value": {"choices": ["neutral"]}}]},
        )  # fmt: skip
        assert patched.status_code == 200
        rows = wait_for(3)
        answer("it0003", "bogus")  # Label Studio accepts it; actlabel refuses it and stores nothing
        time.sleep(2)
    rows = review_rows(proj)
    assert [(r[0], r[2], r[3], r[4], r[6]) for r in rows] == [
        ("it0002", "negative", "labelstudio-live", 3000, 1),
        ("it0005", "positive", "labelstudio-live", 3000, 0),
        ("it0002", "neutral", "labelstudio-live", 3000, 1),
    ]
    assert {r[1] for r in rows} == {"labelstudio-user-1"}
    assert rows[0][5] == pytest.approx(ls_time(first["updated_at"]))


def test_multi_label_predictions_configs_and_webhooks(tmp_path: Path) -> None:
    """Issue 15: a multi-label project predicts its machine set as the choices, writes a
    `choice="multiple"` config, records a submitted set, and refuses a label outside the set."""
    from concurrent.futures import ThreadPoolExecutor

    from .test_multilabel import make_multilabel_project

    with ThreadPoolExecutor(1) as pool:  # the stages run their own event loop
        root = pool.submit(make_multilabel_project, tmp_path / "p", 8, budget=4).result()
    with Store.open(root) as store:
        config = live.live_config(store.task.labels, multi_label=True)
        machine = {
            iid: json.loads(label)
            for iid, label in store.conn.execute(
                "SELECT i.item_id, a.label FROM annotations a JOIN items i ON i.rowid = a.item_rowid"
            )
        }
    assert 'choice="multiple"' in config
    token = {"token": SECRET}
    ok, bad = webhook_for(1, "earn"), webhook_for(2, "earn")
    ok["annotation"]["result"][0]["value"]["choices"] = ["ship", "earn"]
    bad["annotation"]["result"][0]["value"]["choices"] = ["earn", "bogus"]
    with serving(root) as client:
        response = client.post("/predict", json=payload("predict_request") | {"label_config": config})
        assert response.status_code == 200, response.text
        for i, pred in enumerate(response.json()["results"]):
            assert pred["result"][0]["value"] == {"choices": machine[f"it{i:04d}"]}
        assert_refused(client.post("/webhook", params=token, json=bad), 422, "'bogus'")
        assert review_rows(root) == []
        stored = client.post("/webhook", params=token, json=ok)
        assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text
    assert [(r[0], r[2]) for r in review_rows(root)] == [("it0001", '["earn","ship"]')]
