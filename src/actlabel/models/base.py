"""The one protocol every model backend speaks.

A backend takes chat messages (text and images) and returns text, token log-probabilities when it
has them, and token usage. Everything above this layer (annotate, critique, plan) is written
against these types only, so a new backend is one file in this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image by path on disk; backends read and encode it themselves (data URL, features...)."""

    path: str


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: tuple[TextPart | ImagePart, ...]

    @classmethod
    def text(cls, role: str, text: str) -> Message:
        return cls(role, (TextPart(text),))

    @property
    def plain_text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> list[str]:
        return [p.path for p in self.content if isinstance(p, ImagePart)]


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    # When set, the answer must be exactly one of these strings (grammar on llama.cpp,
    # a best effort via prompt + parsing on endpoints that cannot constrain).
    choices: tuple[str, ...] | None = None
    # Ask for per-token log-probabilities and this many alternatives per position.
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    # Appended to the conversation as the start of the assistant turn (e.g. a chain-of-thought
    # the model wrote earlier), so white-box critics can read next-token probabilities after it.
    assistant_prefix: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # alternative token -> logprob


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ChatResponse:
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    usage: Usage = Usage()
    # Set by the cache layer: True when this answer was served from the store without a call.
    cached: bool = False
    # For constrained choices on backends that can score them: choice -> log-probability,
    # normalised over the choices.
    choice_logprobs: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "logprobs": None
            if self.logprobs is None
            else [[t.token, t.logprob, t.top] for t in self.logprobs],
            "usage": [self.usage.input_tokens, self.usage.output_tokens],
            "choice_logprobs": self.choice_logprobs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, cached: bool = False) -> ChatResponse:
        lp = data.get("logprobs")
        return cls(
            text=data["text"],
            logprobs=None if lp is None else tuple(TokenLogprob(t, float(p), dict(top)) for t, p, top in lp),
            usage=Usage(*data.get("usage", [0, 0])),
            cached=cached,
            choice_logprobs=data.get("choice_logprobs"),
        )


class ModelError(Exception):
    """A call failed for good (after retries); the message is one line for the user."""


class RetryableError(ModelError):
    """A transient failure (429, 5xx, timeout, connection); the caller may retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class Backend(Protocol):
    """What annotate/critique need from a model. Implementations live one per file in this package."""

    #: stable identifier of backend + model, part of the cache key, e.g. "openai/gpt-4o@https://api..."
    spec: str
    #: True when responses carry token log-probabilities (white-box critics need it)
    supports_logprobs: bool
    #: True when the backend accepts ImagePart content
    supports_images: bool

    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...
