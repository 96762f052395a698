"""The content-addressed response cache."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil

import pytest

from actlabel.models import (
    CachedBackend,
    ChatRequest,
    DictCache,
    ImagePart,
    Message,
    ModelError,
    ScriptedBackend,
    TextPart,
    request_key,
)


def req(text: str = "hi", **kw) -> ChatRequest:
    return ChatRequest(messages=(Message.text("system", "be brief"), Message.text("user", text)), **kw)


def run(coro):
    return asyncio.run(coro)


def test_hit_makes_no_call_and_is_marked_cached():
    inner = ScriptedBackend("positive", choice_logprobs=True)
    cache = DictCache()
    b = CachedBackend(inner, cache, template_hash="t1")
    r1 = run(b.chat(req(choices=("positive", "negative"))))
    r2 = run(b.chat(req(choices=("positive", "negative"))))
    assert inner.calls == 1
    assert not r1.cached and r2.cached
    assert dataclasses.replace(r2, cached=False) == r1
    assert b.hits == 1 and b.misses == 1
    row = next(iter(cache.rows.values()))
    assert row["spec"] == "scripted/default" and row["input_tokens"] == r1.usage.input_tokens


def test_key_changes_with_every_request_field_spec_and_template():
    base = req(max_tokens=10, temperature=0.0, seed=1)
    k = request_key("s", base, "t")
    assert k == request_key("s", req(max_tokens=10, temperature=0.0, seed=1), "t")
    variants = {
        "max_tokens": 11,
        "temperature": 0.5,
        "choices": ("a", "b"),
        "logprobs": True,
        "top_logprobs": 3,
        "stop": ("\n",),
        "seed": 2,
        "assistant_prefix": "Label:",
    }
    # Every parameter of ChatRequest must reach the key; a new field without a variant here fails.
    assert set(variants) == {f.name for f in dataclasses.fields(ChatRequest)} - {"messages"}
    keys = {k}
    for name, value in variants.items():
        keys.add(request_key("s", dataclasses.replace(base, **{name: value}), "t"))
    keys.add(request_key("s2", base, "t"))
    keys.add(request_key("s", base, "t2"))
    keys.add(request_key("s", req("other", max_tokens=10, temperature=0.0, seed=1), "t"))
    keys.add(request_key("s", dataclasses.replace(base, messages=base.messages[1:]), "t"))
    assert len(keys) == len(variants) + 5


def test_images_keyed_by_content_not_path(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"\x89PNG fake image bytes")
    b = tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    shutil.copy(a, b)

    def with_image(path):
        return ChatRequest(messages=(Message("user", (TextPart("what is it?"), ImagePart(str(path)))),))

    assert request_key("s", with_image(a)) == request_key("s", with_image(b))
    b.write_bytes(b"\x89PNG other bytes!!")
    assert request_key("s", with_image(a)) != request_key("s", with_image(b))
    with pytest.raises(ModelError, match="cannot read image"):
        request_key("s", with_image(tmp_path / "missing.png"))


def test_errors_are_not_cached():
    inner = ScriptedBackend("ok", faults={1: "retryable"})
    b = CachedBackend(inner, DictCache())
    with pytest.raises(ModelError):
        run(b.chat(req()))
    assert run(b.chat(req())).text == "ok" and inner.calls == 2
    assert run(b.chat(req())).cached and inner.calls == 2


def test_concurrent_identical_requests_are_coalesced():
    inner = ScriptedBackend("ok", latency=0.05)
    b = CachedBackend(inner, DictCache())

    async def go():
        return await asyncio.gather(*(b.chat(req()) for _ in range(5)), b.chat(req("different")))

    out = run(go())
    assert inner.calls == 2
    assert [r.cached for r in out[:5]].count(False) == 1


def test_coalesced_waiters_share_the_error():
    inner = ScriptedBackend("ok", latency=0.05, faults={1: "error"})
    b = CachedBackend(inner, DictCache())

    async def go():
        return await asyncio.gather(b.chat(req()), b.chat(req()), return_exceptions=True)

    out = run(go())
    assert all(isinstance(e, ModelError) for e in out) and inner.calls == 1


def test_real_store_cache_survives_reopen(tmp_path):
    from actlabel.store import Store
    from actlabel.task import Label, Task

    task = Task(labels=[Label("positive"), Label("negative")])
    store = Store.create(tmp_path / "proj", task)
    inner = ScriptedBackend("positive", fake_logprobs=True, choice_logprobs=True)
    r1 = run(
        CachedBackend(inner, store.response_cache(), template_hash="h").chat(
            req(choices=("positive", "negative"), logprobs=True, top_logprobs=2)
        )
    )
    store.close()
    store = Store.open(tmp_path / "proj")
    inner2 = ScriptedBackend("SHOULD NOT BE CALLED")
    r2 = run(
        CachedBackend(inner2, store.response_cache(), template_hash="h").chat(
            req(choices=("positive", "negative"), logprobs=True, top_logprobs=2)
        )
    )
    assert inner2.calls == 0 and r2.cached
    assert dataclasses.replace(r2, cached=False) == r1
    store.close()


# Keys computed by request_key before KeyMemo existed (commit 191d0f0): a stored cache stays valid.
PINNED_KEYS = [
    (
        ChatRequest(
            (
                Message.text("system", "Label it."),
                Message.text("user", 'Text: café ☕ "quoted" \\ back\nLabel:'),
            ),
            max_tokens=8,
            choices=("positive", "negative"),
            logprobs=True,
            top_logprobs=20,
        ),
        "e376f36c80c4eedd5d61ea22bda9f9a7a0fe59678e4362ffce9aa27e023b0b0a",
    ),
    (
        ChatRequest((Message.text("user", "hi"),)),
        "2d54e2d32b5022c2b1dc84cfe3039829cba3c7bb11b55ae7f4a908f1aef10c2e",
    ),
    (
        ChatRequest(
            (
                Message.text("system", "s"),
                Message.text("user", "ex"),
                Message.text("assistant", "positive"),
                Message.text("user", "item"),
            ),
            temperature=0.4,
            seed=1000,
            stop=("\n",),
            assistant_prefix="Because\nAnswer:",
        ),
        "d26789a2e81c1d3867e4313da613becf37d40a17e47164f58aa61e2881c8b84d",
    ),
]


def test_memoised_keys_are_the_keys_of_request_key_byte_for_byte(tmp_path):
    spec, templates = "openai/m@http://h/v1", "abc123"
    from actlabel.models.cache import KeyMemo

    memo = KeyMemo(spec, templates)
    for request, pinned in PINNED_KEYS * 2:  # twice: the second pass is served from the memo
        assert request_key(spec, request, templates) == pinned
        assert memo.key(request) == pinned
    shutil.copy(__file__, tmp_path / "img.png")
    variants = [
        req("other item"),
        req("other item", temperature=0),  # == the default 0.0, but serialises differently
        req("other item", logprobs=1),
        req("other item", logprobs=True),
        req("x", choices=["a", "b"]),  # a list: unhashable, still a valid request
        req("x", max_tokens=5, seed=None),
        ChatRequest((Message("user", (ImagePart(str(tmp_path / "img.png")), TextPart("see"))),)),
        ChatRequest(()),
    ]
    for request in variants * 2:
        assert memo.key(request) == request_key(spec, request, templates)
    # every code point JSON may escape or not (controls, quotes, DEL, U+2028, astral), in chunks
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 20000):
        text = "".join(map(chr, points[start : start + 20000]))
        request = ChatRequest((Message.text("system", text), Message.text("user", text)))
        assert memo.key(request) == request_key(spec, request, templates)
    assert len({memo.key(r) for r in variants}) == len(variants)
    assert KeyMemo("openai/other", templates).key(variants[0]) != memo.key(variants[0])
    assert KeyMemo(spec, "other").key(variants[0]) != memo.key(variants[0])
