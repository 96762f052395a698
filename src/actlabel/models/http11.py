"""A lean HTTP/1.1 client on asyncio streams: JSON POSTs to one endpoint, nothing else.

Against a fast local server (vLLM, llama.cpp server on the same machine or network) the client's
CPU per call is what limits throughput on a small machine. aiohttp spends about 0.3 ms of CPU per
call and 0.2-0.3 s importing (its connector loads the CA store at import); here a call is one
prepared request written on a pooled keep-alive connection and a reply read by Content-Length or
chunks. Everything an API endpoint does not use is left out: cookies, redirects (a 3xx is returned
as it is), compression (none is asked for), proxies (aiohttp, the other default, ignores them too).

A reused connection that the server closed while idle fails before any byte of the reply: that
call is sent once more on a fresh connection, since nothing was answered. Any other transport
failure is an `HTTPError` for the caller to map and retry.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from dataclasses import dataclass
from urllib.parse import urlsplit

#: the most bytes a status line plus headers may take
MAX_HEAD_BYTES = 64 * 1024


class HTTPError(Exception):
    """The exchange failed in transport (connection refused, reset, dropped mid-reply, bad framing)."""


class _Stale(Exception):
    """A pooled connection was closed by the server before it answered anything."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to the host of `url`, at most `limit` in use at once. Belongs to the
    event loop it is first used in, like any asyncio object."""

    def __init__(self, url: str, headers: dict[str, str], *, limit: int, connect_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.connect_timeout = connect_timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = (parts.scheme == "https" and self.port == 443) or (
            parts.scheme == "http" and self.port == 80
        )
        self.authority = host if default else f"{host}:{self.port}"
        # Everything but the path and the length is the same for every request: encoded once.
        lines = [f"Host: {self.authority}", "User-Agent: actlabel", "Accept: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        if any("\r" in line or "\n" in line for line in lines):
            # would end the header block early: what follows would be sent as headers of its own
            raise ValueError("a header contains a line break (check the API key environment variable)")
        self._head_tail = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._ssl: ssl_module.SSLContext | None = None

    async def _connect(self) -> Connection:
        if self.tls and self._ssl is None:
            self._ssl = ssl_module.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, limit=MAX_HEAD_BYTES
                )
        except TimeoutError:
            raise HTTPError(f"connect to {self.authority} timed out") from None
        except (OSError, ssl_module.SSLError) as exc:
            raise HTTPError(f"{type(exc).__name__}: {exc}") from None
        return Connection(reader, writer)

    async def post(self, path: str, body: bytes) -> Response:
        request = b"POST %s HTTP/1.1\r\n%s%d\r\n\r\n%s" % (
            path.encode("ascii"),
            self._head_tail,
            len(body),
            body,
        )
        async with self._slots:
            while True:
                while self._idle and self._idle[-1].reader.at_eof():  # closed by the server while idle
                    self._idle.pop().close()
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    response, keep = await _exchange(conn, request, reused)
                except _Stale:
                    conn.close()
                    continue  # nothing was answered: the same request on another connection
                except BaseException:
                    conn.close()  # a cancelled or failed exchange leaves the stream in an unknown state
                    raise
                if keep:
                    self._idle.append(conn)
                else:
                    conn.close()
                return response

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


async def _exchange(conn: Connection, request: bytes, reused: bool) -> tuple[Response, bool]:
    reader = conn.reader
    try:
        conn.writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if reused and not exc.partial:
                raise _Stale from None
            raise
        status, reason, version, headers = _parse_head(head)
        while 100 <= status < 200:  # informational replies precede the real one
            status, reason, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body, keep = await reader.read(), False  # delimited by the end of the connection
    except ConnectionResetError as exc:
        if reused:
            raise _Stale from None
        raise HTTPError(f"{type(exc).__name__}: {exc}") from None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise HTTPError(f"connection closed mid-reply ({type(exc).__name__})") from None
    except asyncio.LimitOverrunError:
        raise HTTPError("reply headers too long") from None
    except ValueError as exc:  # unparseable status line, header or chunk size
        raise HTTPError(f"malformed HTTP reply: {exc}") from None
    return Response(status, reason, headers, body), keep


def _parse_head(head: bytes) -> tuple[int, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3:
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    return int(code), reason, version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])
