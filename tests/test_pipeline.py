"""`actlabel run`: one review round per call, the plan kept in the project, through a real endpoint."""

from __future__ import annotations

import json

from click.testing import CliRunner

from actlabel.cli import main
from actlabel.project import Project
from actlabel.review.simulate import simulate_review
from actlabel.testing.openai_server import OpenAICompatServer

from .helpers_critic import annotate_responder, critic_responder

MODEL = "openai/test-model"


def responder(body):
    text = " ".join(str(m.get("content")) for m in body["messages"])
    if 'Is "' in text or "Machine label:" in text:
        return critic_responder(body)

    return annotate_responder(body)


def test_run_spends_the_budget_in_rounds_and_waits_for_reviews(project: Project) -> None:
    runner = CliRunner()
    root = str(project.root)
    project.close()
    args = [
        "run",
        root,
        "--model",
        MODEL,
        "--budget",
        "6",
        "--rounds",
        "2",
        "--strategy",
        "cot",
        "--no-progress",
    ]
    with OpenAICompatServer(responder=responder) as srv:
        first = runner.invoke(main, [*args, "--base-url", srv.base_url])
        assert first.exit_code == 0, first.output
        assert "round 1 of 2" in first.output
        again = runner.invoke(main, [*args, "--base-url", srv.base_url])
        assert again.exit_code == 0 and "wait for review" in again.output  # nothing new selected
        with Project(root) as p:
            rounds = p.store.conn.execute("SELECT count(DISTINCT round) FROM selections").fetchone()[0]
            assert rounds == 1
            simulate_review(p.store, source="gold")
        second = runner.invoke(main, [*args, "--base-url", srv.base_url])
        assert second.exit_code == 0 and "round 2 of 2" in second.output
        with Project(root) as p:
            simulate_review(p.store, source="gold")
            plan = json.loads(p.store.get_meta("run_plan"))
            assert plan["total"] == 6 and plan["rounds"] == 2
        third = runner.invoke(main, [*args, "--base-url", srv.base_url])
        assert third.exit_code == 0 and "budget spent: 6 of 6" in third.output
    with Project(root) as p:
        probs = [r[0] for r in p.store.conn.execute("SELECT review_prob FROM selections")]
        assert min(probs) > 0  # the uniform share keeps every item reviewable
        assert p.store.conn.execute("SELECT count(DISTINCT item_rowid) FROM reviews").fetchone()[0] == 6
