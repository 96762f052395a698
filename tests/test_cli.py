from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from actlabel.cli import main

from .conftest import TWEETS, write_csv


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actlabel.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_init_import_status_export_through_the_real_cli(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "t.csv", [{"text": t, "gold": g} for t, g in TWEETS])
    proj = str(tmp_path / "proj")
    r = run("init", proj, "--labels", "positive,negative,neutral", "--instructions", "Sentiment.")
    assert r.returncode == 0, r.stderr
    r = run("import", proj, str(data), "--text", "text", "--gold", "gold")
    assert r.returncode == 0, r.stderr
    assert "12 new" in r.stdout
    r = run("status", proj, "--json")
    st = json.loads(r.stdout)
    assert st["items"] == 12 and st["annotated"]["left"] == 12 and st["gold_items"] == 12
    r = run("export", proj, str(tmp_path / "out.csv"))
    assert r.returncode == 0 and "wrote 12 rows" in r.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    cases = [
        ("status", str(tmp_path)),
        ("init", str(tmp_path / "x"), "--labels", "a,,b"),
        ("init", str(tmp_path / "y"), "--labels", "a,A"),
        ("init", str(tmp_path / "z"), "--labels", "only"),
    ]
    for args in cases:
        r = run(*args)
        assert r.returncode == 1, args
        assert r.stderr.startswith("actlabel: error: "), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_help_everywhere() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in main.commands:
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0, command
        assert "Usage:" in sub.output


def test_cli_start_leaves_heavy_modules_for_the_commands_that_need_them() -> None:
    heavy = [
        "numpy",
        "pyarrow",
        "httpx",
        "aiohttp",
        "openai",
        "actlabel.frame",
        "actlabel.data",
        "actlabel.label_model",
    ]
    # what `actlabel annotate` through an http:// endpoint loads before its first call
    code = (
        "import sys, actlabel.cli, actlabel.project, actlabel.annotate, actlabel.models.openai_compat; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # and the package's public names still resolve, on first use
    code = "import actlabel; from actlabel import Project, label; print(Project.__name__, label.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Project", "label"]


def test_cli_rule_choices_are_the_selection_rules() -> None:
    from actlabel import cli, select

    assert cli.RULES == select.RULES
