"""The benchmarks run end to end at a small size (their figures are for docs/benchmarks.md; here
only that every phase runs and the section is written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_io_runs_every_phase_and_writes_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    r = subprocess.run(
        [sys.executable, str(BENCH / "bench_io.py"), "--rows", "2000,4000"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ACTLABEL_BENCH_DOC": str(doc)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = doc.read_text()
    assert "## Import and export" in text
    for stage in ("import", "export"):
        for fmt in ("CSV", "Parquet", "JSONL"):
            assert f"| {stage} {fmt} | 4,000 |" in text, (stage, fmt)
            assert f"| naive {stage}, {fmt} | 4,000 |" in text, (stage, fmt)
