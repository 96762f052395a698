"""The OpenAI-compatible backend, driven over real HTTP against the loopback test server."""

from __future__ import annotations

import asyncio
import io
import math
import time

import pytest

from actlabel.models import (
    CachedBackend,
    ChatRequest,
    DictCache,
    ImagePart,
    Message,
    ModelError,
    ParseFailure,
    RetryableError,
    RetryPolicy,
    TextPart,
    call_with_parse,
    chat_with_retry,
    load_backend,
)
from actlabel.models.openai_compat import OpenAICompatBackend, parse_retry_after, public_url
from actlabel.testing import Fault, OpenAICompatServer, Reply

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SECRET = "sk-test-SECRET-do-not-store-1234567890"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


def req(text: str = "Is this positive?", **kw) -> ChatRequest:
    return ChatRequest(
        messages=(Message.text("system", "Answer with one word."), Message.text("user", text)), **kw
    )


def run(coro):
    return asyncio.run(coro)


async def ask(backend, request, *, retry: RetryPolicy | None = None):
    try:
        if retry is None:
            return await backend.chat(request)
        return await chat_with_retry(backend, request, policy=retry)
    finally:
        await backend.aclose()


@pytest.fixture(params=["asyncio", "aiohttp", "sdk", "httpx"])
def client(request):
    if request.param == "aiohttp":
        pytest.importorskip("aiohttp")
    return request.param


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("ACTLABEL_TEST_KEY", SECRET)
    return "ACTLABEL_TEST_KEY"


def make(srv, client="sdk", key_env="ACTLABEL_TEST_KEY", **kw) -> OpenAICompatBackend:
    return load_backend("openai/test-model", base_url=srv.base_url, api_key_env=key_env, client=client, **kw)


def test_text_chat_roundtrip(client, key_env):
    with OpenAICompatServer(responder=lambda body: "positive", require_api_key=SECRET) as srv:
        r = run(ask(make(srv, client), req(max_tokens=5, seed=7, stop=("\n",))))
    assert r.text == "positive" and r.logprobs is None and not r.cached
    assert r.usage.input_tokens > 0 and r.usage.output_tokens == 2
    body = srv.requests[0].body
    assert body["model"] == "test-model" and body["max_tokens"] == 5 and body["seed"] == 7
    assert body["temperature"] == 0.0 and body["stop"] == ["\n"]
    assert body["messages"] == [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Is this positive?"},
    ]
    assert "logprobs" not in body
    assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_assistant_prefix_sent_as_trailing_assistant_turn(key_env):
    with OpenAICompatServer() as srv:
        run(ask(make(srv), req(assistant_prefix="Reasoning: it is")))
    assert srv.requests[0].body["messages"][-1] == {"role": "assistant", "content": "Reasoning: it is"}


def test_api_key_never_in_spec_repr_or_cache(client, key_env, tmp_path):
    from actlabel.store import Store
    from actlabel.task import Label, Task

    store = Store.create(tmp_path / "p", Task(labels=[Label("a"), Label("b")]))
    dict_cache = DictCache()
    with OpenAICompatServer(require_api_key=SECRET) as srv:
        url_with_creds = srv.base_url.replace("http://", "http://user:pw@") + "?token=abc"
        backend = make(srv, client)
        assert SECRET not in backend.spec and SECRET not in repr(backend)
        run(ask(CachedBackend(backend, store.response_cache()), req()))
        run(ask(CachedBackend(make(srv, client), dict_cache), req()))
    store.close()
    assert public_url(url_with_creds) == srv.base_url
    assert SECRET not in repr(dict_cache.rows)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "p").iterdir() if p.is_file())
    assert SECRET.encode() not in raw and b"Bearer" not in raw


def test_wrong_key_is_a_one_line_model_error(monkeypatch):
    monkeypatch.setenv("ACTLABEL_TEST_KEY", "wrong")
    with OpenAICompatServer(require_api_key=SECRET) as srv:
        with pytest.raises(ModelError) as e:
            run(ask(make(srv), req()))
    assert not isinstance(e.value, RetryableError)
    assert "HTTP 401" in str(e.value) and "\n" not in str(e.value) and "wrong" not in str(e.value)


def test_missing_key_for_openai_is_refused(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        load_backend("openai/gpt-4o-mini")


def test_base_url_from_environment(monkeypatch):
    with OpenAICompatServer(responder=lambda b: "env") as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        b = load_backend("openai/test-model")
        assert b.spec == f"openai/test-model@{srv.base_url}"
        assert run(ask(b, req())).text == "env"


def png(w: int, h: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (200, 30, 30) if mode == "RGB" else (200, 30, 30, 128)).save(buf, format=fmt)
    return buf.getvalue()


def test_images_sent_as_downscaled_data_urls(client, key_env, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png(2000, 1000))
    small = tmp_path / "small.jpg"
    small_bytes = png(300, 200, fmt="JPEG")
    small.write_bytes(small_bytes)
    alpha = tmp_path / "alpha.png"
    alpha.write_bytes(png(1200, 1200, mode="RGBA"))
    message = Message(
        "user",
        (TextPart("What is shown?"), ImagePart(str(big)), ImagePart(str(small)), ImagePart(str(alpha))),
    )
    with OpenAICompatServer(responder=lambda b: "a red square") as srv:
        r = run(ask(make(srv, client, image_max_side=512), ChatRequest(messages=(message,))))
    assert r.text == "a red square"
    sent = srv.requests[0]
    content = sent.messages[0]["content"]
    assert content[0] == {"type": "text", "text": "What is shown?"}
    assert [p["type"] for p in content] == ["text", "image_url", "image_url", "image_url"]
    images = sent.images()
    assert images[0][0] == "image/jpeg"
    assert Image.open(io.BytesIO(images[0][1])).size == (512, 256)
    assert images[1] == ("image/jpeg", small_bytes)  # small enough: sent byte for byte
    assert images[2][0] == "image/png"  # transparency kept
    assert Image.open(io.BytesIO(images[2][1])).size == (512, 512)


def test_missing_image_is_a_model_error(key_env, tmp_path):
    message = Message("user", (ImagePart(str(tmp_path / "nope.png")),))
    with OpenAICompatServer() as srv:
        with pytest.raises(ModelError, match="cannot read image"):
            run(ask(make(srv), ChatRequest(messages=(message,))))
    assert srv.calls == 0


def test_logprobs_and_top_alternatives(client, key_env):
    with OpenAICompatServer(responder=lambda b: "very positive indeed") as srv:
        r = run(ask(make(srv, client), req(logprobs=True, top_logprobs=3)))
    body = srv.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert [t.token for t in r.logprobs] == ["very", " positive", " indeed"]
    for t in r.logprobs:
        assert t.logprob < 0 and len(t.top) == 3 and t.top[t.token] == t.logprob


def test_choice_logprobs_from_first_token_alternatives(key_env):
    def responder(body):
        return Reply(
            "neg",
            logprobs=[
                ("neg", math.log(0.6), {"neg": math.log(0.6), "pos": math.log(0.3), "ne": math.log(0.1)})
            ],
        )

    with OpenAICompatServer(responder=responder) as srv:
        r = run(
            ask(make(srv), req(choices=("negative", "positive", "neutral"), logprobs=True, top_logprobs=3))
        )
    p = {c: math.exp(v) for c, v in r.choice_logprobs.items()}
    assert math.isclose(sum(p.values()), 1.0)
    # "ne" is shared by negative and neutral: ignored; neutral gets the floor
    assert p["negative"] > p["positive"] > p["neutral"] > 0


def test_429_retry_after_is_honoured(client, key_env):
    with OpenAICompatServer(faults={1: Fault("429", retry_after=0.4)}) as srv:
        backend = make(srv, client)
        with pytest.raises(RetryableError) as e:
            run(ask(backend, req()))
        assert e.value.retry_after == pytest.approx(0.4)
        start = time.monotonic()
        r = run(ask(make(srv, client), req(), retry=FAST))
        elapsed = time.monotonic() - start
    assert r.text == "ok" and srv.calls == 2
    assert elapsed < 0.3  # the second server call succeeded at once


def test_429_then_success_waits_retry_after(client, key_env):
    with OpenAICompatServer(faults={1: Fault("429", retry_after=0.4)}) as srv:
        start = time.monotonic()
        r = run(ask(make(srv, client), req(), retry=FAST))
        elapsed = time.monotonic() - start
    assert r.text == "ok" and srv.calls == 2 and elapsed >= 0.4
    assert srv.requests[1].received_at - srv.requests[0].received_at >= 0.4


@pytest.mark.parametrize("status", ["500", "503"])
def test_server_errors_are_retried(client, key_env, status):
    with OpenAICompatServer(faults={1: status, 2: status}) as srv:
        r = run(ask(make(srv, client), req(), retry=FAST))
    assert r.text == "ok" and srv.calls == 3


def test_client_errors_are_not_retried(client, key_env):
    with OpenAICompatServer(faults={1: "404"}) as srv:
        with pytest.raises(ModelError) as e:
            run(ask(make(srv, client), req(), retry=FAST))
    assert not isinstance(e.value, RetryableError) and srv.calls == 1
    assert "HTTP 404" in str(e.value) and "\n" not in str(e.value)


def test_timeout_is_retryable_and_retried(client, key_env):
    # The answer is delayed far past the timeout, so giving up well before it proves the timeout
    # fired, with room for a loaded CI machine.
    with OpenAICompatServer(faults={1: Fault("delay", seconds=8.0)}) as srv:
        start = time.monotonic()
        with pytest.raises(RetryableError, match="timed out"):
            run(ask(make(srv, client, timeout=0.3), req()))
        assert time.monotonic() - start < 6.0
        r = run(ask(make(srv, client, timeout=0.3), req(), retry=FAST))
    assert r.text == "ok"


def test_connection_drop_is_retryable(client, key_env):
    with OpenAICompatServer(faults={1: "drop"}) as srv:
        with pytest.raises(RetryableError, match="connection"):
            run(ask(make(srv, client), req()))
        assert run(ask(make(srv, client), req(), retry=FAST)).text == "ok"


def test_malformed_body_is_retryable(client, key_env):
    with OpenAICompatServer(faults={1: "malformed", 2: "malformed"}) as srv:
        with pytest.raises(RetryableError, match="malformed"):
            run(ask(make(srv, client), req()))
        assert run(ask(make(srv, client), req(), retry=FAST)).text == "ok"
    assert srv.calls == 3


def test_unreachable_server_is_retryable(key_env):
    with OpenAICompatServer() as srv:
        url = srv.base_url
    b = load_backend("openai/m", base_url=url, api_key_env=key_env, timeout=2)
    with pytest.raises(RetryableError, match="connection"):
        run(ask(b, req()))


def test_parse_retries_then_failure_with_raw_text(client, key_env):
    def parse(r):
        if r.text not in ("positive", "negative"):
            raise ValueError(f"unknown label {r.text!r}")
        return r.text

    with OpenAICompatServer(responder=lambda b: "I think it's upbeat") as srv:
        backend = CachedBackend(make(srv, client), DictCache())

        async def go():
            try:
                return await call_with_parse(backend, req(seed=1), parse, max_parse_retries=2, policy=FAST)
            finally:
                await backend.aclose()

        out = run(go())
    assert isinstance(out, ParseFailure)
    assert out.raw_text == "I think it's upbeat" and out.attempts == 3
    seeds = [r.body["seed"] for r in srv.requests]
    temps = [r.body["temperature"] for r in srv.requests]
    assert len(set(seeds)) == 3 and temps[0] == 0 and temps[1] > 0


def parse_negative(r):
    if r.text != "negative":
        raise ValueError("not negative")
    return 0


def test_parse_retry_recovers(key_env):
    answers = iter(["Well...", "negative"])
    with OpenAICompatServer(responder=lambda b: next(answers)) as srv:
        backend = make(srv)

        async def go():
            try:
                return await call_with_parse(backend, req(), parse_negative, policy=FAST)
            finally:
                await backend.aclose()

        out = run(go())
    assert out.ok and out.value == 0 and out.attempts == 2


def test_cache_avoids_second_http_call(client, key_env):
    with OpenAICompatServer(responder=lambda b: "positive") as srv:
        cache = DictCache()
        run(ask(CachedBackend(make(srv, client), cache, template_hash="v1"), req()))
        r = run(ask(CachedBackend(make(srv, client), cache, template_hash="v1"), req()))
        assert r.cached and r.text == "positive" and srv.calls == 1
        run(ask(CachedBackend(make(srv, client), cache, template_hash="v2"), req()))
        assert srv.calls == 2


def test_default_client_and_reuse_across_event_loops(key_env):
    pytest.importorskip("aiohttp")
    https = load_backend("openai/test-model", base_url="https://example.invalid/v1", api_key_env=key_env)
    assert https.client_kind == "aiohttp"
    with OpenAICompatServer(responder=lambda b: "again") as srv:
        backend = load_backend("openai/test-model", base_url=srv.base_url, api_key_env=key_env)
        assert backend.client_kind == "asyncio"
        # one backend used by two asyncio.run() calls (plan, then annotate) keeps working
        assert run(backend.chat(req())).text == "again"
        assert run(ask(backend, req("second"))).text == "again"
    assert srv.calls == 2


def test_extra_body_is_sent_and_changes_the_spec(key_env):
    with OpenAICompatServer() as srv:
        plain = make(srv)
        extra = make(srv, extra_body={"top_k": 1})
        assert extra.spec != plain.spec and extra.spec.startswith(plain.spec + "#")
        run(ask(extra, req()))
        run(plain.aclose())
    assert srv.requests[0].body["top_k"] == 1


def test_list_models(key_env):
    with OpenAICompatServer(models=("a", "b")) as srv:
        b = make(srv)
        assert run(b.list_models()) == ["a", "b"]
        run(b.aclose())


def test_concurrent_calls_share_connections(client, key_env):
    with OpenAICompatServer(latency=0.05) as srv:
        backend = make(srv, client)

        async def go():
            try:
                return await asyncio.gather(*(backend.chat(req(f"q{i}")) for i in range(32)))
            finally:
                await backend.aclose()

        start = time.monotonic()
        out = run(go())
        elapsed = time.monotonic() - start
    # Concurrency is proven by the server seeing many calls at once; the wall-clock figure lives
    # in bench/bench_backends.py, not in a timed unit test.
    assert len(out) == 32 and srv.max_in_flight >= 16
    assert elapsed < 32 * 0.05 * 3


def test_retry_after_header_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert 0 <= parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 0.0
    assert parse_retry_after(None) is None
