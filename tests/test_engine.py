"""The async engine: bounded concurrency, batched writes, caps, failures, progress."""

from __future__ import annotations

import asyncio
import time

import pytest

from actlabel.engine import run_items
from actlabel.models import (
    CachedBackend,
    ChatRequest,
    DictCache,
    Message,
    MeteredBackend,
    ModelError,
    PriceTable,
    RunCap,
    RunUsage,
    ScriptedBackend,
)


def run(coro):
    return asyncio.run(coro)


class Sink:
    def __init__(self) -> None:
        self.batches: list[list] = []
        self.times: list[float] = []

    def __call__(self, batch: list) -> None:
        self.batches.append(batch)
        self.times.append(time.monotonic())

    @property
    def records(self) -> list:
        return [r for b in self.batches for r in b]


def test_all_items_written_in_bounded_batches():
    sink = Sink()

    async def work(k: int) -> dict:
        await asyncio.sleep(0)
        return {"k": k}

    res = run(run_items(range(1000), work, concurrency=16, write_batch=sink, progress=False, batch_size=50))
    assert res.done == 1000 and res.failed == 0 and not res.stopped_by_cap
    assert sorted(r["k"] for r in sink.records) == list(range(1000))
    assert all(len(b) <= 50 for b in sink.batches)
    assert len(sink.batches) >= 20


def test_concurrency_is_bounded_and_reached():
    state = {"now": 0, "max": 0}

    async def work(k: int) -> int:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.005)
        state["now"] -= 1
        return k

    res = run(run_items(range(200), work, concurrency=7, progress=False))
    assert res.done == 200 and state["max"] == 7


def test_throughput_close_to_ideal():
    # 400 items of 20 ms at concurrency 40: ideal 0.2 s.
    async def work(k: int) -> int:
        await asyncio.sleep(0.02)
        return k

    res = run(run_items(range(400), work, concurrency=40, progress=False))
    assert res.elapsed < 0.2 / 0.8


def test_time_based_flush_writes_before_the_end():
    sink = Sink()

    async def work(k: int) -> int:
        await asyncio.sleep(0.05)
        return k

    start = time.monotonic()
    res = run(
        run_items(
            range(30),
            work,
            concurrency=1,
            write_batch=sink,
            progress=False,
            batch_size=10_000,
            flush_interval=0.2,
        )
    )
    end = time.monotonic()
    assert res.done == 30 and len(sink.records) == 30
    # several flushes happened while the run was going, the first well before its end
    assert len(sink.batches) >= 3 and sink.times[0] - start < (end - start) / 2


def test_none_records_are_counted_not_written():
    sink = Sink()

    async def work(k: int):
        return None if k % 2 else k

    res = run(run_items(range(10), work, write_batch=sink, progress=False))
    assert res.done == 10 and sink.records == [0, 2, 4, 6, 8]


def test_model_errors_count_as_failed_and_run_goes_on():
    sink = Sink()

    async def work(k: int) -> int:
        if k % 3 == 0:
            raise ModelError(f"item {k} failed")
        return k

    res = run(
        run_items(
            range(9),
            work,
            write_batch=sink,
            progress=False,
            on_error=lambda k, e: {"failed": k, "error": str(e)},
        )
    )
    assert res.done == 6 and res.failed == 3
    assert sorted(k for k, _ in res.errors) == [0, 3, 6]
    assert {"failed": 3, "error": "item 3 failed"} in sink.records


def test_bug_stops_run_and_keeps_finished_records():
    sink = Sink()

    async def work(k: int) -> int:
        if k == 50:
            await asyncio.sleep(0.05)
            raise KeyError("bug")
        return k

    with pytest.raises(KeyError):
        run(run_items(range(100), work, concurrency=4, write_batch=sink, progress=False, batch_size=1000))
    written = {r for r in sink.records}
    assert set(range(50)) <= written and 50 not in written


def test_cancellation_flushes_finished_records():
    sink = Sink()

    async def work(k: int) -> int:
        await asyncio.sleep(0.01)
        return k

    async def main():
        task = asyncio.create_task(
            run_items(
                range(10_000),
                work,
                concurrency=8,
                write_batch=sink,
                progress=False,
                batch_size=100_000,
                flush_interval=60,
            )
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert 10 < len(sink.records) < 10_000
    assert len(set(sink.records)) == len(sink.records)


def test_cap_stops_cleanly_then_rerun_resumes():
    usage = RunUsage(prices=PriceTable({}))
    cache = DictCache()
    inner = ScriptedBackend(lambda r: "label", latency=0.01)
    backend = MeteredBackend(CachedBackend(inner, cache), usage)
    sink = Sink()

    async def work(k: int) -> dict:
        r = await backend.chat(ChatRequest(messages=(Message.text("user", f"item {k:04d} " + "x" * 36),)))
        return {"k": k, "text": r.text}

    per_call = 12 + 2  # 46 characters in, "label" out, at the scripted 4 characters per token
    cap = RunCap(max_run_tokens=20 * per_call)  # reached after 20 calls
    res = run(
        run_items(range(100), work, concurrency=4, write_batch=sink, usage=usage, cap=cap, progress=False)
    )
    assert res.stopped_by_cap and "token cap" in res.cap_reason
    # in-flight calls finished and were written; none lost, none started past the cap by much
    assert res.done == len(sink.records) == inner.calls
    assert 20 <= res.done <= 20 + 4
    done = {r["k"] for r in sink.records}
    # re-run the rest without a cap: resumes, and the stored answers are not paid again
    usage2 = RunUsage(prices=PriceTable({}))
    backend = MeteredBackend(CachedBackend(inner, cache), usage2)
    res2 = run(
        run_items(
            [k for k in range(100) if k not in done],
            work,
            concurrency=4,
            write_batch=sink,
            usage=usage2,
            progress=False,
        )
    )
    assert res2.done == 100 - len(done) and inner.calls == 100
    assert sorted(r["k"] for r in sink.records) == list(range(100))


def test_cap_needs_usage():
    async def work(k):
        return k

    with pytest.raises(ValueError):
        run(run_items([1], work, cap=RunCap(max_run_tokens=1), progress=False))


def test_progress_off_is_quiet(capsys):
    async def work(k):
        return k

    run(run_items(range(50), work, progress=False))
    assert capsys.readouterr().err == ""


def test_non_tty_prints_periodic_summary_lines(capsys):
    usage = RunUsage()

    async def work(k):
        await asyncio.sleep(0.02)
        return k

    run(
        run_items(
            range(40),
            work,
            concurrency=2,
            usage=usage,
            progress=True,
            label="annotate",
            summary_interval=0.1,
            flush_interval=0.05,
        )
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(lines) >= 2
    assert all(ln.startswith("annotate: ") and "/40" in ln and "/s" in ln for ln in lines)
    assert lines[-1].startswith("annotate: 40/40")


def test_generator_keys_are_pulled_lazily():
    pulled = []

    def keys():
        for k in range(20):
            pulled.append(k)
            yield k

    async def work(k):
        await asyncio.sleep(0.001)
        return k

    res = run(run_items(keys(), work, concurrency=3, progress=False))
    assert res.done == 20 and pulled == list(range(20))


def test_rich_progress_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    usage = RunUsage()

    async def work(k):
        await asyncio.sleep(0.005)
        return k

    res = run(
        run_items(
            range(30), work, concurrency=3, usage=usage, progress=True, label="critique", flush_interval=0.02
        )
    )
    assert res.done == 30
    assert "critique" in capsys.readouterr().err
