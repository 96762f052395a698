"""Stage 2 end to end through the loopback OpenAI-compatible server: every LLM critic strategy,
malformed answers, resume, self/cross-criticism and the one-line errors."""

from __future__ import annotations

import json

import pytest

from actlabel.annotate import annotate
from actlabel.critique import STRATEGIES, critique
from actlabel.errors import UserError
from actlabel.models.scripted import ScriptedBackend
from actlabel.project import Project
from actlabel.testing.openai_server import OpenAICompatServer

from .conftest import TWEETS
from .helpers_critic import GOLD, WRONG, annotate_responder, critic_responder, last_user, prefix_of, tweet_of
from .test_annotate import make_shapes_project

MODEL = "openai/test-model"
LLM_STRATEGIES = ("naive", "cot", "mc", "logit", "cot-logit", "cot-ppl")


def critiques(store, strategy: str) -> dict[str, tuple]:
    """tweet -> (error_prob, proposed_label, rationale, raw dict, status, error) of the latest critique."""
    rows = store.conn.execute(
        "SELECT i.data, c.error_prob, c.proposed_label, c.rationale, c.raw, c.status, c.error FROM critiques c "
        "JOIN items i ON i.rowid = c.item_rowid WHERE c.strategy = ? ORDER BY c.id",
        (strategy,),
    ).fetchall()
    return {
        json.loads(r[0])["text"]: (r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6])
        for r in rows
    }


@pytest.fixture
def annotated(project: Project) -> Project:
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(project.store, model=MODEL, base_url=srv.base_url, progress=False)
    return project


def test_every_strategy_is_registered() -> None:
    assert set(STRATEGIES) == {
        "naive",
        "cot",
        "mc",
        "devil",
        "logit",
        "cot-logit",
        "cot-ppl",
        "consistency",
        "learned",
        "ensemble",
        "confidence",
    }


def test_confidence_critic_is_one_minus_the_annotators_probability(annotated: Project) -> None:
    """No model call: the error probability is what the annotator's own confidence leaves."""
    store = annotated.store
    result = critique(store, strategy="confidence", progress=False)
    got = critiques(store, "confidence")
    assert len(got) == len(TWEETS)
    for tweet, (e, proposed, rationale, raw, status, _err) in got.items():
        machine = WRONG.get(tweet, GOLD[tweet])
        # the annotate responder answers with 0.5 on the wrong labels, 0.8 on the right ones
        assert status == "ok" and e == pytest.approx(0.5 if tweet in WRONG else 0.2, abs=1e-6)
        assert raw["machine_label"] == machine and raw["annotation_id"] > 0
        assert proposed == machine and "annotator gave" in rationale and "\n" not in rationale
    assert result.done == len(TWEETS) and result.calls == 0 and result.model == "annotator-confidence"
    assert result.auroc == 1.0 and result.gold_errors == len(WRONG) and result.gold_items == len(TWEETS)
    assert "an expected 3 wrong machine labels (27.5%)" in str(result)  # 3 x 0.5 + 9 x 0.2
    with pytest.raises(UserError, match="uses no chat model"):
        critique(store, strategy="confidence", model=MODEL, progress=False)


def test_confidence_critic_refuses_labels_without_any_confidence(project: Project) -> None:
    store = project.store
    run = store.start_run("annotate", {})
    store.add_annotations(
        {"item_rowid": rowid, "run_id": run, "model": "scripted/x", "label": "positive", "status": "ok"}
        for rowid in store.item_rowids()
    )
    with pytest.raises(UserError, match="none of the machine labels has one"):
        critique(store, strategy="confidence", progress=False)
    assert store.count("critiques") == 0  # all or nothing


@pytest.mark.parametrize("strategy", LLM_STRATEGIES)
def test_strategy_end_to_end_through_an_endpoint(annotated: Project, strategy: str) -> None:
    store = annotated.store
    with OpenAICompatServer(responder=critic_responder) as srv:
        result = critique(store, model=MODEL, base_url=srv.base_url, strategy=strategy, progress=False)
        paid = srv.calls
        again = critique(store, model=MODEL, base_url=srv.base_url, strategy=strategy, progress=False)
        assert srv.calls == paid  # resume: nothing asked twice
    got = critiques(store, strategy)
    assert len(got) == len(TWEETS)
    for tweet, (e, proposed, rationale, raw, status, _err) in got.items():
        machine = WRONG.get(tweet, GOLD[tweet])
        assert status == "ok" and 0.0 <= e <= 1.0
        assert proposed == GOLD[tweet]  # the critic proposes the label it believes (the gold one here)
        assert rationale and "\n" not in rationale and len(rationale) <= 200
        assert raw["machine_label"] == machine and raw["annotation_id"] > 0
        assert (e >= 0.5) == (tweet in WRONG) or strategy == "cot-ppl"
    assert result.done == len(TWEETS) and result.failed == 0
    assert result.auroc == 1.0 and result.gold_errors == len(WRONG)
    assert again.skipped == len(TWEETS) and again.calls == 0 and again.done == 0
    assert "self-criticism" in str(result).splitlines()[0]


def test_logit_reads_yes_no_probabilities_and_proposes_with_a_constrained_question(
    annotated: Project,
) -> None:
    with OpenAICompatServer(responder=critic_responder) as srv:
        critique(annotated.store, model=MODEL, base_url=srv.base_url, strategy="logit", progress=False)
        bodies = [r.body for r in srv.requests]
    asks = [b for b in bodies if "yes or no" in last_user(b)]
    proposals = [b for b in bodies if "Which label is correct" in last_user(b)]
    assert len(asks) == len(TWEETS) and all(b["logprobs"] and b["top_logprobs"] == 20 for b in asks)
    assert all(b["max_tokens"] == 2 for b in asks)
    # the label question is asked only where the critic doubts the machine label
    assert sorted(tweet_of(b) for b in proposals) == sorted(WRONG)
    for tweet, (e, *_rest) in critiques(annotated.store, "logit").items():
        assert e == pytest.approx(0.75 if tweet in WRONG else 0.1)


def test_cot_logit_reads_the_verdict_after_the_analysis(annotated: Project) -> None:
    with OpenAICompatServer(responder=critic_responder) as srv:
        critique(annotated.store, model=MODEL, base_url=srv.base_url, strategy="cot-logit", progress=False)
        verdicts = [r.body for r in srv.requests if prefix_of(r.body) is not None]
        n_calls = srv.calls
        # cot-ppl sends the identical analysis request: it is served from the cache
        ppl = critique(
            annotated.store, model=MODEL, base_url=srv.base_url, strategy="cot-ppl", progress=False
        )
        assert srv.calls == n_calls
    assert ppl.calls == 0 and ppl.cache_hits == len(TWEETS)
    assert len(verdicts) == len(TWEETS)
    for body in verdicts:
        prefix = prefix_of(body)
        assert prefix.startswith("The tweet says") and prefix.endswith("Answer yes or no:")
        assert body["logprobs"] is True
    for tweet, (e, _p, _r, raw, *_x) in critiques(annotated.store, "cot-logit").items():
        assert e == pytest.approx(0.85 if tweet in WRONG else 0.2)
        assert "[verdict]" in raw["text"]


def test_cot_ppl_rescales_by_rank_over_the_whole_dataset(annotated: Project) -> None:
    store = annotated.store
    with OpenAICompatServer(responder=critic_responder) as srv:
        first = critique(
            store, model=MODEL, base_url=srv.base_url, strategy="cot-ppl", progress=False, limit=6
        )
        assert first.done == 6 and first.left == len(TWEETS) - 6
        second = critique(store, model=MODEL, base_url=srv.base_url, strategy="cot-ppl", progress=False)
    # the second run judged the other 6 and re-ranked all 12 together
    assert second.done == 6 and second.skipped == 6 and second.calls == 6
    assert "ranks over all 12 items" in str(second)
    got = critiques(store, "cot-ppl")
    n = len(TWEETS)
    k = len(WRONG)
    for tweet, (e, _p, rationale, raw, *_x) in got.items():
        # ties share the average rank: wrong labels hold the top k ranks, the others the rest
        expected = ((n - k + 1 + n) / 2 - 0.5) / n if tweet in WRONG else (((n - k + 1) / 2) - 0.5) / n
        assert e == pytest.approx(expected)
        assert raw["log_ppl"] == pytest.approx(2.5 if tweet in WRONG else 0.2)
        assert rationale.startswith("analysis perplexity")
    runs = {
        r[0]
        for r in store.conn.execute(
            "SELECT run_id FROM critiques c WHERE id IN (SELECT max(id) FROM critiques GROUP BY item_rowid)"
        )
    }
    assert len(runs) == 1  # every item's current cot-ppl record comes from the latest ranking


def test_devil_needs_cot_annotations_and_sees_the_reasoning(annotated: Project) -> None:
    store = annotated.store
    with OpenAICompatServer(responder=critic_responder) as srv:
        with pytest.raises(UserError, match="annotate with --cot"):
            critique(store, model=MODEL, base_url=srv.base_url, strategy="devil", progress=False)
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(store, model=MODEL, base_url=srv.base_url, progress=False, cot=True)
    with OpenAICompatServer(responder=critic_responder) as srv:
        result = critique(store, model=MODEL, base_url=srv.base_url, strategy="devil", progress=False)
        prompt = last_user(srv.requests[0].body)
    assert "The annotator's reasoning:" in prompt and "The tweet reads as" in prompt
    assert result.done == len(TWEETS) and result.auroc == 1.0


def test_malformed_critic_answers_are_retried_then_failed_with_raw_text(annotated: Project) -> None:
    hopeless, flaky = TWEETS[0][0], TWEETS[5][0]
    seen: dict[str, int] = {}

    def responder(body):
        tweet = tweet_of(body)
        seen[tweet] = seen.get(tweet, 0) + 1
        if tweet == hopeless:
            return f"I think the label is fine. Confidence: high ({seen[tweet]})"
        if tweet == flaky and seen[tweet] == 1:
            return "Probability wrong: 1.7"  # out of range: re-asked
        return critic_responder(body)

    with OpenAICompatServer(responder=responder) as srv:
        result = critique(annotated.store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
    got = critiques(annotated.store, "cot")
    e, proposed, _r, raw, status, error = got[hopeless]
    assert status == "failed" and e is None and proposed is None
    assert raw["text"] == "I think the label is fine. Confidence: high (3)"
    assert "3 attempts" in error and "Probability wrong" in error
    assert got[flaky][4] == "ok" and seen[flaky] == 2
    assert result.failed == 1 and result.done == len(TWEETS) - 1


def test_status_counts_the_current_critique_of_each_item(annotated: Project) -> None:
    """A re-run that repairs the failures replaces them: status counts each item's current
    critique, not every failed record ever written."""
    broken = {TWEETS[0][0], TWEETS[3][0]}

    def failing(body):
        return "no idea" if tweet_of(body) in broken else critic_responder(body)

    with OpenAICompatServer(responder=failing) as srv:
        first = critique(
            annotated.store, model=MODEL, base_url=srv.base_url, strategy="naive", progress=False
        )
    assert first.failed == len(broken)
    assert annotated.status().critiqued.failed == len(broken)
    with OpenAICompatServer(responder=critic_responder) as srv:
        again = critique(
            annotated.store, model=MODEL, base_url=srv.base_url, strategy="naive", progress=False
        )
    assert again.done == len(broken) and again.failed == 0
    status = annotated.status()
    assert (status.critiqued.done, status.critiqued.failed, status.critiqued.left) == (len(TWEETS), 0, 0)


def test_white_box_strategies_need_token_probabilities(annotated: Project) -> None:
    for strategy in ("logit", "cot-logit", "cot-ppl"):
        with pytest.raises(UserError, match="token probabilities"):
            critique(annotated.store, backend=ScriptedBackend("no"), strategy=strategy, progress=False)


def test_cross_criticism_from_environment_and_advice(
    annotated: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTLABEL_CRITIC_MODEL", "openai/critic-model")
    with OpenAICompatServer(responder=critic_responder) as srv:
        result = critique(annotated.store, base_url=srv.base_url, strategy="naive", progress=False)
        assert srv.requests[0].body["model"] == "critic-model"
        lines = str(result).splitlines()
        assert lines[0].startswith("critic: cross-criticism") and "openai/critic-model" in lines[0]
        assert any(line.startswith("advice: chain-of-thought") for line in lines)
        # Self-criticism chosen explicitly while a second model is configured: advised against.
        self_result = critique(
            annotated.store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False
        )
    lines = str(self_result).splitlines()
    assert lines[0].startswith("critic: self-criticism")
    assert any("cross-criticism beats self-criticism" in line for line in lines)
    assert "critiqued" in lines[-1]


def test_a_new_machine_label_is_criticized_again(annotated: Project) -> None:
    store = annotated.store
    with OpenAICompatServer(responder=critic_responder) as srv:
        critique(store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
    with OpenAICompatServer(responder=annotate_responder) as srv:
        annotate(
            store, model=MODEL, base_url=srv.base_url, progress=False, cot=True
        )  # new annotation records
    with OpenAICompatServer(responder=critic_responder) as srv:
        result = critique(store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
    assert result.skipped == 0 and result.done == len(TWEETS)


def test_user_errors(project: Project) -> None:
    with pytest.raises(UserError, match="run `actlabel annotate` first"):
        critique(project.store, backend=ScriptedBackend("x"), progress=False)
    with pytest.raises(UserError, match="unknown critic strategy"):
        critique(project.store, strategy="magic", progress=False)
    with pytest.raises(UserError, match="only the ensemble"):
        critique(project.store, strategy="cot:logit", progress=False)


def test_cli_annotate_critique_and_calibrate(project: Project) -> None:
    from click.testing import CliRunner

    from actlabel.cli import main

    root = str(project.root)
    project.close()  # the CLI opens the project itself
    runner = CliRunner()
    with OpenAICompatServer(responder=annotate_responder) as srv:
        out = runner.invoke(
            main, ["annotate", root, "--model", MODEL, "--base-url", srv.base_url, "--no-progress"]
        )
    assert out.exit_code == 0, out.output
    assert "12 ok" in out.output and "accuracy vs gold 0.750" in out.output
    with OpenAICompatServer(responder=critic_responder) as srv:
        args = ["critique", root, "--model", MODEL, "--base-url", srv.base_url, "--no-progress"]
        out = runner.invoke(main, [*args, "--strategy", "naive"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("critic: self-criticism") and lines[1].startswith("advice:")
    assert "AUROC vs gold 1.000" in lines[-1]
    out = runner.invoke(main, ["calibrate", root])
    assert out.exit_code == 1 and "needs at least 20" in out.output
    out = runner.invoke(main, ["critique", root, "--strategy", "learned"])
    assert out.exit_code == 1 and "needs at least 20" in out.output and "Traceback" not in out.output


def test_critic_sees_images_through_a_multimodal_endpoint(tmp_path) -> None:
    proj = make_shapes_project(tmp_path)
    store = proj.store
    with OpenAICompatServer(responder=lambda body: "circle") as srv:
        annotate(store, model=MODEL, base_url=srv.base_url, progress=False, limit=3)
    reply = "Looks round.\nCorrect label: circle\nProbability wrong: 0.2\nReason: it is round."
    with OpenAICompatServer(responder=lambda body: reply) as srv:
        result = critique(store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
        images = [r.images() for r in srv.requests]
    assert result.done == 3 and all(len(i) == 1 and i[0][0] == "image/png" for i in images)
    with pytest.raises(UserError, match="cannot see images"):
        critique(store, backend=ScriptedBackend("x", supports_images=False), strategy="naive", progress=False)
    proj.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Probability wrong: 0.3", 0.3),
        ("**Probability wrong:** 0.85\nReason: x", 0.85),
        ("Probability wrong: 70%", 0.7),
        ("Probability wrong: 70", 0.7),
        ("The probability that the machine label is wrong is 0.25.", 0.25),
        ("Probability wrong: 0.9\nOn reflection...\nProbability wrong: 0.2", 0.2),
    ],
)
def test_parse_probability(text: str, expected: float) -> None:
    from actlabel.critics.base import parse_probability

    assert parse_probability(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "Probability wrong: 1.7",
        "The probability is 1 in 3",
        "I am fairly sure it is wrong",
        "Probability: 150%",
    ],
)
def test_parse_probability_refuses(text: str) -> None:
    from actlabel.critics.base import parse_probability

    with pytest.raises(ValueError):
        parse_probability(text)


def test_mc_verdicts_and_rank_scale() -> None:
    import numpy as np

    from actlabel.critics.blackbox import parse_mc_verdict
    from actlabel.critics.whitebox import rank_scale

    assert parse_mc_verdict("Verdict: D\nCorrect label: x") == "D"
    assert parse_mc_verdict("Verdict: (B) probably correct") == "B"
    assert parse_mc_verdict("Verdict: certainly wrong") == "E"
    with pytest.raises(ValueError):
        parse_mc_verdict("Verdict: maybe")
    e = rank_scale(np.array([3.0, 1.0, 2.0, 2.0 + 1e-12]))
    assert e == pytest.approx([0.875, 0.125, 0.5, 0.5])  # near-equal values are ties
    assert rank_scale(np.array([])).size == 0


def test_an_edited_prompt_makes_critiques_stale(annotated: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from actlabel import prompting

    store = annotated.store
    with OpenAICompatServer(responder=critic_responder) as srv:
        critique(store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
        original = prompting.template
        monkeypatch.setattr(
            prompting,
            "template",
            lambda name: original(name) + (" Be brief." if name == "critic_cot" else ""),
        )
        other = critique(store, model=MODEL, base_url=srv.base_url, strategy="naive", progress=False)
        edited = critique(store, model=MODEL, base_url=srv.base_url, strategy="cot", progress=False)
    assert other.done == len(TWEETS)  # naive's own templates did not change: nothing stale there
    assert edited.skipped == 0 and edited.done == len(TWEETS) and edited.calls == len(TWEETS)
