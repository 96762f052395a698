"""A crash of the embedded model's native runtime stops the run with its cause, and keeps what was labelled."""

from __future__ import annotations

import signal

import pytest

from actlabel.annotate import annotate
from actlabel.models import load_backend
from actlabel.models.llama_worker import NativeRuntimeCrash
from actlabel.project import Project

pytestmark = pytest.mark.slow


class CrashAfter:
    """The isolated model, killed with SIGILL (as an illegal instruction would) before call `n`."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.calls = inner, n, 0
        self.spec = inner.spec
        self.supports_logprobs = inner.supports_logprobs
        self.supports_images = inner.supports_images

    async def chat(self, request):
        self.calls += 1
        if self.calls == self.n:
            self.inner.crash_for_test(signal.SIGILL)
        return await self.inner.chat(request)

    async def aclose(self):
        await self.inner.aclose()


def test_crash_mid_run_keeps_the_labelled_items_and_names_the_cause(project: Project) -> None:
    pytest.importorskip("llama_cpp")
    backend = CrashAfter(load_backend("local/smollm2", n_ctx=2048), n=6)
    try:
        with pytest.raises(NativeRuntimeCrash, match="SIGILL"):
            annotate(project.store, backend=backend, progress=False)
    finally:
        backend.inner.close()
    conn = project.store.conn
    ok = conn.execute("SELECT count(*) FROM annotations WHERE status = 'ok'").fetchone()[0]
    assert ok == 5  # the five calls answered before the crash are stored
    status, message = conn.execute("SELECT status, message FROM runs WHERE stage = 'annotate'").fetchone()
    assert status == "interrupted" and "illegal instruction" in message
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
