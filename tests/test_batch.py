"""Batch mode end to end through the loopback server's real batch API (files, batches, output and
error files over HTTP): submit, a process restart mid-job, collect, partial failures retried
online, multi-round strategies, a job caught between the store and the provider, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from actlabel import batch as batch_mod
from actlabel.annotate import annotate
from actlabel.batch import BatchOutcome, MaybeCreated
from actlabel.cli import main
from actlabel.critique import critique
from actlabel.errors import UserError
from actlabel.models.cache import request_key
from actlabel.project import Project
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import LABELS, TWEETS
from .helpers_critic import GOLD, WRONG, annotate_responder, critic_responder, tweet_of

MODEL = "openai/test-model"
NEVER = 3600.0  # a batch_delay the tests end by setting it to 0: "the provider finished"


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_mod, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(batch_mod, "MAX_POLL_INTERVAL", 0.2)


def labels_by_tweet(store) -> dict[str, list[tuple]]:
    """tweet -> every annotation row (label, status) it has, oldest first."""
    out: dict[str, list[tuple]] = {}
    for data, label, status in store.conn.execute(
        "SELECT i.data, a.label, a.status FROM annotations a JOIN items i ON i.rowid = a.item_rowid ORDER BY a.id"
    ):
        out.setdefault(json.loads(data)["text"], []).append((label, status))
    return out


def assert_labelled_once(store) -> None:
    got = labels_by_tweet(store)
    assert set(got) == set(GOLD)
    for tweet, rows in got.items():
        assert rows == [(WRONG.get(tweet, GOLD[tweet]), "ok")], tweet


def test_restart_mid_job_completes_with_every_item_labelled_once(project: Project) -> None:
    root = project.root
    with OpenAICompatServer(responder=annotate_responder, batch_delay=NEVER) as srv:
        first = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        assert isinstance(first, BatchOutcome)
        assert first.submitted_requests == len(TWEETS)
        assert "batch submitted: 12 requests" in str(first)
        assert srv.calls == 0 and project.store.count("annotations") == 0
        # The requests file: one line per item, keyed by the cache key, with the online body.
        ((purpose, content),) = srv.files.values()
        lines = [json.loads(x) for x in content.decode().splitlines()]
        assert purpose == "batch" and len(lines) == len(TWEETS)
        assert {x["method"] for x in lines} == {"POST"} and {x["url"] for x in lines} == {
            "/v1/chat/completions"
        }
        assert all(len(x["custom_id"]) == 64 for x in lines)
        assert all(x["body"]["model"] == "test-model" and x["body"]["top_logprobs"] == 20 for x in lines)
        project.close()

        # A new process: the job is found in the store; the provider has not finished.
        with Project(root) as again:
            waiting = annotate(again.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
            assert waiting.waiting and not waiting.submitted and waiting.result is None
            assert "batch in progress: batch_1 in_progress 0/12" in str(waiting)
            assert len(srv.batches) == 1 and again.store.count("annotations") == 0

        srv.batch_delay = 0  # the provider finishes
        with Project(root) as third:
            done = annotate(third.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
            text = str(done)
            assert "batch collected: 12 answers from 1 job(s)" in text and "nothing left to submit" in text
            assert done.result.done == len(TWEETS) and done.result.calls == 0
            assert done.result.cache_hits == len(TWEETS)
            assert_labelled_once(third.store)
            # Confidence parsed from the batch answers exactly like online ones.
            confs = dict(
                third.store.conn.execute(
                    "SELECT json_extract(i.data, '$.text'), a.confidence FROM annotations a "
                    "JOIN items i ON i.rowid = a.item_rowid"
                ).fetchall()
            )
            for tweet, conf in confs.items():
                assert conf == pytest.approx(0.5 if tweet in WRONG else 0.8, abs=1e-6)
            # The batch's calls are accounted for in the runs table, at the batch price.
            (batch_run,) = [r for r in third.store.runs() if r["stage"] == "annotate batch"]
            assert batch_run["calls"] == len(TWEETS) and batch_run["input_tokens"] > 0
            # Nothing left: a plain re-run makes no call and writes nothing.
            rerun = annotate(third.store, model=MODEL, base_url=srv.base_url, progress=False)
            assert rerun.skipped == len(TWEETS) and rerun.calls == 0
            assert third.store.count("annotations") == len(TWEETS)
        assert srv.calls == 0 and srv.batch_calls == len(TWEETS)


def test_wait_polls_until_done(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder, batch_delay=0.3) as srv:
        out = annotate(
            project.store, model=MODEL, base_url=srv.base_url, batch=True, wait=True, progress=False
        )
        assert srv.calls == 0 and srv.batch_calls == len(TWEETS)
    assert out.result.done == len(TWEETS) and not out.submitted and not out.waiting
    assert "after 2 rounds" in str(out)
    assert_labelled_once(project.store)


def test_failed_lines_are_retried_online_once(project: Project) -> None:
    failing = {TWEETS[0][0], TWEETS[5][0], TWEETS[7][0]}

    def faults(custom_id: str, body: dict) -> str | None:
        return "injected: server overloaded" if tweet_of(body) in failing else None

    with OpenAICompatServer(responder=annotate_responder, batch_faults=faults) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        out = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        text = str(out)
        assert "batch collected: 9 answers from 1 job(s), 3 failed (sent online)" in text
        assert "3 requests the batch failed were sent online" in text
        assert "nothing left to submit" in text
        # Exactly the failed three went online, once each.
        assert srv.calls == 3 and sorted(tweet_of(r.body) for r in srv.requests) == sorted(failing)
        assert srv.batch_calls == len(TWEETS)
        assert out.result.done == len(TWEETS) and out.result.calls == 3
    assert_labelled_once(project.store)
    (batch_run,) = [r for r in project.store.runs() if r["stage"] == "annotate batch"]
    assert batch_run["calls"] == 9 and batch_run["failures"] == 3


def _twin(tmp_path: Path, name: str) -> Project:
    from .conftest import write_csv

    csv = write_csv(tmp_path / f"{name}.csv", [{"text": t, "gold": g} for t, g in TWEETS])
    proj = Project.init(tmp_path / name, LABELS, instructions="Classify the sentiment of the tweet.")
    proj.import_file(csv, text_columns=["text"], gold_column="gold")
    return proj


def _critiques(store) -> dict[str, tuple]:
    return {
        json.loads(d)["text"]: (round(e, 9), p, r)
        for d, e, p, r in store.conn.execute(
            "SELECT i.data, c.error_prob, c.proposed_label, c.rationale FROM critiques c "
            "JOIN items i ON i.rowid = c.item_rowid WHERE c.status = 'ok'"
        )
    }


def test_multi_call_strategy_takes_one_round_per_call_and_matches_online(tmp_path: Path) -> None:
    """cot-logit asks twice per item (analysis, then the verdict after it): batch mode needs one more
    round, and its records are exactly the online ones."""

    def responder(body: dict) -> object:
        is_critic = "Machine label" in json.dumps(body["messages"])
        return critic_responder(body) if is_critic else annotate_responder(body)

    online, batched = _twin(tmp_path, "online"), _twin(tmp_path, "batched")
    with OpenAICompatServer(responder=responder) as srv:
        for proj in (online, batched):
            annotate(proj.store, model=MODEL, base_url=srv.base_url, progress=False)
        before = srv.calls
        critique(online.store, model=MODEL, base_url=srv.base_url, strategy="cot-logit", progress=False)
        critic_calls = srv.calls - before
        out = critique(
            batched.store,
            model=MODEL,
            base_url=srv.base_url,
            strategy="cot-logit",
            batch=True,
            wait=True,
            progress=False,
        )
        # The same requests as online, all through batches.
        assert srv.calls == before + critic_calls and srv.batch_calls == critic_calls
    assert len(out.results) >= 3  # analysis round, verdict round, final run
    assert out.result.done == len(TWEETS) and out.result.failed == 0
    assert _critiques(batched.store) == _critiques(online.store)
    assert batched.store.count("critiques") == len(TWEETS)
    online.close()
    batched.close()


def test_job_stored_but_not_acknowledged_is_found_again(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider created the batch but the answer was lost (the process died, a timeout): the
    next run finds it by its input file instead of paying for a second batch."""
    real_create = batch_mod.BatchClient.create

    async def lost_answer(self, input_file_id: str, metadata: dict[str, str]) -> dict:
        await real_create(self, input_file_id, metadata)
        raise MaybeCreated("test: connection dropped after the request was sent")

    with OpenAICompatServer(responder=annotate_responder) as srv:
        monkeypatch.setattr(batch_mod.BatchClient, "create", lost_answer)
        with pytest.raises(MaybeCreated):
            annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        monkeypatch.setattr(batch_mod.BatchClient, "create", real_create)
        (status,) = project.store.conn.execute("SELECT status FROM batch_jobs").fetchone()
        assert status == "creating"
        out = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        assert len(srv.batches) == 1 and srv.batch_calls == len(TWEETS) and srv.calls == 0
        assert out.result.done == len(TWEETS)
    assert_labelled_once(project.store)


def test_a_batch_refused_as_a_whole_is_submitted_again_not_sent_online(project: Project) -> None:
    with OpenAICompatServer(responder=annotate_responder, batch_refuse="line 3: bad model") as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        out = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        text = str(out)
        assert (
            "batch batch_1 failed as a whole (line 3: bad model): its 12 requests are batched again" in text
        )
        assert "batch submitted: 12 requests (batch_2)" in text
        assert srv.calls == 0 and project.store.count("annotations") == 0
        srv.batch_refuse = None
        done = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        assert done.result.done == len(TWEETS) and srv.calls == 0
    assert_labelled_once(project.store)


def test_batch_keys_are_the_cache_keys(project: Project) -> None:
    """custom_id is the response cache key: an item answered online is never batched."""
    with OpenAICompatServer(responder=annotate_responder, batch_delay=NEVER) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, limit=4, progress=False)
        out = annotate(project.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        assert out.submitted_requests == len(TWEETS) - 4
        ((_, content),) = srv.files.values()
        keys = {json.loads(x)["custom_id"] for x in content.decode().splitlines()}
    cached = {k for (k,) in project.store.conn.execute("SELECT key FROM model_calls")}
    assert len(cached) == 4 and not keys & cached
    assert {k for (k,) in project.store.conn.execute("SELECT key FROM batch_requests")} == keys
    assert all(len(k) == len(request_key("x", _dummy_request())) for k in keys)


def _dummy_request():
    from actlabel.models.base import ChatRequest, Message

    return ChatRequest((Message.text("user", "x"),))


def test_user_errors_are_one_line(project: Project) -> None:
    with pytest.raises(UserError, match="batch mode needs an openai/ model with a batch API"):
        annotate(project.store, model="local/default", batch=True, progress=False)
    with pytest.raises(UserError, match="--wait goes with --batch"):
        annotate(project.store, model=MODEL, base_url="http://127.0.0.1:9/v1", wait=True, progress=False)
    with pytest.raises(UserError, match="--workers goes with --engine ray"):
        annotate(project.store, model=MODEL, base_url="http://127.0.0.1:9/v1", workers=2)
    with pytest.raises(UserError, match="drop --engine ray"):
        annotate(project.store, model=MODEL, base_url="http://127.0.0.1:9/v1", batch=True, engine="ray")
    runner = CliRunner()
    res = runner.invoke(main, ["annotate", str(project.root), "--model", "local/default", "--batch"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "actlabel: error: batch mode needs an openai/ model with a batch API, not local/default"
    ]


def test_cli_batch_twice(project: Project) -> None:
    root = str(project.root)
    project.close()
    runner = CliRunner()
    with OpenAICompatServer(responder=annotate_responder) as srv:
        args = ["annotate", root, "--model", MODEL, "--base-url", srv.base_url, "--batch", "--no-progress"]
        first = runner.invoke(main, args)
        assert first.exit_code == 0, first.output
        assert "batch submitted: 12 requests (batch_1); run the same command again to collect" in first.output
        second = runner.invoke(main, args)
        assert second.exit_code == 0, second.output
        assert "batch collected: 12 answers" in second.output and "12 ok" in second.output
        assert srv.calls == 0
    with Project(root) as again:
        assert_labelled_once(again.store)


def test_batch_client_retries_transient_failures_and_says_when_it_gave_up() -> None:
    import asyncio

    import httpx

    from actlabel.batch import BatchClient
    from actlabel.models.base import RetryableError
    from actlabel.models.openai_compat import OpenAICompatBackend
    from actlabel.models.retry import RetryPolicy

    answers = iter([httpx.Response(503, json={"error": {"message": "overloaded"}})] * 2)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return next(answers, httpx.Response(200, json={"id": "batch_1", "status": "completed"}))

    async def retrieve(attempts: int) -> dict:
        client = BatchClient(
            OpenAICompatBackend("m", base_url="http://provider.test/v1", client="httpx"),
            policy=RetryPolicy(max_attempts=attempts, base_delay=0.0, max_delay=0.0),
        )
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        try:
            return await client.retrieve("batch_1")
        finally:
            await client._http.aclose()

    assert asyncio.run(retrieve(3))["status"] == "completed" and len(seen) == 3
    answers = iter([httpx.Response(503, json={"error": {"message": "overloaded"}})] * 5)
    with pytest.raises(RetryableError, match=r"overloaded.*\(gave up after 2 attempts\)"):
        asyncio.run(retrieve(2))
