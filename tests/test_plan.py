"""`actlabel plan`: real prompts, call/token/cost estimates, and no model calls."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from actlabel.cli import main
from actlabel.errors import UserError
from actlabel.plan import plan
from actlabel.project import Project

from .conftest import LABELS, TWEETS


def table_row(text: str, stage: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.strip().startswith(stage + " "))
    return line.split()


def test_plan_renders_real_prompts_and_prices_an_endpoint(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no client is built: no key needed
    monkeypatch.delenv("ACTLABEL_CRITIC_MODEL", raising=False)
    out = plan(project.store, model="openai/gpt-4o-mini", strategy="cot")
    assert f"{len(TWEETS)} items" in out
    assert "--- annotator prompt for item" in out and "--- critic prompt for item" in out
    assert TWEETS[0][0] in out  # a real item, not a placeholder
    assert "Machine label:" in out and "Classify the sentiment" in out
    assert "critic: cot with openai/gpt-4o-mini (self-criticism)" in out
    assert "~4 characters per token" in out
    annotate_row = table_row(out, "annotate")
    critique_row = table_row(out, "critique")
    assert annotate_row[2] == str(len(TWEETS)) and critique_row[2] == str(len(TWEETS))
    assert annotate_row[-1].startswith("$") and float(annotate_row[-1][1:]) > 0
    total = table_row(out, "total")
    assert int(total[1].replace(",", "")) == 2 * len(TWEETS)
    assert "no model was called" in out


def test_plan_counts_more_calls_for_two_step_critics(project: Project) -> None:
    out = plan(project.store, model="openai/gpt-4o-mini", critic_model="openai/gpt-4o", strategy="cot-logit")
    assert table_row(out, "critique")[2] == str(2 * len(TWEETS))
    assert "cross-criticism" in out and "[assistant, continued]" not in out
    learned = plan(project.store, model="openai/gpt-4o-mini", strategy="learned")
    assert "no model calls" in learned and table_row(learned, "critique")[2] == "0"


def test_plan_says_when_a_price_is_unknown(project: Project, tmp_path) -> None:
    out = plan(project.store, model="openai/my-vllm-model", strategy="naive")
    assert "unknown price" in out and "unknown prices" in out
    (project.root / "prices.json").write_text(json.dumps({"my-vllm-model": [1.0, 2.0]}))
    priced = plan(project.store, model="openai/my-vllm-model", strategy="naive")
    assert "unknown price" not in priced
    row = table_row(priced, "annotate")
    tokens_in, tokens_out = (int(x.replace(",", "")) for x in row[3:5])
    assert float(row[5][1:]) == pytest.approx((tokens_in * 1.0 + tokens_out * 2.0) / 1e6, abs=1e-4)


def test_plan_cot_and_devil_prompts(project: Project) -> None:
    out = plan(project.store, model="openai/gpt-4o-mini", strategy="devil", cot=True)
    assert "chain-of-thought" in out and "Answer: <one of positive, negative, neutral>" in out
    assert "devil's advocate" in out


def test_plan_errors(tmp_path) -> None:
    empty = Project.init(tmp_path / "e", LABELS)
    with pytest.raises(UserError, match="no items"):
        plan(empty.store)
    empty.close()


def test_plan_cli(project: Project) -> None:
    result = CliRunner().invoke(
        main, ["plan", str(project.root), "--model", "openai/gpt-4o-mini", "--strategy", "mc"]
    )
    assert result.exit_code == 0, result.output
    assert "critic: mc" in result.output and re.search(r"total\s+24", result.output)


@pytest.mark.slow
def test_plan_counts_tokens_with_the_llama_tokenizer(project: Project) -> None:
    pytest.importorskip("llama_cpp")
    out = plan(project.store, model="local/smollm2", strategy="logit")
    assert "llama.cpp tokenizer" in out and "$0 (local)" in out
    assert "<|im_start|>" not in out  # prompts are shown as turns, the template only counts tokens


class VisionBackend:
    """A backend kind plan.py has never heard of, declaring only its capabilities."""

    supports_images = True
    free = True


class BlindBackend:
    supports_images = False


def test_plan_follows_the_capabilities_a_new_backend_declares(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from actlabel.models import spec

    folder = tmp_path / "images"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (8, 8), (40 * k, 90, 200)).save(folder / label / f"{k}.png")
    proj = Project.init(tmp_path / "pets", ["cat", "dog"], instructions="Which animal?")
    try:
        proj.import_file(folder)
        monkeypatch.setitem(spec.BACKENDS, "acmevision", f"{__name__}:VisionBackend")
        monkeypatch.setitem(spec.BACKENDS, "acmeblind", f"{__name__}:BlindBackend")
        seeing = plan(proj.store, model="acmevision/v1", strategy="cot")
        blind = plan(proj.store, model="acmeblind/v1", strategy="cot")
    finally:
        proj.close()
    annotator_prompt = seeing.split("--- annotator prompt")[1].split("\n---")[0]
    critic_prompt = seeing.split("--- critic prompt")[1].split("\n---")[0]
    assert "[image: " in annotator_prompt and "[image: " in critic_prompt
    assert "[image: " not in blind
    assert float(table_row(seeing, "annotate")[5][1:]) == 0.0 and "unknown price" in blind
