"""The lean HTTP/1.1 client against a raw asyncio server that answers the way real servers may:
chunked, closed after each reply, delimited by the end of the connection, informational first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from actlabel.models.http11 import HTTPError, Pool


async def serve(replies: Callable[[int, bytes], tuple[bytes, bool]]):
    """A server answering request n (1-based, over all connections) with replies(n, body) ->
    (raw reply bytes, close the connection afterwards). Returns (server, url, connections seen)."""
    count = {"requests": 0, "connections": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                count["requests"] += 1
                raw, close = replies(count["requests"], body)
                writer.write(raw)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1", count


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def exchange(replies, bodies: list[bytes], pause: float = 0.01) -> tuple[list, dict]:
    async def go():
        server, url, count = await serve(replies)
        pool = Pool(url, {"Authorization": "Bearer k"}, limit=4, connect_timeout=5)
        try:
            out = []
            for b in bodies:
                out.append(await pool.post("/v1/chat/completions", b))
                await asyncio.sleep(pause)  # lets a server-side close reach the client, as when idle
            return out, count
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(go())


def test_keep_alive_reuses_one_connection() -> None:
    out, count = exchange(lambda n, b: (ok(b"echo:" + b), False), [b"a", b"b", b"c"])
    assert [r.body for r in out] == [b"echo:a", b"echo:b", b"echo:c"]
    assert out[0].status == 200 and out[0].reason == "OK" and out[0].headers["content-length"] == "6"
    assert count == {"requests": 3, "connections": 1}


def test_chunked_reply_with_trailers() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{"a"\r\n3\r\n:1}\r\n0\r\nX-T: 1\r\n\r\n'
    out, count = exchange(lambda n, b: (chunked, False), [b"x", b"y"])
    assert [r.body for r in out] == [b'{"a":1}'] * 2 and count["connections"] == 1


@pytest.mark.parametrize("pause", [0.0, 0.01])
def test_server_closing_idle_connections_is_invisible(pause: float) -> None:
    # No "Connection: close" announced: the client sees the close when idle (pause) or only when it
    # writes the next request on the connection (no pause), and then sends it on a fresh one.
    out, count = exchange(lambda n, b: (ok(b"r%d" % n), True), [b"a", b"b", b"c"], pause)
    assert [r.body for r in out] == [b"r1", b"r2", b"r3"] and count["connections"] == 3


def test_connection_close_and_close_delimited_bodies() -> None:
    def replies(n, b):
        if n == 1:
            return ok(b"first", b"Connection: close\r\n"), True
        return b"HTTP/1.0 200 OK\r\n\r\nuntil the end", True

    out, count = exchange(replies, [b"a", b"b"])
    assert [r.body for r in out] == [b"first", b"until the end"] and count["connections"] == 2


def test_informational_reply_is_skipped_and_errors_keep_their_status() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        + b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\n{}"
    )
    out, _count = exchange(lambda n, b: (reply, False), [b"a"])
    assert out[0].status == 429 and out[0].headers["retry-after"] == "2" and out[0].body == b"{}"


@pytest.mark.parametrize(
    "reply",
    [
        b"SMTP ready\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # dropped mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    ],
)
def test_broken_replies_are_http_errors(reply: bytes) -> None:
    with pytest.raises(HTTPError):
        exchange(lambda n, b: (reply, True), [b"a"])


def test_request_carries_host_headers_and_exact_body() -> None:
    seen = []

    async def go():
        async def handle(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head + await reader.readexactly(5))
            writer.write(ok(b"{}"))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer k"}, limit=1, connect_timeout=5)
        await pool.post("/v1/chat/completions", b"hello")
        pool.close()
        server.close()
        await server.wait_closed()
        return port

    port = asyncio.run(go())
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"Host: 127.0.0.1:%d" % port in lines and b"Authorization: Bearer k" in lines
    assert b"Content-Length: 5" in lines and body == b"hello"


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(monkeypatch) -> None:
    from actlabel.models import ModelError, load_backend
    from actlabel.models.base import ChatRequest, Message

    with pytest.raises(ValueError, match="line break"):
        Pool("http://127.0.0.1:9/v1", {"Authorization": "Bearer k\r\nX-Evil: 1"}, limit=1, connect_timeout=1)
    monkeypatch.setenv("ACTLABEL_TEST_KEY", "sk-1\nX-Evil: 1")
    backend = load_backend("openai/m", base_url="http://127.0.0.1:9/v1", api_key_env="ACTLABEL_TEST_KEY")
    with pytest.raises(ModelError, match="line break"):
        asyncio.run(backend.chat(ChatRequest((Message.text("user", "hi"),))))


def test_a_redirect_is_a_one_line_error_naming_where_to(monkeypatch) -> None:
    from actlabel.models import ModelError, load_backend
    from actlabel.models.base import ChatRequest, Message

    async def go():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 301 Moved\r\nLocation: https://api.example/v1/chat/completions\r\n")
            writer.write(b"Content-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend = load_backend("openai/m", base_url=f"http://127.0.0.1:{port}/v1")
        try:
            await backend.chat(ChatRequest((Message.text("user", "hi"),)))
        finally:
            await backend.aclose()
            server.close()
            await server.wait_closed()

    with pytest.raises(ModelError, match="HTTP 301: the endpoint moved to https://api.example/v1") as err:
        asyncio.run(go())
    assert "\n" not in str(err.value)
