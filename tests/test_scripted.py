"""The scripted backend, retries (backoff, Retry-After, parse re-asks) and usage accounting."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from actlabel.models import (
    DEFAULT_MODEL,
    ChatRequest,
    ChatResponse,
    Message,
    MeteredBackend,
    ModelError,
    Parsed,
    ParseFailure,
    PriceTable,
    RetryableError,
    RetryingBackend,
    RetryPolicy,
    RunCap,
    RunUsage,
    ScriptedBackend,
    Usage,
    call_with_parse,
    chat_with_retry,
    load_backend,
)


def req(text: str = "hi", **kw) -> ChatRequest:
    return ChatRequest(messages=(Message.text("user", text),), **kw)


def run(coro):
    return asyncio.run(coro)


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --- scripted backend ---------------------------------------------------------------------------


def test_cycles_answers_and_counts_calls():
    b = ScriptedBackend(["a", "b"])
    texts = [run(b.chat(req())).text for _ in range(3)]
    assert texts == ["a", "b", "a"]
    assert b.calls == 3 and len(b.requests) == 3


def test_callable_script_sees_request():
    b = ScriptedBackend(lambda r: r.messages[-1].plain_text.upper())
    assert run(b.chat(req("abc"))).text == "ABC"


def test_faults_on_call_numbers():
    b = ScriptedBackend("ok", faults={1: "retryable", 3: "error"})
    with pytest.raises(RetryableError):
        run(b.chat(req()))
    assert run(b.chat(req())).text == "ok"
    with pytest.raises(ModelError) as e:
        run(b.chat(req()))
    assert not isinstance(e.value, RetryableError)


def test_fault_rate_is_seeded():
    def pattern(seed: int) -> list[bool]:
        b = ScriptedBackend("ok", fault_rate=0.3, fault_seed=seed)
        out = []
        for _ in range(50):
            try:
                run(b.chat(req()))
                out.append(True)
            except RetryableError:
                out.append(False)
        return out

    assert pattern(1) == pattern(1)
    assert 5 <= pattern(1).count(False) <= 30


def test_fake_choice_logprobs_normalised():
    b = ScriptedBackend("pos", choice_logprobs=True, fake_logprobs=True)
    r = run(b.chat(req(choices=("pos", "neg", "neu"), logprobs=True, top_logprobs=2)))
    assert math.isclose(sum(math.exp(v) for v in r.choice_logprobs.values()), 1.0)
    assert max(r.choice_logprobs, key=r.choice_logprobs.get) == "pos"
    assert r.logprobs[0].token == "pos" and len(r.logprobs[0].top) == 2


def test_load_backend_scripted_and_unknown_spec():
    b = load_backend("scripted/x", script="yo")
    assert b.spec == "scripted/x" and run(b.chat(req())).text == "yo"
    assert DEFAULT_MODEL == "local/default"
    for bad in ("", "gpt-4", "huggingface/x", "openai/"):
        with pytest.raises(ModelError) as e:
            load_backend(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="base-url"):
        load_backend("scripted/x", base_url="http://x")


def test_response_json_roundtrip():
    b = ScriptedBackend("pos", choice_logprobs=True, fake_logprobs=True)
    r = run(b.chat(req(choices=("pos", "neg"), logprobs=True, top_logprobs=2)))
    back = ChatResponse.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r


# --- transient retries --------------------------------------------------------------------------


def test_retry_until_success_with_backoff():
    b = ScriptedBackend("ok", faults={1: "retryable", 2: "retryable"})
    sleep = FakeSleep()
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=8.0)
    r = run(chat_with_retry(b, req(), policy=policy, rng=random.Random(0), sleep=sleep))
    assert r.text == "ok" and b.calls == 3
    assert len(sleep.waits) == 2
    # full jitter: attempt n waits within [0, base * 2**n]
    assert 0 <= sleep.waits[0] <= 1.0 and 0 <= sleep.waits[1] <= 2.0


def test_retry_honours_retry_after():
    b = ScriptedBackend("ok", faults={1: "429"}, fault_retry_after=7.5)
    sleep = FakeSleep()
    run(chat_with_retry(b, req(), policy=RetryPolicy(base_delay=0.01), sleep=sleep))
    assert sleep.waits == [7.5]


def test_retry_after_is_capped():
    b = ScriptedBackend("ok", faults={1: "429"}, fault_retry_after=10_000)
    sleep = FakeSleep()
    run(chat_with_retry(b, req(), policy=RetryPolicy(max_retry_after=60), sleep=sleep))
    assert sleep.waits == [60]


def test_retry_gives_up_after_max_attempts():
    b = ScriptedBackend("ok", fault_rate=1.0)
    sleep = FakeSleep()
    with pytest.raises(RetryableError, match="gave up after 4 attempts"):
        run(chat_with_retry(b, req(), policy=RetryPolicy(max_attempts=4), sleep=sleep))
    assert b.calls == 4 and len(sleep.waits) == 3


def test_non_retryable_error_is_not_retried():
    b = ScriptedBackend("ok", faults={1: "error"})
    with pytest.raises(ModelError):
        run(chat_with_retry(b, req(), sleep=FakeSleep()))
    assert b.calls == 1


def test_retrying_backend_wrapper():
    b = ScriptedBackend("ok", faults={1: "retryable"})
    rb = RetryingBackend(b, RetryPolicy(base_delay=0.001), seed=1)
    assert run(rb.chat(req())).text == "ok" and rb.spec == b.spec


# --- parse retries ------------------------------------------------------------------------------


def parse_label(r: ChatResponse) -> str:
    t = r.text.strip().lower()
    if t not in ("positive", "negative"):
        raise ValueError(f"not a label: {r.text!r}")
    return t


def test_parse_retry_then_success_varies_seed_and_temperature():
    b = ScriptedBackend(["Sure! Here it is", "positive"])
    out = run(call_with_parse(b, req(seed=3), parse_label, sleep=FakeSleep()))
    assert isinstance(out, Parsed) and out.ok and out.value == "positive" and out.attempts == 2
    first, second = b.requests
    assert first.seed == 3 and first.temperature == 0.0
    assert second.seed != 3 and second.temperature > 0


def test_parse_failure_keeps_raw_text_never_invents():
    b = ScriptedBackend(["blah", "meh", "nope"])
    out = run(call_with_parse(b, req(), parse_label, max_parse_retries=2, sleep=FakeSleep()))
    assert isinstance(out, ParseFailure) and not out.ok
    assert out.raw_text == "nope" and out.raw_texts == ("blah", "meh", "nope")
    assert out.attempts == 3 and "not a label" in out.error
    assert len({r.seed for r in b.requests}) == 3
    # the answer step of a two-step call (reasoning first): both steps' text is what is stored
    two_step = out.after("Because it says so.", "\nAnswer:")
    assert two_step.raw_text == "Because it says so.\nAnswer:nope"
    assert two_step.raw_texts == ("Because it says so.", "blah", "meh", "nope")
    assert two_step.attempts == 4 and two_step.error == out.error and two_step.response is out.response


def test_parse_retries_include_transient_retries():
    b = ScriptedBackend(["junk", "negative"], faults={2: "retryable"})
    out = run(call_with_parse(b, req(), parse_label, sleep=FakeSleep()))
    assert out.ok and out.value == "negative" and b.calls == 3


def test_parse_with_model_error_raises():
    b = ScriptedBackend("x", faults={1: "error"})
    with pytest.raises(ModelError):
        run(call_with_parse(b, req(), parse_label, sleep=FakeSleep()))


# --- usage ------------------------------------------------------------------------------------------


def test_price_table_overrides(tmp_path):
    (tmp_path / "prices.json").write_text(
        json.dumps({"gpt-4o-mini": {"input": 1, "output": 2}, "mine": [3, 4]})
    )
    t = PriceTable.load(tmp_path)
    assert t.price("openai/gpt-4o-mini@https://api.openai.com/v1") == (1.0, 2.0)
    assert t.price("openai/mine@http://127.0.0.1:8000/v1") == (3.0, 4.0)
    assert t.price("openai/gpt-4o@https://x") == (2.5, 10.0)  # built-in
    assert t.price("local/qwen2.5-1.5b") == (0.0, 0.0)
    assert t.price("openai/unknown@http://x") is None
    assert math.isclose(t.cost("openai/mine@x", 1_000_000, 500_000), 3 + 2)


def test_price_table_toml_and_bad_file(tmp_path):
    (tmp_path / "prices.toml").write_text("[m1]\ninput = 0.5\noutput = 1.5\n")
    assert PriceTable.load(tmp_path).price("openai/m1@x") == (0.5, 1.5)
    (tmp_path / "prices.json").write_text('{"m2": "cheap"}')
    with pytest.raises(ModelError, match="prices.json"):
        PriceTable.load(tmp_path)


def test_metered_backend_counts_calls_hits_failures():
    usage = RunUsage(prices=PriceTable({"m": (1.0, 2.0)}))
    inner = ScriptedBackend(
        lambda r: ChatResponse("x", usage=Usage(1000, 100), cached=r.seed == 9), faults={2: "retryable"}
    )
    inner.spec = "openai/m@http://h"
    b = MeteredBackend(inner, usage)
    run(b.chat(req()))
    with pytest.raises(RetryableError):
        run(b.chat(req()))
    run(b.chat(req(seed=9)))  # a cache hit
    assert usage.calls == 1 and usage.cache_hits == 1 and usage.failed_calls == 1
    assert usage.input_tokens == 1000 and usage.output_tokens == 100
    assert math.isclose(usage.cost, (1000 * 1 + 100 * 2) / 1e6)
    assert usage.run_fields()["failures"] == 1
    assert "calls 1" in usage.summary()


def test_unpriced_model_is_reported():
    usage = RunUsage()
    usage.record("openai/mystery@http://h", ChatResponse("x", usage=Usage(10, 10)))
    assert usage.cost == 0 and usage.unpriced == {"mystery"}
    assert "unpriced" in usage.summary()


def test_run_cap():
    usage = RunUsage(prices=PriceTable({"m": (1_000_000.0, 0.0)}))
    cap = RunCap(max_run_tokens=100)
    assert cap.reached(usage) is None
    usage.record("openai/m@x", ChatResponse("x", usage=Usage(90, 20)))
    assert "token cap" in cap.reached(usage)
    assert "cost cap" in RunCap(max_cost=5.0).reached(usage)
