"""The stage options objects: each mistake refused once, in one line naming the option."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from actlabel.cli import main
from actlabel.errors import UserError
from actlabel.models.scripted import ScriptedBackend
from actlabel.options import AnnotateOptions, CritiqueOptions, RunOptions
from actlabel.project import Project

MISTAKES = [
    ({"limit": 0}, "--limit must be at least 1"),
    ({"concurrency": 0}, "--concurrency must be from 1 to 1024, not 0"),
    ({"max_cost": 0.0}, "--max-cost must be > 0"),
    ({"max_run_tokens": -5}, "--max-tokens must be > 0"),
    ({"engine": "threads"}, "--engine must be one of async, ray, not 'threads'"),
    ({"workers": 2}, "--workers goes with --engine ray"),
    ({"engine": "ray", "workers": 0}, "--workers must be at least 1"),
    ({"wait": True}, "--wait goes with --batch"),
    ({"batch": True, "engine": "ray"}, "--batch runs on the provider's batch API; drop --engine ray"),
    ({"reasoning_tokens": 0}, "--reasoning-tokens must be at least 1, not 0"),
    ({"max_parse_retries": -1}, "max_parse_retries must be 0 or more, not -1"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (cls, kwargs, message)
        for cls in (AnnotateOptions, CritiqueOptions, RunOptions)
        for kwargs, message in MISTAKES
        if set(kwargs) <= {f.name for f in dataclasses.fields(cls)}  # run has no --reasoning-tokens
    ],
)
def test_each_mistake_is_one_line_naming_the_option(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        cls(**kwargs)
    assert str(err.value) == message and "\n" not in str(err.value)


def test_annotate_options_of_its_own() -> None:
    with pytest.raises(UserError, match="^--label-model must be one of auto, on, off, not 'maybe'$"):
        AnnotateOptions(label_model="maybe")
    opts = AnnotateOptions(cot=True, reasoning_tokens=64, max_run_tokens=1000)
    assert opts.cap() is not None and opts.cap().max_run_tokens == 1000
    assert AnnotateOptions().cap() is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.cot = False  # type: ignore[misc]


def test_project_takes_an_options_object_or_its_fields(project: Project) -> None:
    backend = ScriptedBackend("positive")
    via_object = project.annotate(AnnotateOptions(backend=backend, progress=False, limit=2))
    via_kwargs = project.annotate(backend=backend, progress=False, limit=3)
    assert via_object.done == 2 and (via_kwargs.done, via_kwargs.skipped) == (3, 2)  # resumed
    with pytest.raises(UserError, match="^unknown AnnotateOptions option 'cot_max_tokens'"):
        project.annotate(cot_max_tokens=32)  # the old name of reasoning_tokens is refused, not ignored
    with pytest.raises(TypeError, match="not both"):
        project.annotate(AnnotateOptions(), limit=1)
    with pytest.raises(UserError, match="^--wait goes with --batch$"):
        project.critique(wait=True)


def test_cli_prints_the_one_line_and_keeps_its_flags(project: Project) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["annotate", str(project.root), "--wait", "--no-progress"])
    assert r.exit_code == 1 and "--wait goes with --batch" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["critique", str(project.root), "--workers", "2", "--no-progress"])
    assert r.exit_code == 1 and "--workers goes with --engine ray" in r.output
    # --max-tokens still caps the run's tokens, now named max_run_tokens inside
    r = runner.invoke(main, ["annotate", str(project.root), "--max-tokens", "0", "--no-progress"])
    assert r.exit_code == 1 and "--max-tokens must be > 0" in r.output


RUN_MISTAKES = [
    (
        {"budget": "twenty"},
        "--budget: budget 'twenty' is not a percentage like '20%' or a whole number like '500'",
    ),
    ({"budget": "120%"}, "--budget: budget '120%' is more than 100% of the items"),
    ({"max_budget": "-3"}, "--max-budget: budget '-3' is negative"),
    ({"rule": "greedy"}, "--rule must be one of threshold, exponential, normalized, not 'greedy'"),
    ({"uniform": 1.0}, "--uniform must be in [0, 1), not 1.0"),
    ({"rounds": 0}, "--rounds must be at least 1, not 0"),
    ({"batch": True}, "actlabel run does not use --batch: run `actlabel annotate --batch`, then run"),
]


@pytest.mark.parametrize(("kwargs", "message"), RUN_MISTAKES)
def test_run_options_of_its_own(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        RunOptions(**kwargs)
    assert str(err.value) == message


def test_run_options_make_each_stage_s_options() -> None:
    backend = ScriptedBackend("positive")
    opts = RunOptions(
        backend=backend, cot=True, limit=5, critic_model="openai/judge", backend_options={"n_ctx": 8192}
    )
    annotate = opts.annotate_options()
    assert (annotate.backend, annotate.cot, annotate.limit, annotate.backend_options) == (
        backend, True, 5, {"n_ctx": 8192},
    )  # fmt: skip
    critique = opts.critique_options("cot")
    # the critic has its own model; the local annotator's --n-ctx is not an endpoint's option
    assert (critique.model, critique.backend, critique.strategy, critique.limit) == (
        "openai/judge",
        None,
        "cot",
        5,
    )
    assert critique.backend_options is None
    assert RunOptions(backend_options={"n_threads": 1}).critique_options(None).backend_options == {
        "n_threads": 1
    }


def test_a_bad_plan_is_refused_before_anything_is_annotated(project: Project) -> None:
    # before RunOptions, `run --budget twenty` annotated every item and failed when the round was drawn
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(project.root), "--budget", "twenty", "--no-progress"])
    assert r.exit_code == 1 and "--budget: budget 'twenty' is not a percentage" in r.output
    assert "Traceback" not in r.output
    with Project(project.root) as p:
        assert p.store.conn.execute("SELECT count(*) FROM annotations").fetchone()[0] == 0
    with pytest.raises(UserError, match="^unknown RunOptions option 'budgets'"):
        project.run(budgets="20%")
