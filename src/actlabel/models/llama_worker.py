"""The embedded model in a child process, so a crash of the native runtime cannot take a run down.

llama.cpp is native code: an illegal instruction (a library built for another CPU), a segfault or
the kernel's OOM killer ends the whole process at once, with no Python exception to catch, and
the records the engine had not yet flushed would be lost. The model therefore lives in a child
process (a fresh interpreter started with `python -c`, so it never shares the parent's threads and,
unlike multiprocessing's "spawn", never re-runs the user's script); this process sends it one call
at a time over a socket pair and never loads the native library itself. When
the child dies, the pending call raises `NativeRuntimeCrash`, which names the signal and its likely
cause; the engine stops the run, writes everything finished, and the stage records the run as
interrupted with that message. A re-run continues where it stopped.

The pipe costs well under a millisecond per call (a request is a few kB of pickled messages),
against hundreds of milliseconds of model time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from actlabel.errors import UserError

from .base import ChatRequest, ChatResponse, ModelError
from .llama_local import INSTALL_HINT, LlamaBackend, resolve_local

#: seconds to wait for the model to load in the child before giving up
LOAD_TIMEOUT_S = 600

_SIGNAL_CAUSES = {
    "SIGILL": "an illegal instruction: the llama.cpp library was built for CPU features this CPU "
    "lacks; rebuild it with `scripts/setup --rebuild-llama` (ACTLABEL_LLAMA_CPU=x86-64 for CPUs without AVX2)",
    "SIGKILL": "killed from outside, most often by the kernel when memory ran out; free memory or use a "
    "smaller model (local/qwen2.5-0.5b)",
    "SIGSEGV": "a crash inside llama.cpp",
    "SIGBUS": "a crash inside llama.cpp (is the model file on a disk that went away?)",
    "SIGABRT": "llama.cpp aborted (an internal check failed)",
}


class NativeRuntimeCrash(UserError):
    """The embedded model's process died: the run stops (it is not one item's failure)."""


def crash_message(spec: str, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = _SIGNAL_CAUSES.get(name, "a crash inside llama.cpp")
        how = f"died with {name}: {cause}"
    else:
        how = f"exited unexpectedly (status {exitcode})"
    return f"{spec}: the embedded model's native runtime {how}. Everything labelled so far is stored; re-run to continue"


def _child(fd: int) -> None:
    """Entry point of the child process: the first message says which model to load."""
    conn = Connection(fd)
    model_path, opts = conn.recv()
    _serve(conn, model_path, opts)


def _serve(conn: Any, model_path: str, opts: dict[str, Any]) -> None:
    """The child: load the model, then answer (method, args, kwargs) calls until told to stop."""
    # Ctrl-C goes to the whole process group: the parent decides when the child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        backend = LlamaBackend(model_path, **opts)
    except ModelError as exc:
        conn.send(("model_error", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(
        ("ok", {"spec": backend.spec, "n_threads": backend.n_threads, "load_seconds": backend.load_seconds})
    )
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        if method == "close":
            backend.close()
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", getattr(backend, method)(*args, **kwargs)))
        except ModelError as exc:
            conn.send(("model_error", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug in the child is reported, not swallowed
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class IsolatedLlamaBackend:
    """A LlamaBackend in a child process, with the same surface (chat, tokenize, format_prompt, stats)."""

    supports_logprobs = True
    supports_images = False
    # capabilities (models/spec.py)
    embedded = True
    free = True

    def __init__(self, model_path: str | Path, *, spec: str | None = None, **opts: Any) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self.spec = spec or f"local/{self.model_path.name}#{self.model_path.stat().st_size}"
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # Set before the child starts its OpenMP runtime (see LlamaBackend); a user's setting wins.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from actlabel.models.llama_worker import _child; _child(int(sys.argv[1]))",
             str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        child.close()
        self._conn = Connection(parent.detach())
        self._conn.send((str(self.model_path), {"spec": self.spec, **opts}))
        self._lock = threading.Lock()
        self._closed = False
        if not self._conn.poll(LOAD_TIMEOUT_S):
            self._proc.kill()
            self._proc.wait()
            raise ModelError(f"{self.spec}: the model did not load within {LOAD_TIMEOUT_S} s")
        info = self._receive()
        self.n_threads = info["n_threads"]
        self.load_seconds = info["load_seconds"]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-pipe")

    def __repr__(self) -> str:
        return f"IsolatedLlamaBackend({self.spec!r}, pid={self._proc.pid})"

    def _receive(self) -> Any:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise NativeRuntimeCrash(crash_message(self.spec, self._exit_status())) from None
        if status == "ok":
            return value
        if status == "model_error":
            raise ModelError(value)
        raise RuntimeError(f"{self.spec}: the model process failed: {value}")

    def _exit_status(self) -> int | None:
        try:
            return self._proc.wait(timeout=10)  # negative: killed by that signal
        except subprocess.TimeoutExpired:
            return None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                raise ModelError(f"{self.spec}: the model was closed")
            try:
                self._conn.send((method, args, kwargs))
            except (BrokenPipeError, OSError):
                raise NativeRuntimeCrash(crash_message(self.spec, self._exit_status())) from None
            return self._receive()

    def chat_sync(self, request: ChatRequest) -> ChatResponse:
        return self._call("chat_sync", request)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.chat_sync, request)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._call("tokenize", text, special=special)

    def format_prompt(self, messages: Any, assistant_prefix: str = "") -> str:
        return self._call("format_prompt", messages, assistant_prefix)

    def prompt_limit(self) -> int:
        return self._call("prompt_limit")

    @property
    def stats(self) -> dict[str, int]:
        return self._call("get_stats")

    def crash_for_test(self, sig: int = signal.SIGILL) -> None:
        """Kill the child with `sig`, as a native crash would (tests of the crash path)."""
        os.kill(self._proc.pid, sig)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc.poll() is None:
                try:
                    self._conn.send(("close", (), {}))
                    if self._conn.poll(30):
                        self._conn.recv()
                except (BrokenPipeError, EOFError, OSError):
                    pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._conn.close()
        self._executor.shutdown(wait=False)


def load_local(name: str, *, isolate: bool | None = None, **opts: Any) -> Any:
    """The backend for `local/NAME`. isolate (default: on, unless $ACTLABEL_LLAMA_IN_PROCESS=1):
    run the model in a child process (this module) so a native crash is reported, not fatal."""
    # Checked first so a missing runtime is reported before a gigabyte of weights is assembled.
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelError(f"local models need llama-cpp-python: {INSTALL_HINT}")
    path, spec = resolve_local(name)
    if isolate is None:
        isolate = os.environ.get("ACTLABEL_LLAMA_IN_PROCESS", "") not in ("1", "true", "yes")
    if isolate:
        return IsolatedLlamaBackend(path, spec=spec, **opts)
    return LlamaBackend(path, spec=spec, **opts)
