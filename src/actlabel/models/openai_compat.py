"""Any OpenAI-compatible chat endpoint: OpenAI, vLLM, Ollama, llama.cpp server, LM Studio, SGLang,
TGI, hosted gateways.

Four interchangeable HTTP clients send the same JSON and map errors the same way:
- "asyncio" (default for http:// endpoints): the standard library's streams and a pool of keep-alive
  connections (http11.py), nothing else; against a fast local server (vLLM, llama.cpp server) the
  client's CPU per call is what decides throughput on a small machine, and this one spends the
  least, and does not import aiohttp (0.2-0.3 s of every CLI start);
- "aiohttp" (default for https:// endpoints when installed): about a tenth of the client CPU per
  call of the SDK and httpx (docs/benchmarks.md);
- "sdk": the official `openai` SDK (AsyncOpenAI), through its generic `post`;
- "httpx": httpx directly.
Retries are never the client's: they are ours (`retry.py`), so backoff, Retry-After and usage
accounting behave the same for every backend. We read the raw JSON body rather than the SDK's
pydantic objects: servers that are only "compatible" often omit fields, and it is cheaper.

Images are sent as base64 data URLs, downscaled so the longest side is at most `image_max_side`
(vision models tile large images into many tokens; 768 px keeps cost and latency down while
staying legible). The API key comes from an environment variable only and is never logged, stored
or made part of the spec (and so of the cache key).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import importlib.util
import io
import json
import math
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from .base import (
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

if TYPE_CHECKING:
    import httpx

OPENAI_URL = "https://api.openai.com/v1"
#: statuses worth retrying besides 5xx: request timeout, conflict, too early, rate limited
RETRYABLE_STATUS = {408, 409, 425, 429}
MAX_ERROR_CHARS = 300


def public_url(url: str) -> str:
    """The endpoint without credentials, query or fragment: safe for specs, logs and cache keys."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(headers: httpx.Headers | dict[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- images -------------------------------------------------------------------------------------

_DIRECT_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_url_cache: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_url_lock = threading.Lock()
_URL_CACHE_ITEMS = 64


def image_data_url(path: str, max_side: int = 768) -> str:
    """A data URL for the image at `path`, its longest side at most `max_side` pixels.

    Images already small enough, upright and in a format every server reads are sent byte for byte;
    others are re-encoded (PNG when they have transparency, else JPEG at quality 90).
    Memoised for a few images: retries and the annotate/critique pair resend the same file.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ModelError("images need Pillow: pip install pillow") from None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"cannot read image {path}: {exc.strerror}") from None
    memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, max_side)
    with _url_lock:
        if memo_key in _url_cache:
            _url_cache.move_to_end(memo_key)
            return _url_cache[memo_key]
    try:
        with open(path, "rb") as f:
            raw = f.read()
        img = Image.open(io.BytesIO(raw))
        orientation = img.getexif().get(0x0112, 1)
        if max(img.size) <= max_side and orientation == 1 and img.format in _DIRECT_FORMATS:
            url = f"data:{_DIRECT_FORMATS[img.format]};base64,{base64.b64encode(raw).decode('ascii')}"
        else:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
            buf = io.BytesIO()
            if has_alpha:
                img.save(buf, format="PNG", optimize=False)
                mime = "image/png"
            else:
                img.convert("RGB").save(buf, format="JPEG", quality=90)
                mime = "image/jpeg"
            url = f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
    # A decompression bomb or a corrupt header fails this one item (a ModelError), not the run.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ModelError(f"cannot read image {path}: {one_line(str(exc))}") from None
    with _url_lock:
        _url_cache[memo_key] = url
        while len(_url_cache) > _URL_CACHE_ITEMS:
            _url_cache.popitem(last=False)
    return url


# --- request / response translation ----------------------------------------------------------------


def _message_json(message: Message, max_side: int) -> dict[str, Any]:
    if all(isinstance(p, TextPart) for p in message.content):
        # Plain string content: the form every "compatible" server understands.
        return {"role": message.role, "content": message.plain_text}
    parts: list[dict[str, Any]] = []
    for p in message.content:
        if isinstance(p, ImagePart):
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(p.path, max_side)}})
        else:
            parts.append({"type": "text", "text": p.text})
    return {"role": message.role, "content": parts}


def build_payload(
    model: str, request: ChatRequest, *, image_max_side: int = 768, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The JSON body of POST /chat/completions for `request`."""
    messages = [_message_json(m, image_max_side) for m in request.messages]
    if request.assistant_prefix:
        # Prefill: servers that support it (llama.cpp server, vLLM with continue_final_message,
        # Anthropic-style gateways) continue this assistant turn; the reply is the continuation.
        messages.append({"role": "assistant", "content": request.assistant_prefix})
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        max_tokens_field: request.max_tokens,
        "temperature": request.temperature,
    }
    if request.stop:
        payload["stop"] = list(request.stop)
    if request.seed is not None:
        payload["seed"] = request.seed
    if request.logprobs:
        payload["logprobs"] = True
        if request.top_logprobs:
            payload["top_logprobs"] = request.top_logprobs
    return payload


def choice_logprobs_from_tokens(
    tokens: tuple[TokenLogprob, ...], choices: tuple[str, ...]
) -> dict[str, float] | None:
    """Approximate choice log-probabilities from the first answer token's top alternatives.

    Endpoints cannot score arbitrary continuations, but with `top_logprobs` they tell us how likely
    each candidate first token was. A token that starts exactly one choice (case-insensitive,
    ignoring surrounding whitespace) gives its probability to that choice; tokens shared by several
    choices are ignored because we cannot tell them apart. A choice absent from the top list gets
    half the smallest listed probability (it was less likely than all of them). Normalised over the
    choices. None when no alternative matched any choice.
    """
    first = next((t for t in tokens if t.token.strip()), None)
    if first is None or not choices:
        return None
    alternatives = dict(first.top)
    alternatives.setdefault(first.token, first.logprob)
    lowered = [c.lower() for c in choices]
    mass = dict.fromkeys(choices, 0.0)
    for tok, lp in alternatives.items():
        s = tok.strip().lower()
        if not s:
            continue
        hits = [c for c, low in zip(choices, lowered, strict=True) if low.startswith(s) or s.startswith(low)]
        if len(hits) == 1:
            mass[hits[0]] += math.exp(lp)
    if not any(mass.values()):
        return None
    floor = 0.5 * math.exp(min(alternatives.values()))
    probs = {c: (m if m > 0 else floor) for c, m in mass.items()}
    total = sum(probs.values())
    return {c: math.log(p / total) for c, p in probs.items()}


def parse_completion(body: Any, request: ChatRequest, spec: str) -> ChatResponse:
    """ChatResponse from a /chat/completions JSON body; a malformed body is a transient error
    (proxies and overloaded servers truncate bodies; asking again usually works)."""
    try:
        choice = body["choices"][0]
        content = choice["message"].get("content") or ""
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = str(content)
        logprobs: tuple[TokenLogprob, ...] | None = None
        lp = choice.get("logprobs")
        if lp and lp.get("content") is not None:
            logprobs = tuple(
                TokenLogprob(
                    t["token"],
                    float(t["logprob"]),
                    {a["token"]: float(a["logprob"]) for a in (t.get("top_logprobs") or [])},
                )
                for t in lp["content"]
            )
        usage = body.get("usage") or {}
        in_tokens = int(usage.get("prompt_tokens") or 0)
        out_tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise RetryableError(f"{spec}: malformed response body") from None
    choice_lp = None
    if request.choices and logprobs:
        choice_lp = choice_logprobs_from_tokens(logprobs, request.choices)
    return ChatResponse(
        text=text, logprobs=logprobs, usage=Usage(in_tokens, out_tokens), choice_logprobs=choice_lp
    )


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body: UTF-8 JSON straight to bytes in one pass (orjson; json.dumps + encode
    walked it twice and was the largest JSON cost per call)."""
    return orjson.dumps(payload)


def decode_body(raw: bytes | str) -> Any:
    """A response body's JSON. ValueError when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Python's json also reads NaN and -Infinity, which some servers write for logprobs.
        return json.loads(raw)


def _error_detail(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return fallback


def http_error(spec: str, resp: httpx.Response) -> ModelError:
    """The ModelError an HTTP error response stands for (status_error: retryable for 429 / 5xx)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    return status_error(spec, resp.status_code, resp.headers, _error_detail(body, resp.reason_phrase))


def status_error(spec: str, status: int, headers: Any, detail: str) -> ModelError:
    """429/5xx (and a few other transient statuses) -> RetryableError; other 4xx -> ModelError."""
    msg = f"{spec}: HTTP {status}: {one_line(detail)}"
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableError(msg, parse_retry_after(headers))
    if status == 401:
        msg += " (check the API key environment variable)"
    return ModelError(msg)


# --- the backend ------------------------------------------------------------------------------------


class OpenAICompatBackend:
    """Chat completions on an OpenAI-compatible endpoint.

    model: the model name the server expects. base_url: the endpoint (".../v1"); default
    $OPENAI_BASE_URL, else OpenAI. api_key_env: the environment variable holding the key; servers
    that need none (local vLLM, Ollama) work without it. timeout: seconds per call.
    client: "auto" (aiohttp when installed, else the SDK), "aiohttp", "sdk" or "httpx".
    """

    supports_logprobs = True
    supports_images = True
    # capabilities (models/spec.py)
    concurrent_calls = True
    batch_api = True
    takes_base_url = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        image_max_side: int = 768,
        timeout: float = 120.0,
        max_connections: int = 256,
        client: str = "auto",
        max_tokens_field: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not model:
            raise ModelError("openai backend needs a model name: openai/NAME")
        url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ModelError(f"base URL must start with http:// or https://, got {public_url(url)!r}")
        self.model = model
        self.base_url = url
        self.spec = f"openai/{model}@{public_url(url)}"
        self.image_max_side = image_max_side
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        if self.extra_body:
            # Extra body fields change answers, so they must change cache keys (the spec is in them).
            blob = json.dumps(self.extra_body, sort_keys=True, default=str).encode()
            self.spec += f"#{hashlib.sha256(blob).hexdigest()[:12]}"
        is_openai = urlsplit(url).hostname == "api.openai.com"
        # OpenAI's newer models reject max_tokens; most compatible servers only know max_tokens.
        self.max_tokens_field = max_tokens_field or ("max_completion_tokens" if is_openai else "max_tokens")
        api_key = os.environ.get(api_key_env, "")
        if not api_key and is_openai:
            raise ModelError(
                f"set {api_key_env} to your OpenAI API key (or pass --base-url for another server)"
            )
        # Servers without auth still get a placeholder: the SDK refuses an empty key.
        self._api_key = api_key or "not-needed"
        if client == "auto":
            if url.startswith("http://"):
                client = "asyncio"
            else:
                client = "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "sdk"
        if client not in ("asyncio", "aiohttp", "sdk", "httpx"):
            raise ModelError(f"client must be 'auto', 'asyncio', 'aiohttp', 'sdk' or 'httpx', got {client!r}")
        self.client_kind = client
        self.max_connections = max_connections
        self._headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        # What the SDK would send from the standard environment variables, for the other clients.
        for env, header in (
            ("OPENAI_ORG_ID", "OpenAI-Organization"),
            ("OPENAI_PROJECT_ID", "OpenAI-Project"),
        ):
            if os.environ.get(env) and is_openai:
                self._headers[header] = os.environ[env]
        self._http: httpx.AsyncClient | None = None
        self._sdk: Any = None
        # aiohttp sessions belong to the event loop they were made in: made lazily, per loop.
        self._aio: Any = None
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._aio_url: Any = None
        self._pool: Any = None  # http11.Pool, per event loop as the aiohttp session
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._pool_path = urlsplit(url).path + "/chat/completions"
        self._aio_errors: tuple[type[BaseException], ...] = ()
        if client == "sdk":
            from openai import AsyncOpenAI

            # The SDK builds its own HTTP client (httpx, or httpx2 in newer SDKs; its connection
            # pool allows 1000 connections): passing ours would tie us to one of the two.
            self._sdk = AsyncOpenAI(
                api_key=self._api_key,
                base_url=url,
                max_retries=0,  # ours are used: one policy, one place that honours Retry-After
                timeout=timeout,
            )
        elif client == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            self._http = httpx.AsyncClient(limits=limits, timeout=self._httpx_timeout())

    def _httpx_timeout(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatBackend({self.spec!r}, client={self.client_kind!r})"

    async def _payload(self, request: ChatRequest) -> dict[str, Any]:
        has_images = any(isinstance(p, ImagePart) for m in request.messages for p in m.content)
        build = lambda: build_payload(  # noqa: E731
            self.model, request, image_max_side=self.image_max_side, max_tokens_field=self.max_tokens_field
        )
        # Decoding and resizing images is CPU work: keep it off the event loop.
        payload = await asyncio.to_thread(build) if has_images else build()
        payload.update(self.extra_body)
        return payload

    async def chat(self, request: ChatRequest) -> ChatResponse:
        payload = await self._payload(request)
        if self.client_kind == "asyncio":
            body = await self._chat_asyncio(payload)
        elif self.client_kind == "aiohttp":
            body = await self._chat_aiohttp(payload)
        elif self._sdk is not None:
            body = await self._chat_sdk(payload)
        else:
            body = await self._chat_httpx(payload)
        return parse_completion(body, request, self.spec)

    async def _chat_sdk(self, payload: dict[str, Any]) -> Any:
        import openai

        assert self._sdk is not None
        try:
            # The SDK's generic `post` (its documented way to reach any endpoint) rather than
            # `chat.completions.create`: create() walks the body through TypedDict transforms
            # and builds pydantic objects, which cost more CPU per call than everything else
            # on the client side together, and we only need the JSON.
            raw = await self._sdk.post("/chat/completions", body=payload, cast_to=bytes)
            return decode_body(raw)
        except openai.APIStatusError as exc:
            try:
                body = exc.response.json()
            except ValueError:
                body = None
            raise status_error(
                self.spec, exc.status_code, exc.response.headers, _error_detail(body, exc.message)
            ) from None
        except openai.APITimeoutError:
            raise RetryableError(f"{self.spec}: timed out after {self.timeout:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise RetryableError(
                f"{self.spec}: connection failed: {one_line(type(cause).__name__ + ' ' + str(cause))}"
            ) from None
        except ValueError:  # invalid JSON in a 200 response
            raise RetryableError(f"{self.spec}: malformed response body") from None
        except openai.OpenAIError as exc:
            raise ModelError(f"{self.spec}: {one_line(str(exc))}") from None

    async def _chat_asyncio(self, payload: dict[str, Any]) -> Any:
        from . import http11

        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            # A pool left on another (finished) loop cannot be used from here; drop it.
            try:
                self._pool = http11.Pool(
                    self.base_url,
                    self._headers,
                    limit=self.max_connections,
                    connect_timeout=min(self.timeout, 10.0),
                )
            except ValueError as exc:  # a header that cannot be sent (not latin-1, a line break)
                raise ModelError(f"{self.spec}: {one_line(str(exc))}") from None
            self._pool_loop = loop
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._pool.post(self._pool_path, encode_body(payload))
        except TimeoutError:
            raise RetryableError(f"{self.spec}: timed out after {self.timeout:g} s") from None
        except http11.HTTPError as exc:
            raise RetryableError(f"{self.spec}: connection failed: {one_line(str(exc))}") from None
        if resp.status >= 400:
            try:
                body = decode_body(resp.body)
            except ValueError:
                body = None
            raise status_error(self.spec, resp.status, resp.headers, _error_detail(body, resp.reason))
        if 300 <= resp.status < 400:  # not followed: a POST redirected is not one to resend blindly
            where = resp.headers.get("location", "elsewhere")
            raise ModelError(
                f"{self.spec}: HTTP {resp.status}: the endpoint moved to {one_line(where)}; use that URL"
            )
        try:
            return decode_body(resp.body)
        except ValueError:
            raise RetryableError(f"{self.spec}: malformed response body") from None

    def _aio_session(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio_loop is not loop or self._aio.closed:
            import aiohttp
            import yarl

            # A session left on another (finished) loop cannot be closed from here; drop it.
            self._aio = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 10.0)),
                headers=self._headers,
            )
            self._aio_loop = loop
            # Parsed once: aiohttp would parse the URL string again on every call.
            self._aio_url = yarl.URL(f"{self.base_url}/chat/completions")
            self._aio_errors = (aiohttp.ClientError,)
        return self._aio

    async def _chat_aiohttp(self, payload: dict[str, Any]) -> Any:
        session = self._aio_session()
        try:
            async with session.post(self._aio_url, data=encode_body(payload)) as resp:
                raw = await resp.read()
                status, headers, reason = resp.status, resp.headers, resp.reason or ""
        except TimeoutError:
            raise RetryableError(f"{self.spec}: timed out after {self.timeout:g} s") from None
        except self._aio_errors as exc:
            raise RetryableError(
                f"{self.spec}: connection failed: {one_line(type(exc).__name__ + ' ' + str(exc))}"
            ) from None
        if status >= 400:
            try:
                body = decode_body(raw)
            except ValueError:
                body = None
            raise status_error(self.spec, status, headers, _error_detail(body, reason))
        try:
            return decode_body(raw)
        except ValueError:
            raise RetryableError(f"{self.spec}: malformed response body") from None

    async def _chat_httpx(self, payload: dict[str, Any]) -> Any:
        import httpx

        assert self._http is not None
        try:
            resp = await self._http.post(
                f"{self.base_url}/chat/completions", content=encode_body(payload), headers=self._headers
            )
        except httpx.TimeoutException:
            raise RetryableError(f"{self.spec}: timed out after {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise RetryableError(
                f"{self.spec}: connection failed: {one_line(type(exc).__name__ + ' ' + str(exc))}"
            ) from None
        if resp.status_code >= 400:
            raise http_error(self.spec, resp)
        try:
            return decode_body(resp.content)
        except ValueError:
            raise RetryableError(f"{self.spec}: malformed response body") from None

    async def list_models(self) -> list[str]:
        """Model names the endpoint serves (GET /models): for `actlabel plan` and error hints."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self._httpx_timeout()) as http:
                resp = await http.get(
                    f"{self.base_url}/models", headers={"Authorization": f"Bearer {self._api_key}"}
                )
            resp.raise_for_status()
            return [m["id"] for m in resp.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{self.spec}: cannot list models: {one_line(str(exc))}") from None

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._sdk.close()
        if self._http is not None:
            await self._http.aclose()
        if self._aio is not None and self._aio_loop is asyncio.get_running_loop():
            await self._aio.close()
        self._aio = None
        if self._pool is not None and self._pool_loop is asyncio.get_running_loop():
            self._pool.close()
        self._pool = None
