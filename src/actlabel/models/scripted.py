"""A deterministic, fault-injecting backend for tests.

It answers from a script (a callable, a list cycled in call order, or one fixed string), can sleep
to imitate a server, fails on chosen call numbers or at a seeded rate, and can attach fake token
log-probabilities and choice log-probabilities so the layers above can be tested without a model.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from .base import ChatRequest, ChatResponse, ModelError, RetryableError, TokenLogprob, Usage

Answer = str | ChatResponse
Script = Callable[[ChatRequest], Answer] | Sequence[Answer] | Answer
Fault = BaseException | type[BaseException] | str


def approx_tokens(text: str) -> int:
    """A stable token estimate (about 4 characters per token) so usage figures are reproducible."""
    return max(1, (len(text) + 3) // 4) if text else 0


def request_text(request: ChatRequest) -> str:
    return "\n".join(m.plain_text for m in request.messages) + request.assistant_prefix


class ScriptedBackend:
    """Answers from a script. `calls` counts chat() calls (failed ones included), `requests` keeps them.

    faults: call number (1-based) -> what to raise: an exception (instance or class), or the
        shorthands "retryable" / "error" / "429" (RetryableError with retry_after=`fault_retry_after`).
    fault_rate: probability that any other call raises `fault_kind`, drawn from a seeded RNG so a
        test sees the same failures every run.
    fake_logprobs: when the request asks for logprobs, return one entry per whitespace-separated
        word of the answer (logprob -0.1, `top_logprobs` made-up alternatives).
    choice_logprobs: when the request has choices, attach choice log-probabilities: True puts 0.9
        on the answered choice (rest shared), a callable(request, answer) -> {choice: prob} gives them.
    """

    supports_logprobs: bool
    supports_images: bool
    free = True  # a capability (models/spec.py)

    def __init__(
        self,
        script: Script = "ok",
        *,
        name: str = "default",
        latency: float = 0.0,
        faults: Mapping[int, Fault] | None = None,
        fault_rate: float = 0.0,
        fault_seed: int = 0,
        fault_kind: Fault = "retryable",
        fault_retry_after: float | None = None,
        fake_logprobs: bool = False,
        choice_logprobs: bool | Callable[[ChatRequest, str], Mapping[str, float]] = False,
        supports_images: bool = True,
    ) -> None:
        self.spec = f"scripted/{name}"
        self.latency = latency
        self.faults = dict(faults or {})
        self.fault_rate = fault_rate
        self.fault_kind = fault_kind
        self.fault_retry_after = fault_retry_after
        self.fake_logprobs = fake_logprobs
        self.choice_logprobs = choice_logprobs
        self.supports_logprobs = bool(fake_logprobs or choice_logprobs)
        self.supports_images = supports_images
        self.calls = 0
        self.requests: list[ChatRequest] = []
        self.closed = False
        self._rng = random.Random(fault_seed)
        # Tests also drive this backend from worker threads (engine benchmarks): keep counting exact.
        self._lock = threading.Lock()
        self._script_fn: Callable[[ChatRequest], Answer]
        if callable(script):
            self._script_fn = script
        elif isinstance(script, str | ChatResponse):
            fixed = script
            self._script_fn = lambda _req: fixed
        else:
            seq: Iterable[Answer] = list(script)
            if not seq:
                raise ValueError("scripted backend needs at least one answer")
            cycle = itertools.cycle(seq)
            self._script_fn = lambda _req: next(cycle)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        with self._lock:
            self.calls += 1
            call_no = self.calls
            self.requests.append(request)
            fault = self.faults.get(call_no)
            if fault is None and self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                fault = self.fault_kind
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if fault is not None:
            raise self._exception(fault, call_no)
        answer = self._script_fn(request)
        if isinstance(answer, ChatResponse):
            return answer
        return self._respond(request, answer)

    def _exception(self, fault: Fault, call_no: int) -> BaseException:
        if isinstance(fault, BaseException):
            return fault
        if isinstance(fault, type):
            return fault(f"scripted fault on call {call_no}")
        if fault in ("retryable", "429", "503"):
            return RetryableError(f"scripted transient failure on call {call_no}", self.fault_retry_after)
        if fault == "error":
            return ModelError(f"scripted failure on call {call_no}")
        raise ValueError(f"unknown scripted fault {fault!r}")

    def _respond(self, request: ChatRequest, text: str) -> ChatResponse:
        logprobs = None
        if request.logprobs and self.fake_logprobs:
            words = text.split() or [text]
            k = request.top_logprobs
            logprobs = tuple(
                TokenLogprob(
                    w,
                    -0.1,
                    {w: -0.1, **{f"{w}~{i}": -3.0 - i for i in range(max(0, k - 1))}} if k else {},
                )
                for w in words
            )
        choice_lp = None
        if request.choices and self.choice_logprobs:
            if callable(self.choice_logprobs):
                probs = dict(self.choice_logprobs(request, text))
            else:
                rest = (
                    0.1 / max(1, len(request.choices) - 1)
                    if text in request.choices
                    else 1.0 / len(request.choices)
                )
                probs = {c: (0.9 if c == text else rest) for c in request.choices}
            total = sum(probs.values())
            choice_lp = {c: math.log(max(p, 1e-12) / total) for c, p in probs.items()}
        return ChatResponse(
            text=text,
            logprobs=logprobs,
            usage=Usage(approx_tokens(request_text(request)), approx_tokens(text)),
            choice_logprobs=choice_lp,
        )

    async def aclose(self) -> None:
        self.closed = True
