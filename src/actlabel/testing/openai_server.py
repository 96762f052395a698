"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

    with OpenAICompatServer(responder=lambda body: "positive", latency=0.05) as srv:
        backend = OpenAICompatBackend("m", base_url=srv.base_url)

It runs uvicorn + starlette in a background thread on an ephemeral port, so the client under test
goes through real sockets, HTTP parsing, keep-alive and timeouts: the parts a mock transport
would skip. Every request is recorded (`srv.requests`) for assertions.

Faults are injected per call number (1-based, in arrival order) or by a callable:
    "429"        HTTP 429 with Retry-After (Fault.retry_after seconds, default 1)
    "500"/"503"  server errors
    "delay"      answer normally after Fault.seconds (to exceed the client timeout)
    "drop"       start the response, then close the connection mid-body
    "malformed"  HTTP 200 with an invalid JSON body
    "400"/"401"/"404"  client errors (not retryable)

It also serves the provider batch API (OpenAI's shape): POST /v1/files (multipart upload),
GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches (list), GET /v1/batches/{id}. A batch reports in_progress
until `batch_delay` seconds after its creation, then answers every line through the same responder
(output file) except those `batch_faults(custom_id, body)` fails (error file); with `batch_refuse`
every batch fails as a whole, as a provider's validation does. Batch lines are
counted in `batch_calls` / `batch_requests`, apart from the online `calls`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: float | None = 1.0
    seconds: float = 0.0


@dataclass
class Reply:
    """A full answer: text, optional per-token logprobs [(token, logprob, {alt: logprob})], usage."""

    text: str
    logprobs: list[tuple[str, float, dict[str, float]]] | None = None
    usage: tuple[int, int] | None = None


Responder = Callable[[dict[str, Any]], "str | Reply"]
FaultSpec = Mapping[int, "str | Fault"] | Callable[[int, dict[str, Any]], "str | Fault | None"] | None
#: (custom_id, request body) -> None to answer the line, or an error message for the error file
BatchFaults = Callable[[str, dict[str, Any]], "str | None"] | None


@dataclass
class RecordedRequest:
    n: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    received_at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("messages", [])

    def image_urls(self) -> list[str]:
        urls = []
        for m in self.messages:
            if isinstance(m.get("content"), list):
                urls += [p["image_url"]["url"] for p in m["content"] if p.get("type") == "image_url"]
        return urls

    def images(self) -> list[tuple[str, bytes]]:
        """(mime type, bytes) of every image sent as a data URL."""
        out = []
        for url in self.image_urls():
            head, _, data = url.partition(",")
            out.append((head.removeprefix("data:").split(";")[0], base64.b64decode(data)))
        return out


def default_responder(body: dict[str, Any]) -> str:
    return "ok"


def approx_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def _prompt_text(body: dict[str, Any]) -> str:
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p.get("text", "") for p in c if p.get("type") == "text"]
    return "\n".join(out)


def default_logprobs(text: str, top: int) -> list[tuple[str, float, dict[str, float]]]:
    """Deterministic fake token logprobs: words as tokens, a logprob derived from a hash of the
    word, and `top` alternatives (the token itself first)."""
    tokens = []
    words = text.split(" ")
    for i, w in enumerate(words):
        tok = w if i == 0 else " " + w
        h = int(hashlib.sha256(tok.encode()).hexdigest()[:8], 16)
        lp = -0.01 - (h % 200) / 100
        alts = {tok: lp}
        for j in range(1, top):
            alts[f"{tok}#{j}"] = lp - 1.0 - j
        tokens.append((tok, lp, alts if top else {}))
    return tokens


class OpenAICompatServer:
    """Context manager serving POST /v1/chat/completions and GET /v1/models on 127.0.0.1."""

    def __init__(
        self,
        responder: Responder = default_responder,
        *,
        latency: float = 0.0,
        faults: FaultSpec = None,
        models: tuple[str, ...] = ("test-model",),
        require_api_key: str | None = None,
        record: bool = True,
        batch_delay: float = 0.0,
        batch_faults: BatchFaults = None,
        batch_refuse: str | None = None,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.faults = faults
        self.models = models
        self.require_api_key = require_api_key
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.calls = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0
        # Batch API state. Batches are answered lazily, on the first retrieve after batch_delay.
        self.batch_delay = batch_delay
        self.batch_faults = batch_faults
        # When set, batches fail as a whole (validation) with this message and answer nothing.
        self.batch_refuse = batch_refuse
        self.files: dict[str, tuple[str, bytes]] = {}  # file id -> (purpose, content)
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_requests: list[RecordedRequest] = []
        self.batch_calls = 0
        # batch id -> (monotonic creation time, request lines) until the batch is answered
        self._batch_lines: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- ASGI app ---

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/v1/files/{file_id}/content", self._file_content, methods=["GET"]),
                Route("/v1/batches", self._create_batch, methods=["POST"]),
                Route("/v1/batches", self._list_batches, methods=["GET"]),
                Route("/v1/batches/{batch_id}", self._retrieve_batch, methods=["GET"]),
            ]
        )

    def _fault_for(self, n: int, body: dict[str, Any]) -> Fault | None:
        if self.faults is None:
            return None
        spec = self.faults(n, body) if callable(self.faults) else self.faults.get(n)
        if spec is None:
            return None
        return spec if isinstance(spec, Fault) else Fault(spec)

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.calls += 1
            n = self.calls
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            if self.record:
                self.requests.append(RecordedRequest(n, request.url.path, dict(request.headers), body))
        try:
            return await self._answer(request, n, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, request: Request, n: int, body: dict[str, Any] | None) -> Response:
        if body is None or not isinstance(body.get("messages"), list):
            return _error(400, "invalid JSON body: 'messages' is required")
        if self.require_api_key is not None:
            if request.headers.get("authorization") != f"Bearer {self.require_api_key}":
                return _error(401, "Incorrect API key provided")
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._fault_for(n, body)
        if fault is not None:
            kind = fault.kind
            if kind == "429":
                headers = {} if fault.retry_after is None else {"retry-after": f"{fault.retry_after:g}"}
                return _error(429, "Rate limit reached", headers)
            if kind in ("500", "502", "503", "400", "401", "404"):
                return _error(int(kind), f"injected HTTP {kind}")
            if kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif kind == "drop":
                return _DropResponse()
            elif kind == "malformed":
                return Response(b'{"id": "x", "choices": [{"message": ', media_type="application/json")
            else:
                raise ValueError(f"unknown fault {kind!r}")
        return JSONResponse(self._completion(n, body))

    def _completion(self, n: int, body: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion JSON the responder gives for `body` (online calls and batch lines)."""
        reply = self.responder(body)
        if isinstance(reply, str):
            reply = Reply(reply)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs"):
            top = int(body.get("top_logprobs") or 0)
            lps = reply.logprobs if reply.logprobs is not None else default_logprobs(reply.text, top)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": tok,
                        "logprob": lp,
                        "bytes": list(tok.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": alp, "bytes": list(a.encode())}
                            for a, alp in list(alts.items())[:top]
                        ],
                    }
                    for tok, lp, alts in lps
                ]
            }
        in_t, out_t = reply.usage or (approx_tokens(_prompt_text(body)), approx_tokens(reply.text))
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": {"prompt_tokens": in_t, "completion_tokens": out_t, "total_tokens": in_t + out_t},
        }

    # --- batch API ---

    def _auth_error(self, request: Request) -> Response | None:
        if self.require_api_key is not None:
            if request.headers.get("authorization") != f"Bearer {self.require_api_key}":
                return _error(401, "Incorrect API key provided")
        return None

    def _new_file(self, purpose: str, content: bytes, filename: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = (purpose, content)
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
        }

    async def _upload(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str) or not purpose:
            return _error(400, "multipart fields 'file' and 'purpose' are required")
        content = await upload.read()
        return JSONResponse(self._new_file(str(purpose), content, upload.filename or "upload.jsonl"))

    async def _file_content(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        found = self.files.get(request.path_params["file_id"])
        if found is None:
            return _error(404, "No such file")
        return Response(found[1], media_type="application/octet-stream")

    async def _create_batch(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        try:
            spec = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid JSON body")
        found = self.files.get(spec.get("input_file_id", ""))
        if found is None or found[0] != "batch":
            return _error(400, "input_file_id must name a file uploaded with purpose 'batch'")
        if spec.get("endpoint") != "/v1/chat/completions" or spec.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        lines = [json.loads(line) for line in found[1].decode("utf-8").splitlines() if line.strip()]
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids) or not all(ids):
            return _error(400, "every line needs a unique custom_id")
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": spec["endpoint"],
                "errors": None,
                "input_file_id": spec["input_file_id"],
                "completion_window": "24h",
                "status": "in_progress",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": spec.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            }
            self.batches[batch_id] = batch
            self._batch_lines[batch_id] = (time.monotonic(), lines)
        return JSONResponse(batch)

    async def _list_batches(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        limit = int(request.query_params.get("limit", "20"))
        newest = list(reversed(self.batches.values()))[:limit]
        return JSONResponse({"object": "list", "data": newest, "has_more": len(self.batches) > limit})

    async def _retrieve_batch(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        batch_id = request.path_params["batch_id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, "No such batch")
        pending = self._batch_lines.get(batch_id)
        if pending is not None and time.monotonic() - pending[0] >= self.batch_delay:
            self._finish_batch(batch, pending[1])
        return JSONResponse(batch)

    def _finish_batch(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """Answer every line: output file for the answered ones, error file for the failed ones."""
        if self.batch_refuse is not None:
            with self._lock:
                del self._batch_lines[batch["id"]]
            batch["status"] = "failed"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid", "message": self.batch_refuse}]}
            return
        out, errors = [], []
        for line in lines:
            custom_id, body = line["custom_id"], line.get("body") or {}
            with self._lock:
                self.batch_calls += 1
                n = self.batch_calls
                if self.record:
                    self.batch_requests.append(RecordedRequest(n, line.get("url", ""), {}, body))
            failure = self.batch_faults(custom_id, body) if self.batch_faults is not None else None
            if failure is not None:
                errors.append(
                    {
                        "id": f"batch_req_{n}",
                        "custom_id": custom_id,
                        "response": None,
                        "error": {"code": "server_error", "message": failure},
                    }
                )
                continue
            out.append(
                {
                    "id": f"batch_req_{n}",
                    "custom_id": custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": f"req_{n}",
                        "body": self._completion(n, body),
                    },
                    "error": None,
                }
            )

        def jsonl(rows: list[dict[str, Any]]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")

        with self._lock:
            del self._batch_lines[batch["id"]]
        if out:
            batch["output_file_id"] = self._new_file("batch_output", jsonl(out), "output.jsonl")["id"]
        if errors:
            batch["error_file_id"] = self._new_file("batch_output", jsonl(errors), "errors.jsonl")["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}
        batch["status"] = "completed"

    # --- lifecycle ---

    def start(self) -> OpenAICompatServer:
        import uvicorn

        # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
        # proto says TCP, and with Nagle on, uvicorn's separate header and body writes add a
        # 40 ms delayed-ACK stall to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="openai-compat-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test OpenAI server failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": "test_error", "code": status}},
        status_code=status,
        headers=headers,
    )


class _DropResponse(Response):
    """Announces a body, sends part of it, then fails so the server closes the connection: the
    client sees the connection drop mid-response (what a crashing proxy looks like)."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"choices": [', "more_body": True})
        raise ConnectionAbortedError("injected connection drop")
