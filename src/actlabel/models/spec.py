"""A model spec parsed once, and what its backend can do.

A spec is `KIND/NAME[@ENDPOINT]` (the stored form of an endpoint model carries its URL), or an
annotator built from two: `composite/IMAGE+LLM` (the image expert pooled with a chat model) and
`features/NAME` (an annotator on image features, no chat model). Stages ask a ModelSpec instead
of testing prefixes; what a backend can do is declared on its class (the capabilities below) and
looked up through BACKENDS, so a new backend is one class and one entry there.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

#: spec of the embedded image annotator (few-shot classifier on EfficientNet-Lite0 features); here,
#: not in features.py, so what only compares specs does not import numpy with the feature models
IMAGE_ANNOTATOR_SPEC = "features/efficientnet-lite0"  # features.IMAGE_MODEL

#: kind -> "module:Class" of its backend (loaded only when a capability is asked for)
BACKENDS = {
    "openai": "actlabel.models.openai_compat:OpenAICompatBackend",
    "local": "actlabel.models.llama_local:LlamaBackend",
    "scripted": "actlabel.models.scripted:ScriptedBackend",
}

#: capabilities a backend class may declare (class attributes, False when absent)
CAPABILITIES = (
    # serves many calls at once (an endpoint); an in-process model runs one at a time anyway
    "concurrent_calls",
    # has a provider batch API (batch.py)
    "batch_api",
    # runs on this machine from weights in the project's cache, tuned by --n-ctx / --threads
    "embedded",
    # calls cost nothing, so no price is looked up (usage.py)
    "free",
    # item and example images go into the prompt (plan renders them before any model is loaded)
    "supports_images",
    # served from an endpoint named by --base-url
    "takes_base_url",
)


@functools.cache
def _backend_class(kind: str) -> Any:
    # cached: usage.py asks whether a spec is free on every call it prices
    entry = BACKENDS.get(kind)
    if entry is None:
        return None
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


COMPOSITE = "composite"
FEATURES = "features"


@dataclass(frozen=True)
class ModelSpec:
    #: the spec without its endpoint: one model served from two hosts is still one model
    bare: str
    endpoint: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        bare, at, endpoint = spec.partition("@")
        return cls(bare, endpoint if at else None)

    @property
    def kind(self) -> str:
        return self.bare.partition("/")[0]

    @property
    def name(self) -> str:
        return self.bare.partition("/")[2]

    @property
    def path(self) -> str:
        """Everything after `KIND/` as written, the endpoint included: what the kind's loader is
        given (a local GGUF path may itself hold an @)."""
        return self.text.partition("/")[2]

    @property
    def text(self) -> str:
        return self.bare + (f"@{self.endpoint}" if self.endpoint is not None else "")

    @property
    def is_composite(self) -> bool:
        return self.kind == COMPOSITE

    @property
    def is_features(self) -> bool:
        return self.kind == FEATURES

    @property
    def offline(self) -> bool:
        """Runs on this machine: an embedded backend, or an annotator built on the feature models
        (a composite counts, for its image expert does)."""
        return self.kind in (FEATURES, COMPOSITE) or self.can("embedded")

    @classmethod
    def composite(cls, image: str, llm: str) -> ModelSpec:
        """The composite of the image annotator `image` (a features/ spec) pooled with `llm`."""
        return cls.parse(f"{COMPOSITE}/{cls.parse(image).name}+{llm}")

    @property
    def llm(self) -> ModelSpec | None:
        """The chat model inside an annotator spec: itself, a composite's text model, or None for the
        feature annotator."""
        if self.kind == FEATURES:
            return None
        if self.is_composite:
            return ModelSpec.parse(self.text.partition("+")[2])
        return self

    def backend_class(self) -> Any:
        return _backend_class(self.kind)

    def can(self, capability: str) -> bool:
        """Whether this spec's backend declares `capability` (one of CAPABILITIES)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown backend capability {capability!r}")
        return bool(getattr(self.backend_class(), capability, False))
