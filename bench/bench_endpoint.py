"""`actlabel annotate` through an OpenAI-compatible endpoint vs a plain client (issue 14).

    .venv/bin/python bench/bench_endpoint.py --items 2000 --repeats 3
    .venv/bin/python bench/bench_endpoint.py --baseline-src /tmp/before   # the same run for another tree
    .venv/bin/python bench/bench_endpoint.py --items 2000 --profile /tmp/annotate.prof --repeats 1

Both sides are whole processes timed from spawn to exit, against the same loopback server (the
project's OpenAI-compatible test server, in a process of its own, `--latency` per call), with the
same concurrency and the same item count:
- `actlabel annotate PROJECT --model openai/... --concurrency C` on a freshly imported project
  (a copy per repeat, so the response cache is cold);
- plain clients sending the very request bodies annotate sends (built beforehand, not timed) and
  keeping each answer's text: threads calling urllib (the issue's reference) and one aiohttp
  session with C tasks (the leanest client Python has, for scale).
Each repeat runs every side once, interleaved, so load on a shared machine hits them alike; the
ratio is the median of the per-repeat ratios. The ideal is concurrency / latency. CPU seconds are
the child process's user + system time. Writes `## Endpoint client vs a plain client` of
docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_scale import RESPONDER  # noqa: E402
from benchdoc import machine_line, publish  # noqa: E402

SECTION = "Endpoint client vs a plain client"
LABELS = ["positive", "negative", "neutral"]

# The endpoint, with bench_scale's answers (a label and its first token's top alternatives, drawn
# from a hash of the item text so answers differ by item) and a set latency.
SERVER = (
    RESPONDER
    + r"""
srv = OpenAICompatServer(responder=respond, latency=float(sys.argv[1]), record=False).start()
print(srv.port, flush=True)
sys.stdin.read()
srv.stop()
"""
)

# The plain threaded client: one urllib call per body from a pool of threads, answers kept.
PLAIN_URLLIB = r"""
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, bodies_path, out_path, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(bodies_path, "rb") as f:
    bodies = f.read().splitlines()
headers = {"Content-Type": "application/json", "Authorization": "Bearer not-needed"}

def call(body):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]

with ThreadPoolExecutor(concurrency) as pool:
    answers = list(pool.map(call, bodies))
with open(out_path, "w") as f:
    json.dump(answers, f)
"""

# The plain asyncio client: one aiohttp session, `concurrency` tasks pulling bodies.
PLAIN_AIOHTTP = r"""
import asyncio, json, sys
import aiohttp
url, bodies_path, out_path, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(bodies_path, "rb") as f:
    bodies = f.read().splitlines()
headers = {"Content-Type": "application/json", "Authorization": "Bearer not-needed"}

async def main():
    answers = [None] * len(bodies)
    todo = iter(range(len(bodies)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            for i in todo:
                async with session.post(url, data=bodies[i], headers=headers) as resp:
                    answers[i] = json.loads(await resp.read())["choices"][0]["message"]["content"]
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers

answers = asyncio.run(main())
with open(out_path, "w") as f:
    json.dump(answers, f)
"""

# The request bodies annotate sends for the imported items, built with the tree's own code.
BODIES = r"""
import sys
import orjson
from actlabel import prompting
from actlabel.annotate import TOP_LOGPROBS
from actlabel.models.base import ChatRequest
from actlabel.models.openai_compat import build_payload
from actlabel.stages import label_max_tokens
from actlabel.store import Store
store = Store.open(sys.argv[1])
names = tuple(store.task.label_names)
with open(sys.argv[2], "wb") as out:
    for item in store.iter_items():
        messages = prompting.annotation_messages(store.task, item, cot=False, root=store.root)
        req = ChatRequest(messages, max_tokens=label_max_tokens(names), choices=names, logprobs=True,
                          top_logprobs=TOP_LOGPROBS)
        out.write(orjson.dumps(build_payload(sys.argv[3], req)) + b"\n")
"""


def env_for(src: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    # Bytecode caches as an installed package has them (pip compiles on install): without them
    # every start compiles actlabel's sources, which is not what a user's run pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Wall time from spawn to exit and the child's CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "stdout": proc.stdout.strip()}


def write_items(path: Path, n: int) -> None:
    words = ["great", "awful", "meeting", "today", "phone", "love", "hate", "rain"]
    with open(path, "w") as f:
        f.write("text,gold\n")
        for i in range(n):
            f.write(f"tweet {i}: {words[i % 8]} {words[(i * 7) % 8]} #{i % 97},{LABELS[(i * 5) % 3]}\n")


def make_project(src: Path, items_csv: Path, proj: Path) -> None:
    env = env_for(src)
    cli = [sys.executable, "-m", "actlabel.cli"]
    subprocess.run(
        [*cli, "init", str(proj), "--labels", ",".join(LABELS)], env=env, check=True, capture_output=True
    )
    subprocess.run(
        [*cli, "import", str(proj), str(items_csv), "--gold", "gold"],
        env=env,
        check=True,
        capture_output=True,
    )


def annotate_cmd(proj: Path, base_url: str, concurrency: int, profile: str | None = None) -> list[str]:
    head = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
    return [
        *head,
        "-m",
        "actlabel.cli",
        "annotate",
        str(proj),
        "--model",
        "openai/bench",
        "--base-url",
        base_url,
        "--concurrency",
        str(concurrency),
        "--no-progress",
    ]


def import_seconds(src: Path, runs: int) -> list[float]:
    """Wall seconds of `python -c 'import actlabel.cli'` (what every CLI command pays first)."""
    cmd = [sys.executable, "-c", "import actlabel.cli"]
    return [timed(cmd, env_for(src))["wall"] for _ in range(runs)]


def check_annotated(out: str, n: int) -> None:
    # "annotated N items with ...: N ok, 0 failed, ..."
    if f": {n} ok, 0 failed" not in out:
        raise SystemExit(f"annotate did not label all {n} items: {out}")


def profile_groups(path: str, top: int = 12) -> list[tuple[str, float, float]]:
    """(where, self seconds, share) of a cProfile run, grouped by package or actlabel module:
    per function the figures are too scattered to say where a call's time goes."""
    import pstats

    groups: dict[str, float] = {}
    total = 0.0
    for (file, _line, name), (_cc, _nc, self_time, _cum, _callers) in pstats.Stats(path).stats.items():
        total += self_time
        if file == "~":  # a builtin: named by what it does
            if "poll" in name or "select" in name:
                key = "waiting in epoll (idle)"
            elif "sqlite3" in name:
                key = "sqlite3 (C)"
            elif "socket" in name or "send" in name or "recv" in name:
                key = "socket calls"
            elif any(
                w in name for w in ("builtins.compile", "marshal.loads", "_imp.", "exec", "__build_class__")
            ):
                key = "importing (compile, load)"
            else:
                key = "other builtins"
        elif "site-packages/" in file:
            key = file.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/actlabel/" in file:
            key = "actlabel/" + file.split("/actlabel/", 1)[1]
        elif "/lib/python3" in file:
            key = "stdlib " + file.split("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
        else:
            key = "importing (compile, load)" if file.startswith("<frozen") else file
        groups[key] = groups.get(key, 0.0) + self_time
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
    return [(k, v, v / total) for k, v in ranked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per call")
    ap.add_argument(
        "--baseline-src", type=Path, help="another source tree (its src/) measured in the same run"
    )
    ap.add_argument("--baseline-name", default="baseline", help="what the baseline tree is, for the table")
    ap.add_argument(
        "--profile",
        help="also run annotate once per tree under cProfile, stats to PROFILE.0, .1, ...; summarised",
    )
    ap.add_argument(
        "--import-runs", type=int, default=10, help="timed starts of `import actlabel.cli` per tree"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    trees = {"this tree": ROOT / "src"}
    if args.baseline_src is not None:
        base = args.baseline_src.resolve()
        trees[args.baseline_name] = base / "src" if (base / "src" / "actlabel").is_dir() else base
    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ideal = args.concurrency / args.latency
    rows: dict[str, list[dict]] = {}
    profiles: dict[str, list[tuple[str, float, float]]] = {}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.latency)],
        env=env_for(ROOT / "src"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        if not port:
            raise SystemExit("the benchmark server did not start")
        base_url = f"http://127.0.0.1:{port}/v1"
        url = f"{base_url}/chat/completions"
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            items_csv = tmp / "items.csv"
            write_items(items_csv, args.items)
            templates = {}
            for name, src in trees.items():
                templates[name] = tmp / f"template-{len(templates)}"
                make_project(src, items_csv, templates[name])
            bodies = tmp / "bodies.jsonl"
            subprocess.run(
                [sys.executable, "-c", BODIES, str(templates["this tree"]), str(bodies), "bench"],
                env=env_for(ROOT / "src"),
                check=True,
            )
            # Warm-up: page cache, the server's first connections, Python's bytecode caches.
            for name, src in trees.items():
                warm = tmp / "warm"
                shutil.copytree(templates[name], warm)
                timed(annotate_cmd(warm, base_url, args.concurrency), env_for(src))
                shutil.rmtree(warm)
            for rep in range(args.repeats):
                for kind, code in (("plain urllib threads", PLAIN_URLLIB), ("plain aiohttp", PLAIN_AIOHTTP)):
                    out = tmp / "answers.json"
                    r = timed(
                        [sys.executable, "-c", code, url, str(bodies), str(out), str(args.concurrency)],
                        env_for(ROOT / "src"),
                    )
                    answers = json.loads(out.read_text())
                    assert len(answers) == args.items and set(answers) <= set(LABELS), set(answers)
                    rows.setdefault(kind, []).append(r)
                for name, src in trees.items():
                    proj = tmp / f"run-{rep}-{name.replace(' ', '-')}"
                    shutil.copytree(templates[name], proj)
                    r = timed(annotate_cmd(proj, base_url, args.concurrency), env_for(src))
                    check_annotated(r["stdout"], args.items)
                    rows.setdefault(f"actlabel annotate ({name})", []).append(r)
                    shutil.rmtree(proj)
                loads.append(os.getloadavg()[0])
                summary = ", ".join(f"{k} {args.items / v[-1]['wall']:.0f}/s" for k, v in rows.items())
                print(f"repeat {rep + 1}: {summary}", flush=True)
            starts = {name: [] for name in trees}
            for _ in range(args.import_runs):  # interleaved, as the repeats
                for name, src in trees.items():
                    starts[name] += import_seconds(src, 1)
            for name, src in trees.items() if args.profile else ():
                proj = tmp / f"profiled-{len(profiles)}"
                shutil.copytree(templates[name], proj)
                out = f"{args.profile}.{len(profiles)}"
                timed(annotate_cmd(proj, base_url, args.concurrency, out), env_for(src))
                profiles[name] = profile_groups(out)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)

    reference = rows["plain urllib threads"]
    lines = [
        f"Command: `.venv/bin/python bench/bench_endpoint.py {' '.join(sys.argv[1:])}`".replace("  ", " ")
        + f" ({started})  ",
        f"Machine: {machine_line()}; 1-minute load average "
        f"{', '.join(f'{x:.1f}' for x in loads)} at the start and after each repeat (shared with other jobs).",
        "",
        f"{args.items} items, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms: "
        f"ideal {ideal:.0f} calls/s. Whole processes timed from spawn to exit (interpreter start, imports, "
        "project open and the run's bookkeeping included for annotate; the plain clients send annotate's "
        "own request bodies, built beforehand). The test server runs in a process of its own on the same "
        f"cores. Median of {args.repeats} repeats, interleaved; the ratio is the median of the per-repeat "
        "ratios to the plain urllib client.",
        "",
        "Against an http:// endpoint annotate's calls go through models/http11.py (pooled keep-alive "
        "connections, one prepared write per call, no aiohttp import); the per-call work around it is "
        "a request body serialised once (orjson), a cache key continued from the run's shared prompt "
        "turns (cache.KeyMemo), templates compiled once and the shared turns rendered once, response "
        "bodies parsed by orjson, and response-cache rows written 256 at a time (store.ResponseCache). "
        "https:// endpoints keep aiohttp (bench/bench_backends.py measures the clients alone).",
        "",
        "| client | calls/s | % of ideal | wall s | CPU s | ratio to plain urllib |",
        "|---|---|---|---|---|---|",
    ]
    for kind, runs in rows.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        ratios = [ref["wall"] / r["wall"] for ref, r in zip(reference, runs, strict=True)]
        rate = args.items / wall
        lines.append(
            f"| {kind} | {rate:.0f} | {rate / ideal:.0%} | {wall:.2f} | {cpu:.2f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    if args.import_runs:
        lines += [
            "",
            f"CLI start, `python -c 'import actlabel.cli'`, {args.import_runs} runs per tree, interleaved: "
            + "; ".join(
                f"{name} median {statistics.median(v):.3f} s (min {min(v):.3f})" for name, v in starts.items()
            )
            + ".",
        ]
    for name, ranked in profiles.items():
        lines += [
            "",
            f"Where annotate's time goes ({name}, one more run under cProfile: self time by package or "
            "module, wall clock, so waiting and the other processes' turns on the cores are in it):",
            "",
            "| where | seconds | share |",
            "|---|---|---|",
            *(f"| {k} | {v:.2f} | {share:.0%} |" for k, v, share in ranked),
        ]
    text = "\n".join(lines)
    publish(SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
