"""The content-addressed response cache in front of every backend.

The key is the sha256 of a canonical JSON of everything that determines an answer: the backend
spec (backend + model + endpoint), the prompt template hash, the messages with each image replaced
by the sha256 of its bytes (so moving a file does not invalidate, editing it does), and every
request parameter. API keys are never part of it: specs carry no credentials (see
`openai_compat.public_url`), and nothing else from the environment goes in.

A re-run therefore never pays twice, and since every answer is written before the stage records
its result, a crash loses at most the calls that were in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
from typing import Any, Protocol

import orjson

from .base import Backend, ChatRequest, ChatResponse, ImagePart, Message, ModelError, TextPart

#: bump when the key layout changes, so old rows are simply never hit again
KEY_VERSION = 1


class ResponseCache(Protocol):
    """What the project store provides (`Store.response_cache()`)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(
        self, key: str, spec: str, response: dict[str, Any], input_tokens: int, output_tokens: int
    ) -> None: ...


class DictCache:
    """An in-memory ResponseCache (tests, benchmarks, throwaway runs)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.rows.get(key)
        return None if row is None else row["response"]

    def put(
        self, key: str, spec: str, response: dict[str, Any], input_tokens: int, output_tokens: int
    ) -> None:
        self.rows[key] = {
            "spec": spec,
            "response": response,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }


_image_hashes: dict[tuple[str, int, int], str] = {}
_image_lock = threading.Lock()


def image_sha256(path: str) -> str:
    """sha256 of an image file's bytes, memoised on (path, size, mtime) because a stage hashes the
    same image once per call (annotate, critique, retries)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"cannot read image {path}: {exc.strerror}") from None
    memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _image_lock:
        cached = _image_hashes.get(memo_key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _image_lock:
        _image_hashes[memo_key] = digest
    return digest


def _canonical_part(part: TextPart | ImagePart) -> dict[str, str]:
    if isinstance(part, ImagePart):
        return {"image_sha256": image_sha256(part.path)}
    return {"text": part.text}


_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(ChatRequest) if f.name != "messages")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(spec: str, request: ChatRequest, template_hash: str = "") -> str:
    """The cache key of `request` sent to backend `spec` (hex sha256)."""
    params = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "messages"}
    # Tuples and lists must serialise the same; json does that. Parameters added to ChatRequest
    # later are picked up automatically, so a new knob can never be silently ignored by the cache.
    doc = {
        "v": KEY_VERSION,
        "spec": spec,
        "template_hash": template_hash,
        "messages": [
            {"role": m.role, "content": [_canonical_part(p) for p in m.content]} for m in request.messages
        ],
        "params": params,
    }
    return hashlib.sha256(_json(doc).encode("utf-8")).hexdigest()


class KeyMemo:
    """`request_key`, byte for byte, for one backend spec and template hash, with what a run's
    requests share serialised and hashed once: the turns before the last (system prompt, few-shot
    examples), as a sha256 state to continue from, and the parameters with spec and template hash.

    The key's JSON has sorted keys, so it reads `{"messages":[m1,...,mn],"params":...,"spec":...,
    "template_hash":...,"v":...}`, and the JSON of a list is its items' JSON joined by commas:
    only the last turn is new per item. Requests with images take the plain function (an image's
    hash must follow edits of its file).
    """

    MAX_ENTRIES = 256

    def __init__(self, spec: str, template_hash: str = "") -> None:
        self.spec = spec
        self.template_hash = template_hash
        self._prefixes: dict[tuple[Message, ...], Any] = {}
        self._tails: dict[tuple[Any, ...], bytes] = {}

    def key(self, request: ChatRequest) -> str:
        messages = request.messages
        if not messages or any(isinstance(p, ImagePart) for m in messages for p in m.content):
            return request_key(self.spec, request, self.template_hash)
        params = tuple(getattr(request, name) for name in _PARAM_NAMES)
        # With their types: 0 == 0.0 and 1 == True, but they serialise differently.
        memo_key = (*params, *map(type, params))
        try:
            tail = self._tails.get(memo_key)
        except TypeError:  # a list where a tuple belongs: not hashable, still serialisable
            return request_key(self.spec, request, self.template_hash)
        if tail is None:
            tail = (
                f'],"params":{_json(dict(zip(_PARAM_NAMES, params, strict=True)))},'
                f'"spec":{_json(self.spec)},"template_hash":{_json(self.template_hash)},"v":{KEY_VERSION}}}'
            ).encode()
            self._remember(self._tails, memo_key, tail)
        head = messages[:-1]
        state = self._prefixes.get(head)
        if state is None:
            state = hashlib.sha256(b'{"messages":[' + b"".join(_message_json(m) + b"," for m in head))
            self._remember(self._prefixes, head, state)
        state = state.copy()
        state.update(_message_json(messages[-1]) + tail)
        return state.hexdigest()

    def _remember(self, memo: dict, key: Any, value: Any) -> None:
        if len(memo) >= self.MAX_ENTRIES:
            memo.clear()  # a run shares a handful of these; many distinct ones are not worth keeping
        memo[key] = value


def _message_json(message: Message) -> bytes:
    """The JSON of a text-only turn as `request_key` writes it: orjson with sorted keys writes the
    same bytes for strings as json.dumps(sort_keys, compact, ensure_ascii=False), in one pass."""
    doc = {"role": message.role, "content": [{"text": p.text} for p in message.content]}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


class CachedBackend:
    """Wraps any backend: a hit returns the stored response with `cached=True` and makes no call.

    Identical requests in flight at the same time are coalesced into one call (a dataset with
    duplicate rows would otherwise pay for each duplicate on a cold cache).
    """

    def __init__(self, backend: Backend, cache: ResponseCache, *, template_hash: str = "") -> None:
        self.backend = backend
        self.cache = cache
        self.template_hash = template_hash
        self.spec = backend.spec
        self.supports_logprobs = backend.supports_logprobs
        self.supports_images = backend.supports_images
        self.hits = 0
        self.misses = 0
        self._keys = KeyMemo(self.spec, template_hash)
        self._inflight: dict[str, asyncio.Future[ChatResponse]] = {}

    def key(self, request: ChatRequest) -> str:
        return self._keys.key(request)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        key = self.key(request)
        row = self.cache.get(key)
        if row is not None:
            self.hits += 1
            return ChatResponse.from_json(row, cached=True)
        pending = self._inflight.get(key)
        if pending is not None:
            # Same request already being asked: share its answer (counts as a hit: no call made).
            try:
                response = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    # The asker was cancelled, not us: ask ourselves.
                    return await self.chat(request)
                raise
            self.hits += 1
            return dataclasses.replace(response, cached=True)
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            response = await self.backend.chat(request)
        except Exception as exc:
            future.set_exception(exc)
            # Nobody else may be waiting: mark the exception retrieved so asyncio does not warn.
            future.exception()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._inflight[key]
        self.misses += 1
        self.cache.put(
            key,
            self.spec,
            response.to_json(),
            response.usage.input_tokens,
            response.usage.output_tokens,
        )
        future.set_result(response)
        return dataclasses.replace(response, cached=False)

    async def aclose(self) -> None:
        await self.backend.aclose()
