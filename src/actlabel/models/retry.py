"""Retries: transient failures with backoff, unparseable answers with a varied re-ask.

Two different things go wrong with model calls. The transport fails (429, 5xx, timeouts): that is
retried with exponential backoff and full jitter, honouring the server's Retry-After. Or the call
succeeds but the answer cannot be parsed: that is re-asked a couple of times with another seed and
a little temperature so the answer can change, and if it still fails the raw text is returned as a
`ParseFailure` so the stage stores it: an unparseable answer is never dropped and never replaced
by an invented label.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .base import Backend, ChatRequest, ChatResponse, ModelError, RetryableError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures: attempt n waits uniform(0, min(max_delay, base_delay * 2**n)),
    or the server's Retry-After when it is longer (capped at max_retry_after so a hostile header
    cannot park a run for hours)."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        jittered = rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))
        if retry_after is not None and retry_after > 0:
            return max(min(retry_after, self.max_retry_after), jittered)
        return jittered


DEFAULT_POLICY = RetryPolicy()

Sleep = Callable[[float], Awaitable[None]]


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[RetryableError, float], None] | None = None,
) -> T:
    """Await `call()`, calling again on RetryableError up to `policy.max_attempts` calls in total.

    Raises the last RetryableError (it is a ModelError), its message ending "(gave up after N
    attempts)", when attempts run out; any other exception is raised at once.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except RetryableError as exc:
            attempt += 1
            if attempt >= policy.max_attempts:
                raise RetryableError(f"{exc} (gave up after {attempt} attempts)", exc.retry_after) from exc
            if rng is None:
                rng = random.Random()  # only on the first retry: seeding costs more than a call
            wait = policy.delay(attempt - 1, exc.retry_after, rng)
            if on_retry is not None:
                on_retry(exc, wait)
            await sleep(wait)


async def chat_with_retry(
    backend: Backend,
    request: ChatRequest,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[RetryableError, float], None] | None = None,
) -> ChatResponse:
    """`backend.chat(request)` through `call_with_retry`: a ModelError that is not retryable (a
    4xx, a refused model) is raised at once."""
    return await call_with_retry(
        lambda: backend.chat(request), policy=policy, rng=rng, sleep=sleep, on_retry=on_retry
    )


class RetryingBackend:
    """Any backend, with transient failures retried: for callers that just want `chat` to work."""

    def __init__(self, backend: Backend, policy: RetryPolicy = DEFAULT_POLICY, *, seed: int | None = None):
        self.backend = backend
        self.policy = policy
        self.spec = backend.spec
        self.supports_logprobs = backend.supports_logprobs
        self.supports_images = backend.supports_images
        self._rng = random.Random(seed)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        return await chat_with_retry(self.backend, request, policy=self.policy, rng=self._rng)

    async def aclose(self) -> None:
        await self.backend.aclose()


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parsed answer, with the response it came from (logprobs, usage, cached flag)."""

    value: T
    response: ChatResponse
    attempts: int

    ok = True


@dataclass(frozen=True)
class ParseFailure:
    """Every attempt answered, none could be parsed. `raw_text` is the last answer, `raw_texts` all."""

    raw_text: str
    error: str
    response: ChatResponse
    attempts: int
    raw_texts: tuple[str, ...]

    ok = False

    def after(self, first: str, joiner: str) -> ParseFailure:
        """This failure as the second step of a two-step call whose first step answered `first`
        (reasoning, then the answer): the stored raw text is both, joined."""
        return ParseFailure(
            first + joiner + self.raw_text,
            self.error,
            self.response,
            self.attempts + 1,
            (first, *self.raw_texts),
        )


#: temperature used for re-asks when the request was greedy: enough to change a degenerate answer,
#: small enough to stay on task
REASK_TEMPERATURE = 0.4


def reask_request(request: ChatRequest, attempt: int) -> ChatRequest:
    """The request for re-ask number `attempt` (1, 2, ...): another seed and some temperature, so the
    answer can differ (and so the cache does not hand back the same unparseable answer)."""
    seed = (request.seed if request.seed is not None else 0) + 1000 * attempt
    return dataclasses.replace(request, seed=seed, temperature=max(request.temperature, REASK_TEMPERATURE))


async def call_with_parse(
    backend: Backend,
    request: ChatRequest,
    parse: Callable[[ChatResponse], T],
    max_parse_retries: int = 2,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Parsed[T] | ParseFailure:
    """Ask, parse, re-ask on ValueError from `parse`; transient failures are retried in each ask.

    Returns `Parsed` (`.ok` True) or, after 1 + max_parse_retries unparseable answers, a
    `ParseFailure` carrying the raw text. A call that fails for good raises ModelError: there is no
    answer to keep then, and the engine counts the item as failed so a re-run retries it.
    """
    texts: list[str] = []
    current = request
    last_error = ""
    response: ChatResponse | None = None
    for attempt in range(max_parse_retries + 1):
        if attempt:
            current = reask_request(request, attempt)
        response = await chat_with_retry(backend, current, policy=policy, rng=rng, sleep=sleep)
        texts.append(response.text)
        try:
            value = parse(response)
        except ValueError as exc:
            last_error = " ".join(str(exc).split()) or type(exc).__name__
            continue
        return Parsed(value, response, attempt + 1)
    if response is None:  # max_parse_retries < 0 would leave us without a single call
        raise ModelError("call_with_parse needs max_parse_retries >= 0")
    return ParseFailure(
        raw_text=response.text,
        error=last_error,
        response=response,
        attempts=len(texts),
        raw_texts=tuple(texts),
    )
