"""Import and export speed and peak memory with 1,000,000 short text rows.

    .venv/bin/python bench/bench_io.py [--rows 1000000]

Each phase runs in a fresh process so its peak RSS is its own. Writes the `## Import and export`
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine_line, write_section  # noqa: E402

PHASE = r"""
import json, resource, sys, time
from actlabel.project import Project
kind, proj, path = sys.argv[1:4]
t = time.perf_counter()
with Project(proj) as p:
    if kind == "import":
        n = p.import_file(path, text_columns=["text"], gold_column="gold").rows
    else:
        n = p.export(path)
elapsed = time.perf_counter() - t
print(json.dumps({"rows": n, "seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_inputs(folder: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    words = ["great", "awful", "meeting", "today", "phone", "love", "hate", "rain", "coffee", "train"]
    labels = ["positive", "negative", "neutral"]
    text = [
        f"tweet {i}: {words[i % 10]} {words[(i * 7) % 10]} and {words[(i * 3) % 10]} #{i % 97}"
        for i in range(rows)
    ]
    gold = [labels[i % 3] for i in range(rows)]
    table = pa.table({"text": text, "gold": gold})
    csv_path, pq_path = folder / "rows.csv", folder / "rows.parquet"
    pacsv.write_csv(table, csv_path)
    pq.write_table(table, pq_path)
    return csv_path, pq_path


def phase(kind: str, proj: Path, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PHASE, kind, str(proj), str(path)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from actlabel.project import Project

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv_path, pq_path = make_inputs(folder, args.rows)
        for name, src in [("CSV", csv_path), ("Parquet", pq_path)]:
            proj = folder / f"proj-{name}"
            Project.init(proj, ["positive", "negative", "neutral"]).close()
            r = phase("import", proj, src)
            results.append((f"import {name}", r))
            print(
                f"import {name}: {r['rows'] / r['seconds']:,.0f} items/s, peak {r['peak_mb']:.0f} MB",
                flush=True,
            )
        proj = folder / "proj-CSV"
        for name, suffix in [("CSV", ".csv"), ("Parquet", ".parquet"), ("JSONL", ".jsonl")]:
            r = phase("export", proj, folder / f"out{suffix}")
            results.append((f"export {name}", r))
            print(
                f"export {name}: {r['rows'] / r['seconds']:,.0f} items/s, peak {r['peak_mb']:.0f} MB",
                flush=True,
            )
    started = time.strftime("%Y-%m-%d")
    lines = [
        f"Command: `.venv/bin/python bench/bench_io.py --rows {args.rows}` ({started}; {machine_line()})",
        "",
        "Short text rows (about 50 characters) with a gold column; each phase in a fresh process.",
        "Target: at least 100,000 items/s for import and export, peak memory under 500 MB.",
        "",
        "| phase | rows | seconds | items/s | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results:
        lines.append(
            f"| {name} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} |"
        )
    write_section("Import and export", "\n".join(lines))


if __name__ == "__main__":
    main()
