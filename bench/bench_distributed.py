"""Beyond one machine: the Ray engine against the single-process async path, a worker killed
mid-run, and batch mode with a restart in the middle of a job.

    .venv/bin/python bench/bench_distributed.py [--items 1000] [--concurrency 64] [--latency 0.05]

Every run labels a fresh project of synthetic items through the loopback OpenAI-compatible server,
which runs in a process of its own (in a thread of this one it would share the driver's GIL and
skew the comparison). Items/s is the engine's rate (model calls to stored records), without the
one-off start of Ray workers, which is reported apart. Writes the `## Beyond one machine` section
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import machine_line, publish  # noqa: E402

from actlabel import batch as batch_mod  # noqa: E402
from actlabel import distributed  # noqa: E402
from actlabel.annotate import annotate  # noqa: E402
from actlabel.project import Project  # noqa: E402

LABELS = ["positive", "negative", "neutral"]
MODEL = "openai/test-model"
COMMAND = "python bench/bench_distributed.py"


# ---- the server, in its own process --------------------------------------------------------------


def _text_of(body: dict[str, Any]) -> str:
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return user.split("text: ")[-1].split("\n")[0].strip()


def responder(body: dict[str, Any]) -> str:
    digest = int(hashlib.sha256(_text_of(body).encode()).hexdigest(), 16)
    return LABELS[digest % len(LABELS)]


def _serve(latency: float, batch_delay: float, conn: Any) -> None:
    from actlabel.testing.openai_server import OpenAICompatServer

    with OpenAICompatServer(responder=responder, latency=latency, batch_delay=batch_delay) as srv:
        conn.send(srv.port)
        while True:
            cmd = conn.recv()
            if cmd == "finish_batches":
                srv.batch_delay = 0.0
                conn.send(True)
            elif cmd == "stats":
                bodies = [
                    hashlib.sha256(json.dumps(r.body, sort_keys=True).encode()).hexdigest()
                    for r in srv.requests
                ]
                conn.send({"calls": srv.calls, "unique": len(set(bodies)), "batch_calls": srv.batch_calls})
            else:
                break


class Server:
    """The loopback server in a child process; `stats()` counts what it received."""

    def __init__(self, latency: float, batch_delay: float = 0.0) -> None:
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(
            target=_serve, args=(latency, batch_delay, child), daemon=True
        )
        self._proc.start()
        self.base_url = f"http://127.0.0.1:{self._conn.recv()}/v1"

    def call(self, cmd: str) -> Any:
        self._conn.send(cmd)
        return self._conn.recv()

    def stats(self) -> dict[str, int]:
        return self.call("stats")

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)


# ---- projects ---------------------------------------------------------------------------------------


def make_project(root: Path, n: int) -> Project:
    import csv

    table = root.with_suffix(".csv")
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        for i in range(n):
            w.writerow([f"item {i}: the delivery on day {i % 30} was {['late', 'fine', 'early'][i % 3]}"])
    proj = Project.init(root, LABELS, instructions="Classify the sentiment.")
    proj.import_file(table, text_columns=["text"])
    return proj


def integrity(store: Any, n: int) -> tuple[int, int]:
    """(items lost, records duplicated) of the latest annotate run set."""
    per_item = store.records_per_item("annotations")
    return n - len(per_item), sum(c - 1 for c in per_item.values())


# ---- the runs ----------------------------------------------------------------------------------------


def run_engine(
    tmp: Path,
    name: str,
    n: int,
    concurrency: int,
    latency: float,
    workers: int | None,
    kill_at: int | None = None,
) -> dict[str, Any]:
    srv = Server(latency)
    proj = make_project(tmp / name, n)
    made: list[distributed.RayBackend] = []
    kill: dict[str, Any] = {}
    real_init = distributed.RayBackend.__init__

    def init(self: distributed.RayBackend, *a: Any, **kw: Any) -> None:
        t0 = time.monotonic()
        real_init(self, *a, **kw)
        import ray

        ray.get([actor.info.remote() for actor in self.actors])  # wait until every worker is up
        kill["startup_s"] = time.monotonic() - t0
        made.append(self)

    def killer() -> None:
        import ray

        while not made or sum(made[0].calls) < (kill_at or 0):
            time.sleep(0.005)
        backend = made[0]
        kill["in_flight"] = backend.in_flight[0]
        ray.kill(backend.actors[0], no_restart=False)

    distributed.RayBackend.__init__ = init  # type: ignore[method-assign]
    try:
        if kill_at is not None:
            threading.Thread(target=killer, daemon=True).start()
        t0 = time.monotonic()
        result = annotate(
            proj.store,
            model=MODEL,
            base_url=srv.base_url,
            concurrency=concurrency,
            engine="async" if workers is None else "ray",
            workers=workers,
            progress=False,
        )
        wall = time.monotonic() - t0
    finally:
        distributed.RayBackend.__init__ = real_init  # type: ignore[method-assign]
    stats = srv.stats()
    srv.close()
    lost, dup = integrity(proj.store, n)
    proj.close()
    return {
        "name": name,
        "items_per_s": n / result.elapsed,
        "elapsed": result.elapsed,
        "wall": wall,
        "startup_s": kill.get("startup_s"),
        "lost": lost,
        "duplicated": dup,
        "calls": stats["calls"],
        "extra": stats["calls"] - stats["unique"],
        "in_flight_at_kill": kill.get("in_flight"),
        "done": result.done,
    }


def run_batch(tmp: Path, n: int) -> dict[str, Any]:
    srv = Server(0.0, batch_delay=3600.0)
    proj = make_project(tmp / "batch", n)
    root = proj.root
    t0 = time.monotonic()
    first = annotate(proj.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
    submit_s = time.monotonic() - t0
    proj.close()  # the process "restarts": everything below opens the project anew
    with Project(root) as again:
        waiting = annotate(again.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
    srv.call("finish_batches")
    with Project(root) as third:
        t0 = time.monotonic()
        done = annotate(third.store, model=MODEL, base_url=srv.base_url, batch=True, progress=False)
        collect_s = time.monotonic() - t0
        lost, dup = integrity(third.store, n)
        ok = third.store.count("annotations", "status = 'ok'")
    stats = srv.stats()
    srv.close()
    return {
        "submitted": first.submitted_requests,
        "waiting": bool(waiting.waiting),
        "submit_s": submit_s,
        "collect_s": collect_s,
        "ok": ok,
        "lost": lost,
        "duplicated": dup,
        "online_calls": stats["calls"],
        "batch_lines": stats["batch_calls"],
        "done": done.result.done if done.result else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--no-write", action="store_true", help="Print only; leave docs/benchmarks.md alone.")
    args = ap.parse_args()
    import ray

    n, c, lat = args.items, args.concurrency, args.latency
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_init_s = time.monotonic() - t0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run_engine(tmp, "warmup", 50, c, lat, None)  # imports, first connections
        rows.append(run_engine(tmp, "single process (async)", n, c, lat, None))
        rows.append(run_engine(tmp, "Ray, 1 worker", n, c, lat, 1))
        rows.append(run_engine(tmp, "Ray, 2 workers", n, c, lat, 2))
        killed = run_engine(tmp, "Ray, 2 workers, one killed", n, c, lat, 2, kill_at=n // 3)
        batch_mod.POLL_INTERVAL = 0.05
        batched = run_batch(tmp, n)
    ray.shutdown()
    ideal = c / lat
    single, ray1, ray2 = rows
    queued = (
        ""
        if killed["extra"] == killed["in_flight_at_kill"]
        else "; the others were still queued in Ray and had not reached the endpoint"
    )
    second = (
        "a second worker helps a little (it takes HTTP and JSON work off the first) but the pair "
        "still trails the single process"
        if ray2["items_per_s"] > 1.1 * ray1["items_per_s"]
        else "a second worker only adds a process competing for the same cores"
    )
    table = [
        "| engine | items/s | engine time | worker start | items lost | records duplicated | calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in [*rows, killed]:
        start = "" if r["startup_s"] is None else f"{r['startup_s']:.1f} s"
        table.append(
            f"| {r['name']} | {r['items_per_s']:.0f} | {r['elapsed']:.1f} s | {start} | {r['lost']} | "
            f"{r['duplicated']} | {r['calls']} |"
        )
    body = f"""
Command: `{COMMAND} --items {n} --concurrency {c} --latency {lat}`
Machine: {machine_line()}; load average {load:.1f} when it started (the machine is shared).

{n} synthetic items labelled through the loopback OpenAI-compatible server (its own process,
{lat * 1000:.0f} ms per call), {c} calls in flight, a fresh project each run. Items/s counts model
calls to stored records; Ray's start-up (`ray.init` {ray_init_s:.1f} s once, then the workers) is apart.
The ceiling set by latency alone is {c} / {lat:g} s = {ideal:.0f} items/s.

{chr(10).join(table)}

**A worker killed mid-run** (after {n // 3} calls, `ray.kill` of worker 0, which Ray restarts):
items lost {killed["lost"]}, records duplicated {killed["duplicated"]}, extra calls {killed["extra"]}
(server requests minus distinct requests). The extra calls are calls that worker had in flight
when it died ({killed["in_flight_at_kill"]} at the kill{queued}): they had reached the endpoint and
their answers died with the process, so Ray's task retry asked them again. No call already answered
was asked again: answers are cached on the driver before anything else happens, and cached calls
never reach a worker. The same holds for one process: a crash costs the calls in flight (cache.py).
So the target of 0 extra calls holds for completed calls; calls in flight at a crash are bounded by
`--concurrency` / workers and cannot be recovered by any client, since the endpoint has no
idempotency keys for chat completions.

**Batch mode with a restart mid-job** ({n} items): the first run submitted {batched["submitted"]}
requests in {batched["submit_s"]:.1f} s and wrote nothing; a new process found the job in the store
still in progress ({"yes" if batched["waiting"] else "no"}); after the provider finished, a third
process collected it and wrote the records in {batched["collect_s"]:.1f} s: {batched["ok"]} items
labelled, lost {batched["lost"]}, duplicated {batched["duplicated"]}, online calls
{batched["online_calls"]}, batch lines {batched["batch_lines"]} (one per item).

**What limits scaling here.** Ray with 1 worker ran at {ray1["items_per_s"] / single["items_per_s"]:.2f}x
the single process, 2 workers at {ray2["items_per_s"] / ray1["items_per_s"]:.2f}x of 1 worker; the single
process reached {single["items_per_s"] / ideal:.0%} of the latency ceiling. Two shared cores serve the
driver, the workers, Ray's own daemons and the server at once, so nothing here is I/O-bound: it is
CPU per item. The driver still does per item what must happen once (prompt, cache look-up and
write, parsing, the store), and with Ray each call also costs a task submission, argument and
result serialisation and a hop through the raylet, more CPU than the HTTP call it moves to the
worker; {second}.

**What it predicts for a cluster.** Endpoint calls are I/O: one process with async HTTP keeps
hundreds in flight, and the real limit of a hosted model is its rate limit (requests and tokens
per minute), not client CPU, so for `openai/` models on a single provider key the async path (and
`--batch` at half the price when a day's latency is fine) is the right tool, and Ray pays off only
when one process's client CPU is the bottleneck (very fast self-hosted endpoints, several
endpoints behind one spec) or for `local/` models, where each worker runs a model on its own
node's cores and throughput grows with nodes until the single store writer (SQLite, thousands of
records per second in batches) is reached.
"""
    publish("Beyond one machine", body, write=not args.no_write)


if __name__ == "__main__":
    main()
