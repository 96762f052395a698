"""The scale run (issue 14): N items imported, annotated through the loopback endpoint, criticized,
selected, exported; wall time, items/s and peak RSS per stage, and how each grows with N.

    .venv/bin/python bench/bench_scale.py [--items 100000,1000000] [--concurrency 64]

Every stage is the real CLI (`actlabel import|annotate|critique|select|export`) in a fresh process
(so its peak RSS is its own); the OpenAI-compatible test server (0 ms latency, nothing recorded)
runs in a process of its own, so its CPU and memory are not the client's. The critic is
`confidence` (1 - the annotator's own probability of its label): no model call and no features,
the zero-model-call critic that scales. The consistency critic needs MiniLM embeddings of every
item (~90 texts/s here, hours at 1M) and is left out. Writes the `## Scale run` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine_line, write_section  # noqa: E402

LABELS = ["positive", "negative", "neutral"]

# One CLI command in this process, then its own peak RSS: the stage as a user runs it.
STAGE = r"""
import json, resource, sys, time
from actlabel.cli import main
t = time.perf_counter()
code = 0
try:
    main(sys.argv[1:], prog_name="actlabel", standalone_mode=True)
except SystemExit as exc:
    code = exc.code or 0
elapsed = time.perf_counter() - t
print(json.dumps({"code": code, "seconds": elapsed,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""

# The endpoint's answers: a label and a confidence drawn from the item's text (a stable hash),
# with the first token's top alternatives as an endpoint with logprobs gives them
# (bench_endpoint.py serves the same answers).
RESPONDER = r"""
import math, re, sys, time, zlib
from actlabel.testing.openai_server import OpenAICompatServer, Reply
LABELS = ["positive", "negative", "neutral"]
TEXT = re.compile(r"^text: (.*)$", re.M)

def respond(body):
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    found = TEXT.findall(user if isinstance(user, str) else "")
    h = zlib.crc32((found[-1] if found else "").encode())
    label = LABELS[h % 3]
    p = 0.4 + 0.59 * ((h >> 8) % 1000) / 1000
    top = {lab: math.log(p if lab == label else (1 - p) / 2) for lab in LABELS}
    return Reply(label, logprobs=[(label, top[label], top)])
"""

SERVER = (
    RESPONDER
    + r"""
srv = OpenAICompatServer(responder=respond, record=False).start()
print(srv.port, flush=True)
while True:
    time.sleep(3600)
"""
)


def write_input(path: Path, n: int) -> None:
    code = (
        "import sys, pyarrow as pa, pyarrow.csv as pacsv\n"
        "n = int(sys.argv[2]); w = ['great', 'awful', 'meeting', 'today', 'phone', 'love', 'hate', 'rain']\n"
        "labels = ['positive', 'negative', 'neutral']\n"
        "pacsv.write_csv(pa.table({'text': [f'tweet {i}: {w[i % 8]} {w[(i * 7) % 8]} #{i % 97}' for i in range(n)],"
        " 'gold': [labels[(i * 5) % 3] for i in range(n)]}), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(n)], check=True)


def stage(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STAGE, *args], capture_output=True, text=True)
    figures = json.loads(out.stderr.strip().splitlines()[-1])
    if figures["code"] != 0:
        raise SystemExit(f"actlabel {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    figures["output"] = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return figures


def run(n: int, folder: Path, base_url: str, concurrency: int) -> list[tuple[str, dict]]:
    src = folder / f"items-{n}.csv"
    write_input(src, n)
    proj = folder / f"proj-{n}"
    subprocess.run(
        [sys.executable, "-m", "actlabel.cli", "init", str(proj), "--labels", ",".join(LABELS)],
        check=True,
        capture_output=True,
    )
    out = folder / f"labels-{n}.csv"
    stages = [
        ("import", ["import", str(proj), str(src), "--gold", "gold"]),
        (
            "annotate",
            [
                "annotate",
                str(proj),
                "--model",
                "openai/scale-test",
                "--base-url",
                base_url,
                "--concurrency",
                str(concurrency),
                "--no-progress",
            ],
        ),
        ("critique (confidence)", ["critique", str(proj), "--strategy", "confidence", "--no-progress"]),
        ("select (2%, threshold, 10% uniform)", ["select", str(proj), "--budget", "2%", "--uniform", "0.1"]),
        ("export CSV", ["export", str(proj), str(out)]),
    ]
    results = []
    for name, args in stages:
        r = stage(*args)
        r["items"] = n
        results.append((name, r))
        print(
            f"{n:,} {name}: {r['seconds']:.1f} s, {n / r['seconds']:,.0f} items/s, peak {r['peak_mb']:.0f} MB"
            f" | {r['output'][:160]}",
            flush=True,
        )
    subprocess.run(["rm", "-rf", str(proj), str(src), str(out)], check=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", default="100000", help="comma-separated sizes, smallest first")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sizes = [int(x) for x in args.items.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M")
    loads = [os.getloadavg()[0]]
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        by_size = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                by_size[n] = run(n, Path(tmp), base_url, args.concurrency)
                loads.append(os.getloadavg()[0])
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [
        f"Command: `.venv/bin/python bench/bench_scale.py --items {args.items} --concurrency {args.concurrency}`"
        f" ({started}; {machine_line()})",
        "",
        "Short text items with a gold column, each stage the real CLI in a fresh process; annotate calls",
        "the OpenAI-compatible test server (0 ms latency, in its own process, on the same 2 cores) with",
        f"concurrency {args.concurrency}. The critic is `confidence` (1 - the annotator's probability of its",
        "label; no model call): the consistency critic needs MiniLM embeddings of every item and is left",
        "out at this scale. The machine is shared with other jobs (1-minute load average",
        f"{', '.join(f'{x:.1f}' for x in loads)} at the start and after each size).",
        "",
        "| stage | items | seconds | items/s | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        for name, r in by_size[n]:
            lines.append(
                f"| {name} | {n:,} | {r['seconds']:.1f} | {n / r['seconds']:,.0f} | {r['peak_mb']:.0f} |"
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        lines += [
            "",
            f"Growth from {small:,} to {large:,} items ({large / small:.0f}x): time ratio (linear = "
            f"{large / small:.0f}) and peak RSS ratio (flat = 1.0):",
            "",
            "| stage | time ratio | RSS ratio |",
            "|---|---|---|",
        ]
        for (name, a), (_, b) in zip(by_size[small], by_size[large], strict=True):
            lines.append(
                f"| {name} | {b['seconds'] / a['seconds']:.1f} | {b['peak_mb'] / a['peak_mb']:.2f} |"
            )
    write_section("Scale run", "\n".join(lines))


if __name__ == "__main__":
    main()
