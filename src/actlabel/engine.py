"""The async engine every stage runs its items through.

`run_items` calls `work(key)` for each key with at most `concurrency` calls in flight, hands the
finished records to `write_batch` in batches (every `batch_size` records or `flush_interval`
seconds, whichever comes first) from the event-loop thread, and stops cleanly when a RunCap is
reached. A crash or Ctrl-C therefore loses at most the calls in flight: everything finished was
written or is written on the way out.

Concurrency is a fixed pool of `concurrency` workers pulling keys from one iterator, which bounds
in-flight calls exactly like a semaphore but without creating a task per item (a million-item
run would otherwise hold a million pending tasks). Keys are pulled lazily, so a generator that
skips already-done items works for resume.

Failures: a `ModelError` from `work` (a call that failed for good) counts the item as failed and
the run goes on (a re-run retries it); `on_error` may turn it into a record to store. Any other
exception is a bug: the run stops, writes what finished, and re-raises.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from .models.base import ModelError
from .models.usage import RunCap, RunUsage

K = TypeVar("K")
R = TypeVar("R")

#: how many (key, error) pairs an EngineResult keeps; the count of failures is always exact
MAX_ERRORS_KEPT = 20


@dataclass(frozen=True)
class EngineResult:
    done: int
    failed: int
    stopped_by_cap: bool
    elapsed: float
    cap_reason: str | None = None
    errors: tuple[tuple[Any, str], ...] = ()

    @property
    def items_per_s(self) -> float:
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0


class _Reporter:
    """Progress to stderr: a rich bar on a terminal, else a one-line summary every `interval` s."""

    def __init__(
        self, label: str, total: int | None, usage: RunUsage | None, rich_bar: bool, interval: float | None
    ):
        self.label = label
        self.total = total
        self.usage = usage
        self.interval = interval
        self.start = time.monotonic()
        self.last_line = self.start
        self.lines_printed = 0
        self._progress = None
        self._task_id = None
        if rich_bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[usage]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(label, total=total, rate="", usage="")

    def update(self, done: int, failed: int, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        finished = done + failed
        rate = finished / elapsed
        usage = self.usage.summary() if self.usage is not None else ""
        if self._progress is not None:
            self._progress.update(
                self._task_id,
                completed=finished,
                rate=f"{rate:.1f}/s",
                usage=usage,  # type: ignore[arg-type]
            )
            if final:
                self._progress.stop()
            return
        if self.interval is None:
            return
        if final and not self.lines_printed:
            return  # short runs stay quiet; the caller reports the result
        if final or now - self.last_line >= self.interval:
            self.last_line = now
            self.lines_printed += 1
            of = f"/{self.total}" if self.total is not None else ""
            eta = ""
            if self.total is not None and rate > 0 and not final:
                eta = f", ETA {_duration((self.total - finished) / rate)}"
            fail = f", {failed} failed" if failed else ""
            tail = f" | {usage}" if usage else ""
            print(f"{self.label}: {finished}{of}{fail}, {rate:.1f}/s{eta}{tail}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


async def run_items(
    keys: Iterable[K],
    work: Callable[[K], Awaitable[R | None]],
    *,
    concurrency: int = 8,
    write_batch: Callable[[list[R]], None] | None = None,
    usage: RunUsage | None = None,
    cap: RunCap | None = None,
    progress: bool = True,
    label: str = "items",
    batch_size: int = 64,
    flush_interval: float = 0.5,
    summary_interval: float | None = 10.0,
    on_error: Callable[[K, ModelError], R | None] | None = None,
) -> EngineResult:
    """Run `work` over `keys`; see the module docstring. A record of None is counted but not written.

    progress: a rich bar on stderr when stderr is a terminal; otherwise (or with progress=False) a
    one-line summary every `summary_interval` seconds of a long run (None: silent).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if cap is not None and usage is None:
        raise ValueError("a RunCap needs the RunUsage it is measured on")
    total = len(keys) if isinstance(keys, Sized) else None
    key_iter = iter(keys)
    buffer: list[R] = []
    errors: list[tuple[Any, str]] = []
    state = {"done": 0, "failed": 0}
    cap_reason: str | None = None
    start = time.monotonic()
    reporter = _Reporter(
        label, total, usage, rich_bar=progress and sys.stderr.isatty(), interval=summary_interval
    )

    def flush() -> None:
        if not buffer:
            return
        if write_batch is not None:
            # Cleared only after a successful write, so a failing store keeps the records for the
            # final flush attempt instead of silently dropping them.
            write_batch(list(buffer))
        buffer.clear()

    async def worker() -> None:
        nonlocal cap_reason
        while True:
            if cap_reason is not None:
                return
            if cap is not None and usage is not None:
                reason = cap.reached(usage)
                if reason is not None:
                    cap_reason = reason
                    return
            try:
                key = next(key_iter)
            except StopIteration:
                return
            try:
                record = await work(key)
            except ModelError as exc:
                state["failed"] += 1
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append((key, str(exc)))
                record = on_error(key, exc) if on_error is not None else None
            else:
                state["done"] += 1
            if record is not None:
                buffer.append(record)
                if len(buffer) >= batch_size:
                    flush()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(flush_interval)
            flush()
            reporter.update(state["done"], state["failed"])

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    tick = asyncio.create_task(ticker())
    try:
        pending: set[asyncio.Task[None]] = {tick, *workers}
        while pending - {tick}:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                exc = t.exception()
                if exc is not None:
                    raise exc
    finally:
        # Runs on success, on a bug in `work`, and on cancellation (Ctrl-C): stop the others,
        # then write everything that finished.
        tick.cancel()
        for t in workers:
            t.cancel()
        await asyncio.gather(tick, *workers, return_exceptions=True)
        try:
            flush()
        finally:
            reporter.update(state["done"], state["failed"], final=True)
    return EngineResult(
        done=state["done"],
        failed=state["failed"],
        stopped_by_cap=cap_reason is not None,
        elapsed=time.monotonic() - start,
        cap_reason=cap_reason,
        errors=tuple(errors),
    )
