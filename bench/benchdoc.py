"""Shared by the benchmark scripts: the machine line and section-wise updates of docs/benchmarks.md."""

from __future__ import annotations

import fcntl
import os
import platform
import re
from pathlib import Path

# ACTLABEL_BENCH_DOC: another file to write, for a smoke run (tests/test_benches.py)
DOC = Path(
    os.environ.get("ACTLABEL_BENCH_DOC") or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
)


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section, under a lock: several benchmarks write this file."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        section = f"## {title}\n\n{body.strip()}\n"
        pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m: section + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        DOC.write_text(text.rstrip("\n") + "\n")


def publish(title: str, body: str, *, write: bool = True) -> None:
    """Print a benchmark's section and, unless `write` is false (its --no-write), put it in the doc."""
    print(body)
    if write:
        write_section(title, body)
