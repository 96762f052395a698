"""A hostile pass over the CLI: every user mistake ends as one line on stderr, and nothing stored is lost.

The CLI is driven for real (click's CliRunner in-process, or a subprocess where permissions or
signals matter) against real SQLite projects.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from actlabel.cli import main
from actlabel.project import Project

from .conftest import LABELS, TWEETS, write_csv
from .test_store import schema_4_project


def cli(*args: str | Path):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args])


def assert_one_line(result, *fragments: str, code: int = 1) -> str:
    """The command failed with exit `code` and one `actlabel: error:` line naming `fragments`."""
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.stdout, err, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actlabel: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run(*args: str | Path, unprivileged: bool = False, **kwargs) -> subprocess.CompletedProcess:
    prefix = _unprivileged_prefix() if unprivileged else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "actlabel.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def _unprivileged_prefix() -> list[str]:
    """root ignores file permissions: drop the capabilities that let it (CI runs as a user)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE to test permissions")
    return prefix


def assert_subprocess_one_line(r: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actlabel: error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def new_project(tmp_path: Path, name: str = "proj") -> Path:
    root = tmp_path / name
    r = cli("init", root, "--labels", ",".join(LABELS))
    assert r.exit_code == 0, r.stderr
    return root


def tweets_project(tmp_path: Path) -> Path:
    root = new_project(tmp_path)
    data = write_csv(tmp_path / "tweets.csv", [{"text": t, "gold": g} for t, g in TWEETS])
    r = cli("import", root, data, "--gold", "gold")
    assert r.exit_code == 0, r.stderr
    return root


def db_rows(root: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(root / "actlabel.db") as conn:
        return conn.execute(sql).fetchall()


# ---- images -----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


#: a valid-looking PNG of 65 bytes whose header claims 20000 x 20000 RGB pixels (1.2 GB decoded)
BOMB_PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    + _chunk(b"IDAT", zlib.compress(b""))
    + _chunk(b"IEND", b"")
)


def noisy_png(size: int = 64, seed: int = 0) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_table(tmp_path: Path, images: dict[str, bytes]) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    rows = []
    for name, content in images.items():
        (folder / name).write_bytes(content)
        rows.append({"image": f"imgs/{name}", "caption": f"photo {name}"})
    return write_csv(tmp_path / "images.csv", rows)


def test_a_decompression_bomb_is_refused_at_import_naming_the_row(tmp_path: Path) -> None:
    root = new_project(tmp_path)
    table = image_table(tmp_path, {"a.png": noisy_png(), "bomb.png": BOMB_PNG})
    r = cli("import", root, table, "--image", "image", "--text", "caption")
    assert_one_line(r, "row 2", "bomb.png", "claims 400000000 pixels", "decompression bomb")
    assert db_rows(root, "SELECT count(*) FROM items") == [(0,)]
    # the same in an image folder
    folder = tmp_path / "folder"
    (folder / "positive").mkdir(parents=True)
    (folder / "positive" / "bomb.png").write_bytes(BOMB_PNG)
    assert_one_line(cli("import", root, folder), "bomb.png", "decompression bomb")


def test_a_truncated_image_is_refused_at_import_naming_the_row(tmp_path: Path) -> None:
    root = new_project(tmp_path)
    good = noisy_png()
    table = image_table(tmp_path, {"a.png": good, "b.png": good[: len(good) // 2]})
    r = cli("import", root, table, "--image", "image", "--text", "caption")
    assert_one_line(r, "row 2", "b.png", "cannot be read")
    assert db_rows(root, "SELECT count(*) FROM items") == [(0,)]


SHAPES = ["circle", "square", "triangle"]


def _shapes(tmp_path: Path) -> tuple[Path, Path]:
    """A shapes project (8 images, example images in an examples file) and its image folder."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from .test_annotate import draw_shape

    rng = random.Random(5)
    ex_dir = tmp_path / "examples" / "pics"
    ex_dir.mkdir(parents=True)
    lines = []
    for shape in SHAPES:
        for k in range(3):
            draw_shape(ex_dir / f"{shape}{k}.png", shape, rng)
            lines.append(json.dumps({"label": shape, "image": f"pics/{shape}{k}.png"}))
    examples = tmp_path / "examples" / "shots.jsonl"
    examples.write_text("\n".join(lines) + "\n")
    root = tmp_path / "shapes"
    r = cli("init", root, "--labels", ",".join(SHAPES), "--examples", examples)
    assert r.exit_code == 0, r.stderr
    folder = tmp_path / "items"
    folder.mkdir()
    for k in range(8):
        draw_shape(folder / f"{k}.png", SHAPES[k % 3], rng)
    assert cli("import", root, folder).exit_code == 0
    return root, folder


def test_a_bad_image_fails_alone_at_annotate_with_its_reason(tmp_path: Path) -> None:
    # Images that went bad after import (or were imported by an older version) must not stop the
    # project: the annotate run labels the others and says why these failed.
    root, folder = _shapes(tmp_path)
    (folder / "3.png").write_bytes(BOMB_PNG)
    good = (folder / "5.png").read_bytes()
    (folder / "5.png").write_bytes(good[: len(good) // 2])
    r = cli("annotate", root, "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "Traceback" not in r.stderr
    assert r.stderr.count("failed 1x: cannot read image") == 2, r.stderr
    rows = db_rows(
        root, "SELECT i.item_id, a.status, a.error FROM annotations a JOIN items i ON i.rowid = a.item_rowid"
    )
    failed = {item: error for item, status, error in rows if status == "failed"}
    assert set(failed) == {"3.png", "5.png"}
    assert "decompression bomb" in failed["3.png"].lower() or "exceeds limit" in failed["3.png"]
    assert sum(status == "ok" for _, status, _ in rows) == 6
    # the failed items can be fixed and re-run: only they are annotated again
    (folder / "3.png").write_bytes((folder / "0.png").read_bytes())
    (folder / "5.png").write_bytes(good)
    r = cli("annotate", root, "--no-progress")
    assert r.exit_code == 0 and "failed" not in r.stderr, r.stderr
    assert db_rows(root, "SELECT count(*) FROM annotations WHERE status = 'ok'") == [(8,)]


def test_every_image_unreadable_exits_non_zero(tmp_path: Path) -> None:
    root, folder = _shapes(tmp_path)
    for p in folder.iterdir():
        p.write_bytes(BOMB_PNG)
    r = cli("annotate", root, "--no-progress")
    assert r.exit_code == 1
    assert "actlabel: error: every item failed (8); most common: cannot read image" in r.stderr
    assert "Traceback" not in r.stderr


def test_example_images_are_resolved_against_the_examples_file(tmp_path: Path, monkeypatch) -> None:
    ex = tmp_path / "shots"
    (ex / "pics").mkdir(parents=True)
    (ex / "pics" / "a.png").write_bytes(noisy_png())
    (ex / "shots.jsonl").write_text(
        json.dumps({"label": "positive", "text": "great", "image": "pics/a.png"}) + "\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the examples' folder nor the project's
    r = cli("init", "proj", "--labels", ",".join(LABELS), "--examples", ex / "shots.jsonl")
    assert r.exit_code == 0, r.stderr
    with Project(elsewhere / "proj") as proj:
        (example,) = proj.task.examples
    assert Path(example.image).is_absolute() and Path(example.image) == (ex / "pics" / "a.png").resolve()

    (ex / "bad.jsonl").write_text(
        json.dumps({"label": "positive", "text": "ok"})
        + "\n\n"
        + json.dumps({"label": "negative", "image": "pics/nope.png"})
        + "\n"
    )
    r = cli("init", "proj2", "--labels", ",".join(LABELS), "--examples", ex / "bad.jsonl")
    assert_one_line(r, "bad.jsonl: line 3", "example image 'pics/nope.png' not found")
    assert not (elsewhere / "proj2").exists()


@pytest.mark.parametrize("line", ["5", "null", '"text"', "[1, 2]"])
def test_an_examples_line_that_is_not_an_object(tmp_path: Path, line: str) -> None:
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"label": "positive", "text": "good"}) + "\n" + line + "\n")
    r = cli("init", tmp_path / "p", "--labels", ",".join(LABELS), "--examples", path)
    assert_one_line(r, "ex.jsonl: line 2", "expected an object")


# ---- symlinks and image roots -------------------------------------------------------------------


def test_symlinked_images_outside_the_folder_are_refused_at_import(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(noisy_png())
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "ok.png").write_bytes(noisy_png(seed=1))
    (data / "imgs" / "link.png").symlink_to(outside / "secret.png")
    table = write_csv(data / "t.csv", [{"image": "imgs/ok.png"}, {"image": "imgs/link.png"}])
    root = new_project(tmp_path)
    r = cli("import", root, table, "--image", "image")
    assert_one_line(r, "row 2", "link.png", "outside", "--image-root")
    folder_link = tmp_path / "folder"
    folder_link.mkdir()
    (folder_link / "x.png").symlink_to(outside / "secret.png")
    assert_one_line(cli("import", root, folder_link), "x.png", "outside")
    assert db_rows(root, "SELECT count(*) FROM items") == [(0,)]
    # a wider root the user names is accepted
    r = cli("import", root, table, "--image", "image", "--image-root", tmp_path)
    assert r.exit_code == 0, r.stderr


# ---- permissions --------------------------------------------------------------------------------


def test_a_read_only_project_is_one_line_and_still_readable(tmp_path: Path) -> None:
    root = tweets_project(tmp_path)
    data = write_csv(tmp_path / "more.csv", [{"text": "one more tweet"}])
    db = root / "actlabel.db"
    before = db.read_bytes()
    os.chmod(db, 0o444)
    try:
        for args, verb in [
            (("import", root, data), "import"),
            (("annotate", root, "--model", "scripted/x", "--no-progress"), "annotate"),
            (("critique", root, "--model", "scripted/x", "--no-progress"), "critique"),
            (("select", root, "--budget", "2"), "select"),
        ]:
            r = run(*args, unprivileged=True)
            assert_subprocess_one_line(r, "read-only", f"actlabel {verb}")
        r = run("status", root, "--json", unprivileged=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["items"] == len(TWEETS)
        r = run("export", root, tmp_path / "out.csv", unprivileged=True)
        assert r.returncode == 0, r.stderr
    finally:
        os.chmod(db, 0o644)
    assert db.read_bytes() == before


def test_a_read_only_project_of_the_previous_schema_is_read_without_migrating(tmp_path: Path) -> None:
    schema_4_project(tmp_path / "p", [("x", '{"text": "one"}'), ("y", '{"text": "two"}')])
    db = tmp_path / "p" / "actlabel.db"
    before = db.read_bytes()
    os.chmod(db, 0o444)
    try:
        r = run("status", tmp_path / "p", "--json", unprivileged=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["items"] == 2
        r = run("export", tmp_path / "p", tmp_path / "out.csv", unprivileged=True)
        assert r.returncode == 0, r.stderr
        r = run(
            "import", tmp_path / "p", write_csv(tmp_path / "more.csv", [{"text": "x"}]), unprivileged=True
        )
        assert_subprocess_one_line(r, "read-only")
    finally:
        os.chmod(db, 0o644)
    assert db.read_bytes() == before


def test_a_project_in_a_read_only_folder(tmp_path: Path) -> None:
    root = tweets_project(tmp_path)
    os.chmod(root, 0o555)
    try:
        r = run("import", root, tmp_path / "tweets.csv", unprivileged=True)
        assert_subprocess_one_line(r, "read-only", "not writable")
        r = run("status", root, unprivileged=True)
        assert r.returncode == 0 and "12 items" in r.stdout, r.stderr
        r = run("init", root / "inner", "--labels", "a,b", unprivileged=True)
        assert_subprocess_one_line(r, "cannot create the project", "ermission denied")
    finally:
        os.chmod(root, 0o755)


def test_init_inside_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("init", tmp_path / "notes.txt" / "proj", "--labels", "a,b")
    assert_one_line(r, "cannot create the project", "Not a directory")
    r = cli("init", tmp_path / "notes.txt", "--labels", "a,b")  # click's own check: a usage error
    assert r.exit_code == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


# ---- tables -------------------------------------------------------------------------------------


def test_unlabelled_items_can_follow_a_labelled_set(tmp_path: Path) -> None:
    root = new_project(tmp_path)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(
        "".join(json.dumps({"id": f"a{i}", "text": t, "gold": g}) + "\n" for i, (t, g) in enumerate(TWEETS))
    )
    assert cli("import", root, labelled, "--id", "id", "--gold", "gold").exit_code == 0
    unlabelled = write_csv(tmp_path / "new.csv", [{"text": "brand new tweet"}, {"text": "another one"}])
    r = cli("import", root, unlabelled)
    assert r.exit_code == 0, r.stderr
    assert "2 new" in r.stdout and "no gold column 'gold'" in r.stdout and "no id column 'id'" in r.stdout
    assert db_rows(root, "SELECT count(*) FROM items WHERE gold_label IS NULL") == [(2,)]
    # the remembered roles still apply where the file has them, and a flag the user passes is strict
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "b1", "text": "later labelled", "gold": "neutral"}) + "\n")
    assert cli("import", root, more).exit_code == 0
    assert db_rows(root, "SELECT gold_label FROM items WHERE item_id = 'b1'") == [("neutral",)]
    assert_one_line(cli("import", root, unlabelled, "--gold", "gold"), "--gold column 'gold' not found")
    # the text column is the input itself: a file without it is refused, saying where the role came from
    other = write_csv(tmp_path / "other.csv", [{"body": "x", "extra": "y"}])
    assert_one_line(cli("import", root, other), "text column 'text' (set by its first import)", "--text")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig"])
def test_utf16_and_bom_files_import_with_their_first_column(
    tmp_path: Path, suffix: str, encoding: str
) -> None:
    path = tmp_path / f"d{suffix}"
    rows = [("caf\u00e9 \u2615", "positive"), ("na\u00efve \u00fcber", "negative")]
    if suffix == ".csv":
        content = "text,gold\n" + "".join(f"{t},{g}\n" for t, g in rows)
    else:
        content = "".join(json.dumps({"text": t, "gold": g}, ensure_ascii=False) + "\n" for t, g in rows)
    path.write_bytes(content.encode(encoding))
    root = new_project(tmp_path)
    args = ["import", root, path, "--gold", "gold"]
    if encoding == "utf-16-le":  # no byte-order mark: the user names the encoding
        assert_one_line(cli(*args), "looks like UTF-16", "--encoding utf-16-le")
        args += ["--encoding", "utf-16-le"]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    got = db_rows(root, "SELECT data, gold_label FROM items ORDER BY rowid")
    assert [(json.loads(d), g) for d, g in got] == [({"text": t}, g) for t, g in rows]
    with Project(root) as proj:
        assert proj.task.text_columns == ["text"]


def test_explicit_utf16_encoding_option(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text\nhello\n".encode("utf-16"))
    root = new_project(tmp_path)
    r = cli("import", root, path, "--encoding", "utf-16")
    assert r.exit_code == 0, r.stderr
    assert db_rows(root, "SELECT data FROM items") == [('{"text":"hello"}',)]


def test_nested_json_values_are_stored_as_json_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    values = [{"a": [1, 2], "b": True, "c": None}, [1, "x"], 5, 2.5, False]
    path.write_text("".join(json.dumps({"text": v}) + "\n" for v in values))
    root = new_project(tmp_path)
    assert cli("import", root, path).exit_code == 0
    stored = [json.loads(d)["text"] for (d,) in db_rows(root, "SELECT data FROM items ORDER BY rowid")]
    assert all(isinstance(s, str) for s in stored)
    assert [json.loads(s) for s in stored] == values  # JSON text, not Python reprs like {'b': True}
    out = tmp_path / "out.jsonl"
    assert cli("export", root, out).exit_code == 0
    exported = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert [json.loads(s) for s in exported] == values


def test_interrupted_import_says_nothing_was_stored(tmp_path: Path, monkeypatch) -> None:
    import actlabel.data as data_mod

    monkeypatch.setattr(data_mod, "BATCH_ROWS", 2)
    calls = {"n": 0}
    real = data_mod._rows_to_records

    def interrupted_on_the_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "_rows_to_records", interrupted_on_the_second_batch)
    path = tmp_path / "d.jsonl"
    # numbers in the text column: the exact line-by-line reader, in batches of 2 rows
    path.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(6)))
    root = new_project(tmp_path)
    r = cli("import", root, path)
    assert r.exit_code == 130
    assert "nothing of this import was stored" in r.stderr and "saved" not in r.stderr
    assert db_rows(root, "SELECT count(*) FROM items") == [(0,)]
    assert db_rows(root, "SELECT status FROM runs WHERE stage = 'import'") == [("interrupted",)]


def test_sigint_during_a_real_import(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = 300_000
    path = tmp_path / "big.csv"
    pacsv.write_csv(pa.table({"text": [f"row number {i} of the big file" for i in range(n)]}), path)
    root = new_project(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "import", str(root), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if db_rows(root, "SELECT count(*) FROM runs WHERE stage = 'import' AND status = 'running'")[0][0]:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the import finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip() == (
        "actlabel: interrupted; nothing of this import was stored (an import is all-or-nothing); re-run it"
    )
    assert db_rows(root, "SELECT count(*) FROM items") == [(0,)]
    assert db_rows(root, "PRAGMA integrity_check") == [("ok",)]


# ---- export, select, annotate -------------------------------------------------------------------


def test_export_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    root = tweets_project(tmp_path)
    out = tmp_path / "labels.csv"
    out.write_text("my own file\n")
    assert_one_line(cli("export", root, out), "already exists", "--force")
    assert out.read_text() == "my own file\n"
    r = cli("export", root, out, "--force")
    assert r.exit_code == 0 and "wrote 12 rows" in r.stdout
    assert out.read_text().startswith('"item_id","text",')
    r = cli("export", root, tmp_path)  # click's own check
    assert r.exit_code == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr


def _scripted(monkeypatch, answer) -> None:
    """`--model scripted/NAME` answers with `answer(request)`: in-process, so the CLI's real path runs."""
    import actlabel.models as models
    from actlabel.models.scripted import ScriptedBackend

    monkeypatch.setattr(
        models, "ScriptedBackend", lambda name, **kw: ScriptedBackend(answer, name=name, **kw)
    )


def _item_text(request) -> str:
    return request.messages[-1].plain_text


def test_failure_reasons_are_printed_and_all_failed_exits_non_zero(tmp_path: Path, monkeypatch) -> None:
    root = tweets_project(tmp_path)
    r = cli("annotate", root, "--model", "scripted/x", "--no-progress")  # answers "ok": never a label
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith("  failed 12x: no label in the answer"), r.stderr
    assert lines[-1].startswith("actlabel: error: every item failed (12); most common: no label"), r.stderr

    _scripted(monkeypatch, lambda req: "positive" if "love" in _item_text(req) else "I cannot tell")
    r = cli("annotate", root, "--model", "scripted/y", "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert "failed 11x: no label in the answer" in r.stderr

    _scripted(monkeypatch, "no idea")
    r = cli("critique", root, "--model", "scripted/z", "--strategy", "naive", "--no-progress")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "actlabel: error: every item failed (1)" in r.stderr


def test_select_budget_zero_is_refused(tmp_path: Path, monkeypatch) -> None:
    root = tweets_project(tmp_path)
    _scripted(monkeypatch, lambda req: "positive")
    assert cli("annotate", root, "--model", "scripted/y", "--no-progress").exit_code == 0
    for budget in ("0", "0%"):
        assert_one_line(cli("select", root, "--budget", budget), f"--budget {budget} selects no item")
    assert db_rows(root, "SELECT count(*) FROM selections") == [(0,)]
    assert db_rows(root, "SELECT count(*) FROM runs WHERE stage = 'select'") == [(0,)]


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_review_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    root = tweets_project(tmp_path)
    r = cli("review", root, "--port", port, "--no-browser")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "Invalid value for '--port'" in r.stderr
