"""Model backends behind one protocol (`base.Backend`), and `load_backend` to pick one by spec.

    backend = load_backend("local/default")            # embedded llama.cpp model, offline
    backend = load_backend("openai/gpt-4o-mini")       # OPENAI_API_KEY / OPENAI_BASE_URL
    backend = load_backend("openai/qwen2.5", base_url="http://localhost:8000/v1")

Stages wrap it: MeteredBackend(CachedBackend(backend, store.response_cache(), template_hash=h), usage)
and call it through `call_with_parse` inside `engine.run_items`.
"""

from __future__ import annotations

from typing import Any

from .base import (
    Backend,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    ModelError,
    RetryableError,
    TextPart,
    TokenLogprob,
    Usage,
)
from .cache import CachedBackend, DictCache, ResponseCache, request_key
from .retry import Parsed, ParseFailure, RetryingBackend, RetryPolicy, call_with_parse, chat_with_retry
from .scripted import ScriptedBackend
from .spec import ModelSpec
from .usage import MeteredBackend, PriceTable, RunCap, RunUsage

#: the model used when none is given (`local/default` resolves to llama_local.DEFAULT_LOCAL_MODEL)
DEFAULT_MODEL = "local/default"

#: named embedded models; `local/PATH.gguf` loads any other GGUF file
LOCAL_MODELS = ("default", "qwen2.5-1.5b", "qwen2.5-0.5b", "smollm2")

SPEC_HELP = (
    "use openai/NAME, local/default, local/qwen2.5-1.5b, local/qwen2.5-0.5b, local/smollm2 or local/PATH.gguf"
)


def load_backend(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    image_max_side: int = 768,
    **opts: Any,
) -> Backend:
    """The backend for `spec`. Raises ModelError (one line) for an unknown or unusable spec.

    opts go to the backend's constructor: e.g. timeout=, client= for openai; n_ctx=, n_threads=,
    prefix_reuse= for local; script=, latency=, faults= for scripted.
    """
    spec = (spec or "").strip()
    parsed = ModelSpec.parse(spec)
    kind, name = parsed.kind, parsed.path
    if "/" not in spec or not name:
        raise ModelError(f"unknown model spec {spec!r}: {SPEC_HELP}")
    loader = _LOADERS.get(kind)
    if base_url is not None and not parsed.can("takes_base_url"):
        raise ModelError(f"--base-url applies to openai/NAME models only, not {spec!r}")
    if loader is None:
        raise ModelError(f"unknown model spec {spec!r}: {SPEC_HELP}")
    return loader(name, base_url=base_url, api_key_env=api_key_env, image_max_side=image_max_side, **opts)


def _load_openai(
    name: str, *, base_url: str | None, api_key_env: str, image_max_side: int, **opts: Any
) -> Backend:
    from .openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(
        name, base_url=base_url, api_key_env=api_key_env, image_max_side=image_max_side, **opts
    )


def _load_local(name: str, *, base_url: None, api_key_env: str, image_max_side: int, **opts: Any) -> Backend:
    from .llama_worker import load_local

    return load_local(name, **opts)


def _load_scripted(
    name: str, *, base_url: None, api_key_env: str, image_max_side: int, **opts: Any
) -> Backend:
    return ScriptedBackend(name=name, **opts)


#: spec kind -> its loader; a backend's capabilities are declared on its class (models/spec.py)
_LOADERS = {"openai": _load_openai, "local": _load_local, "scripted": _load_scripted}


__all__ = [
    "DEFAULT_MODEL",
    "LOCAL_MODELS",
    "Backend",
    "CachedBackend",
    "ChatRequest",
    "ChatResponse",
    "DictCache",
    "ImagePart",
    "Message",
    "MeteredBackend",
    "ModelError",
    "ParseFailure",
    "Parsed",
    "PriceTable",
    "ResponseCache",
    "RetryPolicy",
    "RetryableError",
    "RetryingBackend",
    "RunCap",
    "RunUsage",
    "ScriptedBackend",
    "TextPart",
    "TokenLogprob",
    "Usage",
    "call_with_parse",
    "chat_with_retry",
    "load_backend",
    "request_key",
]
