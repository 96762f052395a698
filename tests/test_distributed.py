"""The Ray engine end to end: real Ray (a 2-CPU local cluster), real HTTP to the loopback server.
Two workers label every item once; a worker killed mid-run loses and duplicates nothing, and only
the calls it had in flight are asked again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actlabel import distributed
from actlabel.annotate import annotate
from actlabel.errors import UserError
from actlabel.models import load_backend
from actlabel.models.base import ChatRequest, Message, ModelError, RetryableError
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import LABELS, write_csv
from .helpers_critic import annotate_responder, tweet_of

ray = pytest.importorskip("ray")

MODEL = "openai/test-model"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@dataclass
class Pools:
    """The RayBackends the stages made (live, for a killer thread) and what their workers did,
    read just before the stage closed them."""

    made: list[distributed.RayBackend] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> Pools:
    out = Pools()
    real_init, real_close = distributed.RayBackend.__init__, distributed.RayBackend.aclose

    def init(self, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        out.made.append(self)

    async def aclose(self) -> None:
        out.closed.append({"workers": await self.worker_info(), "calls": list(self.calls)})
        await real_close(self)

    monkeypatch.setattr(distributed.RayBackend, "__init__", init)
    monkeypatch.setattr(distributed.RayBackend, "aclose", aclose)
    return out


def label_of(text: str) -> str:
    return LABELS[int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(LABELS)]


def synthetic_responder(body: dict[str, Any]) -> str:
    return label_of(tweet_of(body))


def big_project(tmp_path: Path, n: int) -> Project:
    rows = [{"text": f"item number {i}: something happened on day {i % 7}"} for i in range(n)]
    csv = write_csv(tmp_path / "items.csv", rows)
    proj = Project.init(tmp_path / "big", LABELS, instructions="Classify the sentiment.")
    proj.import_file(csv, text_columns=["text"])
    return proj


def annotation_counts(store) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for rowid, status in store.conn.execute("SELECT item_rowid, status FROM annotations ORDER BY id"):
        out.setdefault(rowid, []).append(status)
    return out


def test_two_workers_label_every_item_once(project: Project, pools: Pools) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        result = annotate(
            project.store, model=MODEL, base_url=srv.base_url, engine="ray", workers=2, progress=False
        )
        assert srv.calls == project.store.count_items()
    n = project.store.count_items()
    assert result.done == n and result.failed == 0 and result.calls == n
    assert all(v == ["ok"] for v in annotation_counts(project.store).values())
    assert len(annotation_counts(project.store)) == n
    (pool,) = pools.closed
    pids = {w["pid"] for w in pool["workers"]}
    # Two separate worker processes, neither of them this one, both used.
    assert len(pids) == 2 and os.getpid() not in pids
    assert sorted(w["calls"] for w in pool["workers"]) == sorted(pool["calls"])
    assert all(c > 0 for c in pool["calls"]) and sum(pool["calls"]) == n


def test_cached_calls_never_reach_a_worker(project: Project, pools: Pools) -> None:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, limit=5, progress=False)
        # The records are lost but the cache is not: 5 cached answers, 7 paid calls.
        with project.store.transaction():
            project.store.conn.execute("DELETE FROM annotations")
        result = annotate(
            project.store, model=MODEL, base_url=srv.base_url, engine="ray", workers=2, progress=False
        )
        assert srv.calls == project.store.count_items()
    (pool,) = pools.closed
    assert sum(pool["calls"]) == project.store.count_items() - 5
    assert result.cache_hits == 5 and result.calls == project.store.count_items() - 5


def test_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path, pools: Pools) -> None:
    n, kill_at = 160, 40
    proj = big_project(tmp_path, n)
    state: dict[str, Any] = {}
    trigger = threading.Event()

    def responder(body: dict[str, Any]) -> str:
        if srv.calls >= kill_at:
            trigger.set()
        return synthetic_responder(body)

    def killer() -> None:
        trigger.wait(120)
        backend = pools.made[0]
        victim = backend.actors[0]
        state["pid_before"] = ray.get(victim.info.remote())["pid"]
        state["in_flight"] = backend.in_flight[0]
        state["calls_before"] = srv.calls
        ray.kill(victim, no_restart=False)  # the process dies mid-call; Ray restarts it

    with OpenAICompatServer(responder=responder, latency=0.05) as srv:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        result = annotate(
            proj.store,
            model=MODEL,
            base_url=srv.base_url,
            engine="ray",
            workers=2,
            concurrency=16,
            progress=False,
        )
        thread.join(10)
        bodies = [json.dumps(r.body, sort_keys=True) for r in srv.requests]
    counts = annotation_counts(proj.store)
    lost = n - len(counts)
    duplicated = sum(len(v) - 1 for v in counts.values())
    extra = len(bodies) - len(set(bodies))
    assert "pid_before" in state, "the worker was never killed"
    assert lost == 0 and duplicated == 0
    assert all(v == ["ok"] for v in counts.values()) and result.failed == 0
    # Only calls in flight on the killed worker could be asked twice (their answers died with it);
    # no answered call is paid again: every cache key was bought once.
    assert extra <= state["in_flight"]
    assert proj.store.count("model_calls") == len(set(bodies)) == n
    (pool,) = pools.closed
    assert pool["workers"][0]["pid"] != state["pid_before"]  # restarted in a new process
    proj.close()


def test_engine_user_errors(project: Project) -> None:
    with pytest.raises(UserError, match="--engine must be one of async, ray"):
        annotate(project.store, model=MODEL, base_url="http://127.0.0.1:9/v1", engine="dask")
    with pytest.raises(UserError, match="pass a model spec"):
        annotate(project.store, backend=ScriptedBackend(name="x"), engine="ray")


def test_ray_backend_maps_model_errors(project: Project) -> None:
    """A 4xx from the endpoint is a ModelError on the driver (a failed record), not a Ray error."""

    async def go(srv: OpenAICompatServer) -> None:
        local = load_backend(MODEL, base_url=srv.base_url)
        backend = distributed.RayBackend(local, spec=MODEL, base_url=srv.base_url, workers=1)
        try:
            req = ChatRequest((Message.text("user", "hi"),))
            assert (await backend.chat(req)).text == "ok"
            with pytest.raises(ModelError) as bad:
                await backend.chat(req)
            assert not isinstance(bad.value, RetryableError) and "HTTP 400" in str(bad.value)
            with pytest.raises(RetryableError):
                await backend.chat(req)
        finally:
            await backend.aclose()

    with OpenAICompatServer(faults={2: "400", 3: "503"}) as srv:
        asyncio.run(go(srv))
