"""Review app latency with 1,000,000 items in the store and 20 reviewers at once.

    .venv/bin/python bench/bench_review.py [--items 1000000] [--reviewers 20] [--max-saves 3000] [--max-seconds 60]

Builds a project of N items, all annotated and critiqued, 2% selected (bulk inserts, one
transaction), starts the real `actlabel review` command on 127.0.0.1 in its own process, then runs a
loopback load generator (asyncio) in which each reviewer loops: GET / (next item: lease + render)
and POST /save (commit a review, 303). Three runs: no pause between items (the server saturated: a
throughput test), a short pause per item (reviewers far faster than people, but not all at the same
instant), and the same paced run with httpx as the client. Each run stops by itself after
--max-saves saves or --max-seconds. At the end the store must hold exactly as many reviews as the saves that got a 303.
Writes the `## Review app` section of docs/benchmarks.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine_line, publish  # noqa: E402

from actlabel.store import Store  # noqa: E402
from actlabel.task import Label, Task  # noqa: E402

LABELS = ["positive", "negative", "neutral"]
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
ROWID = re.compile(r'name="rowid" value="(\d+)"')


def build_project(root: Path, n: int, share: float) -> dict[str, float]:
    """N items with annotation, critique and selection records, written with executemany in one transaction."""
    t0 = time.perf_counter()
    store = Store.create(root, Task(labels=[Label(x) for x in LABELS], text_columns=["text"]))
    run = store.start_run("bench")
    rng = random.Random(0)
    now = time.time()
    step = round(1 / share)
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO items (item_id, data, image_path, gold_label, run_id) VALUES (?, ?, NULL, ?, ?)",
            (
                (
                    f"t{i:07d}",
                    json.dumps({"text": f"tweet number {i} about the weather and the train"}),
                    LABELS[i % 3],
                    run,
                )
                for i in range(n)
            ),
        )
        conn.executemany(
            "INSERT INTO annotations (item_rowid, run_id, model, label, confidence, status, created_at)"
            " VALUES (?, ?, 'bench', ?, 0.8, 'ok', ?)",
            ((i + 1, run, LABELS[(i + (i % 5 == 0)) % 3], now) for i in range(n)),
        )
        conn.executemany(
            "INSERT INTO critiques (item_rowid, run_id, model, strategy, error_prob, proposed_label, rationale,"
            " status, created_at) VALUES (?, ?, 'bench', 'cot', ?, ?, 'the wording suggests another label', 'ok', ?)",
            ((i + 1, run, rng.random(), LABELS[(i + 1) % 3], now) for i in range(n)),
        )
        conn.executemany(
            "INSERT INTO selections (item_rowid, run_id, round, selected, review_prob, created_at) VALUES (?, ?, 1, ?, ?, ?)",
            ((i + 1, run, int(i % step == 0), 1.0 if i % step == 0 else share, now) for i in range(n)),
        )
    store.add_input_columns(["text"])
    selected = store.count("selections", "selected = 1")
    store.close()
    return {"build_s": time.perf_counter() - t0, "selected": selected}


def start_server(root: Path) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "actlabel.cli", "review", str(root), "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while True:
        line = proc.stdout.readline()
        if "open http" in line:
            return proc, line.split("open ", 1)[1].split()[0].rstrip("/"), time.perf_counter() - t0
        if not line and proc.poll() is not None:
            raise SystemExit(f"the review server did not start: {line!r}")


@dataclass
class Run:
    client: str  # "raw" or "httpx"
    think_s: float
    max_saves: int
    max_seconds: float
    next_ms: list[float] = field(default_factory=list)
    save_ms: list[float] = field(default_factory=list)
    saves: int = 0
    errors: int = 0
    seconds: float = 0.0


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, with a cookie jar.

    httpx's per-request CPU cost is several times the server's: on a small machine that the load
    generator shares with the server, an httpx generator measures itself. This one costs little,
    so the figures are the server's. (The httpx run is kept as a row for comparison.)
    """

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.cookies: dict[str, str] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        body = urlencode(form).encode() if form is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookies:
            head.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if form is not None:
            head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                key, _, rest = value.strip().partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
        data = await self.reader.readexactly(length) if length else b""
        return int(lines[0].split()[1]), data.decode()

    async def get(self, path: str) -> tuple[int, str]:
        return await self.request("GET", path)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        return await self.request("POST", path, form)


class HttpxClient:
    def __init__(self, base: str) -> None:
        self.client = httpx.AsyncClient(base_url=base, timeout=30)

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, path: str) -> tuple[int, str]:
        res = await self.client.get(path)
        return res.status_code, res.text

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        res = await self.client.post(path, data=form)
        return res.status_code, res.text


async def reviewer(base: str, name: str, run: Run, deadline: float, rng: random.Random) -> None:
    async with RawClient(base) if run.client == "raw" else HttpxClient(base) as client:
        _, page = await client.get("/")
        await client.post("/name", {"csrf": CSRF.search(page).group(1), "name": name})
        while run.saves < run.max_saves and time.perf_counter() < deadline:
            t = time.perf_counter()
            status, page = await client.get("/")
            run.next_ms.append((time.perf_counter() - t) * 1000)
            rowid = ROWID.search(page)
            if status != 200 or rowid is None:
                run.errors += status != 200
                return  # nothing left to review
            if run.think_s:
                await asyncio.sleep(rng.uniform(0.5, 1.5) * run.think_s)
            t = time.perf_counter()
            status, _ = await client.post(
                "/save",
                {"csrf": CSRF.search(page).group(1), "rowid": rowid.group(1), "label": rng.choice(LABELS)},
            )
            run.save_ms.append((time.perf_counter() - t) * 1000)
            if status == 303:
                run.saves += 1
            else:
                run.errors += 1


async def load(base: str, reviewers: int, run: Run, tag: str) -> None:
    t0 = time.perf_counter()
    deadline = t0 + run.max_seconds
    await asyncio.gather(
        *(reviewer(base, f"{tag}-{i}", run, deadline, random.Random(i)) for i in range(reviewers))
    )
    run.seconds = time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--share", type=float, default=0.02, help="share of items selected for review")
    ap.add_argument("--reviewers", type=int, default=20)
    ap.add_argument("--max-saves", type=int, default=3000, help="per run")
    ap.add_argument("--max-seconds", type=float, default=60, help="per run")
    ap.add_argument("--think", type=float, default=0.25, help="mean pause per item in the paced run (s)")
    ap.add_argument("--dir", type=Path, default=None, help="project folder (default: a temporary one)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "bench-review"
        built = build_project(root, args.items, args.share)
        print(
            f"built {args.items:,} items, {built['selected']:,} selected, in {built['build_s']:.1f} s",
            flush=True,
        )
        load_before = os.getloadavg()[0]
        proc, base, startup_s = start_server(root)
        runs = {
            "no pause (saturated)": Run("raw", 0.0, args.max_saves, args.max_seconds),
            f"pause ~{args.think:g} s per item": Run("raw", args.think, args.max_saves, args.max_seconds),
            f"pause ~{args.think:g} s per item, httpx client": Run(
                "httpx", args.think, args.max_saves, args.max_seconds
            ),
        }
        try:
            for i, (title, run) in enumerate(runs.items()):
                asyncio.run(load(base, args.reviewers, run, f"r{i}"))
                print(
                    f"{title}: {run.saves} saves in {run.seconds:.1f} s ({run.saves / run.seconds:.0f}/s), "
                    f"next p50 {pct(run.next_ms, 0.5):.1f} p99 {pct(run.next_ms, 0.99):.1f} ms, "
                    f"save p50 {pct(run.save_ms, 0.5):.1f} p99 {pct(run.save_ms, 0.99):.1f} ms, errors {run.errors}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
        with Store.open(root) as store:
            stored = store.count("reviews")
        total = sum(r.saves for r in runs.values())
        assert stored == total, f"{stored} reviews stored but {total} saves answered"
        print(
            f"server start (queue built over {args.items:,} items): {startup_s:.1f} s; reviews stored {stored}"
        )

    rows = "\n".join(
        f"| {title} | {run.saves:,} | {run.saves / run.seconds:.0f} | {pct(run.next_ms, 0.5):.1f} | "
        f"{pct(run.next_ms, 0.99):.1f} | {pct(run.save_ms, 0.5):.1f} | {pct(run.save_ms, 0.99):.1f} | "
        f"{max(run.next_ms + run.save_ms):.0f} | {run.errors} |"
        for title, run in runs.items()
    )
    command = (
        "`.venv/bin/python bench/bench_review.py"
        + ("" if args.items == 1_000_000 else f" --items {args.items}")
        + "`"
    )
    body = f"""
Command: {command} ({time.strftime("%Y-%m-%d")}; {machine_line()})

{args.items:,} items in the store, all annotated and critiqued, {built["selected"]:,} selected ({args.share:.0%}).
The real `actlabel review` server (one process, 127.0.0.1) and a loopback load generator (asyncio,
one keep-alive connection per reviewer) with {args.reviewers} concurrent reviewers share the machine.
Each reviewer loops: `GET /` (next item: lease in the store, render) then `POST /save` (review
committed, 303). Latency is measured at the client, in milliseconds. Target: p99 < 50 ms.

The load generator is a minimal HTTP/1.1 client: httpx costs several times the server's CPU per
request, and on a small machine shared with the server it measures itself (last row: the paced run
with httpx as the client). The 1-minute load average was {load_before:.1f} when the runs began
(other jobs shared the machine, so the figures are pessimistic).

Store built in {built["build_s"]:.0f} s (bulk executemany, one transaction); server start, including
the queue build over all items, {startup_s:.1f} s. Every answered save was in the store afterwards
({stored:,} reviews).

| run | saves | saves/s | next p50 | next p99 | save p50 | save p99 | max | errors |
|---|---|---|---|---|---|---|---|---|
{rows}

"No pause" keeps {args.reviewers} requests in flight at all times: it measures throughput, and its
latency is mostly queueing behind the other {args.reviewers - 1} requests. Real reviewers spend
seconds per item, which the paced runs approach.
"""
    publish("Review app", body, write=not args.no_write)


if __name__ == "__main__":
    main()
