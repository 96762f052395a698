"""Usage accounting for a run: calls, tokens, cache hits, failures and estimated cost, plus a cap.

Prices are dollars per million input / output tokens, looked up by model name. The built-in table
holds list prices of common hosted models at the time of writing; a project overrides or extends it
with `prices.json` (or `prices.toml`) in the project folder, e.g.

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "my-vllm-model": [0, 0]}

Local and scripted models cost nothing. A hosted model missing from the table is counted at 0 and
listed in `RunUsage.unpriced`, so a report can say the cost is unknown instead of printing $0.00
as if it were true.
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .base import Backend, ChatRequest, ChatResponse, ModelError
from .spec import ModelSpec

#: $ per 1M tokens (input, output); public list prices, edit `prices.json` when they change
BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}

PRICE_FILES = ("prices.json", "prices.toml")


def model_name(spec: str) -> str:
    """'openai/gpt-4o-mini@https://api.openai.com/v1' -> 'gpt-4o-mini'."""
    parsed = ModelSpec.parse(spec)
    return parsed.name if "/" in parsed.bare else parsed.bare


def _parse_price(model: str, value: Any, source: str) -> tuple[float, float]:
    try:
        if isinstance(value, Mapping):
            return float(value["input"]), float(value["output"])
        inp, out = value
        return float(inp), float(out)
    except (KeyError, TypeError, ValueError):
        raise ModelError(
            f'{source}: price of {model!r} must be {{"input": $/1M, "output": $/1M}} or [input, output]'
        ) from None


class PriceTable:
    """Model name -> ($/1M input tokens, $/1M output tokens)."""

    def __init__(self, prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.prices: dict[str, tuple[float, float]] = dict(BUILTIN_PRICES if prices is None else prices)

    @classmethod
    def load(cls, project_dir: str | Path | None = None) -> PriceTable:
        """Built-in prices overridden by `prices.json` / `prices.toml` in `project_dir` when present."""
        table = cls()
        if project_dir is None:
            return table
        for name in PRICE_FILES:
            path = Path(project_dir) / name
            if not path.exists():
                continue
            try:
                raw = path.read_text(encoding="utf-8")
                data = json.loads(raw) if name.endswith(".json") else tomllib.loads(raw)
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
            if not isinstance(data, Mapping):
                raise ModelError(f"{path}: expected a table of model name -> price")
            for model, value in data.items():
                table.prices[str(model)] = _parse_price(str(model), value, str(path))
        return table

    def price(self, spec: str) -> tuple[float, float] | None:
        """Price for a backend spec; (0, 0) for local models; None when unknown."""
        parsed = ModelSpec.parse(spec)
        if parsed.can("free"):
            return (0.0, 0.0)
        for name in (parsed.bare, model_name(spec)):
            if name in self.prices:
                return self.prices[name]
        return None

    def cost(self, spec: str, input_tokens: int, output_tokens: int) -> float | None:
        p = self.price(spec)
        if p is None:
            return None
        return (input_tokens * p[0] + output_tokens * p[1]) / 1_000_000


@dataclass(kw_only=True)
class CallCounts:
    """What a run's model calls were and cost: RunUsage counts them as they happen, every stage's
    result (stages.StageResult) reports them, and the store's `runs` row keeps them."""

    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def copy_counts(self, other: CallCounts) -> None:
        for f in fields(CallCounts):
            setattr(self, f.name, getattr(other, f.name))


@dataclass(kw_only=True)
class RunUsage(CallCounts):
    """Counters for one run. `input_tokens`/`output_tokens`/`cost` count only calls actually made;
    answers served from the cache are counted in `cache_hits` and `saved_cost`."""

    prices: PriceTable = field(default_factory=PriceTable)
    failed_calls: int = 0
    saved_cost: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    # reentrant: snapshot() reads counts() under it, so that one snapshot is of one moment
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def record(self, spec: str, response: ChatResponse) -> None:
        u = response.usage
        cost = self.prices.cost(spec, u.input_tokens, u.output_tokens)
        with self._lock:
            if cost is None:
                self.unpriced.add(model_name(spec))
                cost = 0.0
            if response.cached:
                self.cache_hits += 1
                self.saved_cost += cost
            else:
                self.calls += 1
                self.input_tokens += u.input_tokens
                self.output_tokens += u.output_tokens
                self.cost += cost

    def record_failure(self, spec: str, error: BaseException | None = None) -> None:
        with self._lock:
            self.failed_calls += 1

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def counts(self) -> CallCounts:
        """The call counters as they are now (cost rounded to 1e-6 dollars), read under the lock."""
        with self._lock:
            now = CallCounts()
            now.copy_counts(self)
        now.cost = round(now.cost, 6)
        return now

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                **asdict(self.counts()),
                "failed_calls": self.failed_calls,
                "saved_cost": round(self.saved_cost, 6),
                "unpriced": sorted(self.unpriced),
            }

    def run_fields(self) -> dict[str, float]:
        """The counters under the names of the store's `runs` table: store.finish_run(id, **u.run_fields())."""
        with self._lock:
            return {**asdict(self.counts()), "failures": self.failed_calls}

    def summary(self) -> str:
        """One line for logs and progress: 'calls 120 (cache 30) | tokens 51k in / 2k out | $0.0123'."""
        cost = f"${self.cost:.4f}" + (" + unpriced" if self.unpriced else "")
        return (
            f"calls {self.calls} (cache {self.cache_hits}, failed {self.failed_calls}) | "
            f"tokens {_k(self.input_tokens)} in / {_k(self.output_tokens)} out | {cost}"
        )


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


@dataclass(frozen=True)
class RunCap:
    """Stop a run when paid tokens or estimated cost reach a limit. The engine stops starting new
    items; calls in flight finish and are written, so nothing is lost and a re-run resumes."""

    #: tokens of the whole run (options.StageOptions.max_run_tokens, `--max-tokens`)
    max_run_tokens: int | None = None
    max_cost: float | None = None

    def reached(self, usage: RunUsage) -> str | None:
        """The reason the cap is reached, or None."""
        if self.max_run_tokens is not None and usage.total_tokens >= self.max_run_tokens:
            return f"token cap reached ({usage.total_tokens} >= {self.max_run_tokens})"
        if self.max_cost is not None and usage.cost >= self.max_cost:
            return f"cost cap reached (${usage.cost:.4f} >= ${self.max_cost:.4f})"
        return None


class MeteredBackend:
    """Records every call of the wrapped backend in a RunUsage. Put it outside CachedBackend so
    cache hits are seen as such: MeteredBackend(CachedBackend(backend, cache), usage)."""

    def __init__(self, backend: Backend, usage: RunUsage) -> None:
        self.backend = backend
        self.usage = usage
        self.spec = backend.spec
        self.supports_logprobs = backend.supports_logprobs
        self.supports_images = backend.supports_images

    async def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            response = await self.backend.chat(request)
        except ModelError as exc:
            self.usage.record_failure(self.spec, exc)
            raise
        self.usage.record(self.spec, response)
        return response

    async def aclose(self) -> None:
        await self.backend.aclose()
