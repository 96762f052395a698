"""ONNX Runtime for the frozen feature models: exported once per machine from the same weights.

The ONNX file is cached under the user cache dir (`$ACTLABEL_CACHE/onnx`, else
`~/.cache/actlabel/models/onnx`), keyed by the sha256 of the weights, the onnxruntime version, the
opset and the export format. Next to it a `.json` records the file's own sha256 and the cosine
self-check measured at export time; a file whose hash does not match (torn write, corruption) or
that onnxruntime cannot load is exported again.

The self-check compares the exported model with today's torch path on fixed probe inputs and
refuses the export below COSINE_FLOOR: a vector that differs by more than numerical noise would
poison every project's feature cache, which is keyed by content and model name, not by runtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPSET = 17
TEXT_DIM = 384
#: bump when the exported graph changes (wrapper, fusion, pooling), so old cached files are not reused
EXPORT_FORMAT = 1
#: below this a runtime's vectors are not "the same vectors" and may not share the feature cache
COSINE_FLOOR = 0.9999


class ExportCheckFailed(RuntimeError):
    """The exported model's vectors differ from the torch model's on the probe inputs."""


def cache_dir() -> Path:
    from actlabel.models.llama_local import model_cache_dir

    return model_cache_dir() / "onnx"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


THREADS_ENV = "ACTLABEL_FEATURE_THREADS"


def cpu_threads() -> int:
    """Threads for feature extraction: ACTLABEL_FEATURE_THREADS, else the cores this process may use."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            from actlabel.errors import UserError

            raise UserError(f"{THREADS_ENV}={value!r}: expected a whole number of threads, at least 1")
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


@dataclass(frozen=True)
class ExportSpec:
    """How to make and verify one ONNX model.

    export(path) writes the ONNX file; check(path) returns the per-probe cosine similarity of the
    file's outputs against the torch model's.
    """

    name: str
    weights: Sequence[Path]
    export: Callable[[Path], None]
    check: Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    cosine_min: float
    cosine_mean: float
    exported: bool  # False when a verified cached file was reused
    seconds: float  # export + self-check, or cache verification


def model_path(spec: ExportSpec, folder: Path | None = None) -> Path:
    import onnxruntime

    weights = hashlib.sha256()
    for w in spec.weights:
        weights.update(file_sha256(Path(w)).encode())
    key = f"{spec.name}-{weights.hexdigest()[:16]}-ort{onnxruntime.__version__}-opset{OPSET}-f{EXPORT_FORMAT}"
    return (folder or cache_dir()) / f"{key}.onnx"


def _verified(path: Path) -> dict | None:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if path.is_file() and meta.get("sha256") == file_sha256(path):
            return meta
    except (OSError, ValueError, AttributeError):
        pass
    return None


def ensure_exported(spec: ExportSpec, folder: Path | None = None) -> ExportedModel:
    """The cached, verified ONNX file for `spec`, exported (and self-checked) when missing or corrupt.

    Raises ExportCheckFailed when a fresh export does not reproduce the torch vectors.
    """
    start = time.perf_counter()
    path = model_path(spec, folder)
    meta = _verified(path)
    if meta is not None:
        return ExportedModel(
            path, meta["cosine_min"], meta["cosine_mean"], False, time.perf_counter() - start
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (a critic and an annotator in parallel) may start on a fresh machine at once:
    # one exports, the others wait and reuse its file.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = _verified(path)
        if meta is not None:
            return ExportedModel(
                path, meta["cosine_min"], meta["cosine_mean"], False, time.perf_counter() - start
            )
        fd, tmp_name = tempfile.mkstemp(prefix=path.stem, suffix=".onnx.tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            spec.export(tmp)
            cos = np.asarray(spec.check(tmp), dtype=np.float64)
            if not len(cos) or not np.isfinite(cos).all() or cos.min() < COSINE_FLOOR:
                worst = float(np.nanmin(cos)) if len(cos) else float("nan")
                raise ExportCheckFailed(
                    f"ONNX export of {spec.name} gives different vectors than torch "
                    f"(cosine {worst:.6f} < {COSINE_FLOOR})"
                )
            meta = {
                "sha256": file_sha256(tmp),
                "cosine_min": float(cos.min()),
                "cosine_mean": float(cos.mean()),
                "weights": [str(w) for w in spec.weights],
            }
            tmp.chmod(0o644)  # mkstemp makes it private; the cache is per machine, not per user
            os.replace(tmp, path)
            path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        finally:
            tmp.unlink(missing_ok=True)
    return ExportedModel(path, meta["cosine_min"], meta["cosine_mean"], True, time.perf_counter() - start)


def session(path: Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1  # the graphs are sequential: a second pool only competes
    # Spinning workers burn the core a preempted peer needs when other jobs share the CPU
    # (measured 10-25% faster texts/s with it off at load 6 on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_session(spec: ExportSpec, folder: Path | None = None, threads: int | None = None):
    """(session, ExportedModel); a verified file onnxruntime still refuses is exported once more."""
    exported = ensure_exported(spec, folder)
    try:
        return session(exported.path, threads), exported
    except Exception:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
        exported.path.with_suffix(".json").unlink(missing_ok=True)
        exported = ensure_exported(spec, folder)
        return session(exported.path, threads), exported


# --- the two feature models ----------------------------------------------------------------------

#: probe sentences for the export self-check: lengths from empty to past the 256-token truncation
TEXT_PROBES = [
    "",
    "ok",
    "I love this phone, the battery lasts all day!",
    "@united worst flight ever. 3 hours on the tarmac and no water #fail",
    "Ceci n'est pas une pipe. ¿Qué tal? 東京は晴れです 😀🔥",
    "The quick brown fox jumps over the lazy dog. " * 4,
    "rain rain go away " * 90,
]


@contextlib.contextmanager
def _quiet_export():
    # torch 2.13 warns that the TorchScript exporter is legacy on every call; the self-check is
    # what tells whether its graph is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_minilm(model_dir: Path, path: Path, *, fuse: bool = True) -> None:
    """all-MiniLM-L6-v2 as one graph: BERT, masked mean pooling, L2 norm.

    fuse: export with eager attention and let onnxruntime's BERT optimizer fuse each layer's
    attention, GELU and skip+LayerNorm into single kernels (the graph torch's SDPA attention
    exports to is not recognised by the fusion).
    """
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager" if fuse else "sdpa").eval()

    class Pooled(torch.nn.Module):
        # The pooler head (dense on [CLS]) is never computed: mean pooling does not read it.
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    raw = path.with_suffix(".raw.onnx") if fuse else path
    try:
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                Pooled(bert).eval(),
                (ids, (ids > 0).long()),
                str(raw),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    "embedding": {0: "batch"},
                },
            )
        if fuse:
            from onnxruntime.transformers import optimizer

            cfg = bert.config
            fused = optimizer.optimize_model(
                str(raw),
                model_type="bert",
                num_heads=cfg.num_attention_heads,
                hidden_size=cfg.hidden_size,
                opt_level=1,
            )
            fused.save_model_to_file(str(path))
    finally:
        if fuse:
            raw.unlink(missing_ok=True)


def text_spec(model_dir: Path, reference: Callable[[list[str]], np.ndarray]) -> ExportSpec:
    """The MiniLM export, self-checked against reference(texts), today's torch path, through the
    same tokenizer and batching the ONNX encoder uses."""

    def check(path: Path) -> np.ndarray:
        encoder = OnnxTextEncoder(session(path), model_dir)
        return cosines(encoder.encode(TEXT_PROBES, batch_size=3), reference(TEXT_PROBES))

    return ExportSpec(
        "minilm-l6-v2", [model_dir / "model.safetensors"], lambda path: export_minilm(model_dir, path), check
    )


def image_probes(size: int) -> np.ndarray:
    """Deterministic preprocessed inputs for the image self-check: noise, gradients, flat grey."""
    rng = np.random.default_rng(14)
    noise = rng.uniform(-1, 1, (2, 3, size, size))
    ramp = np.broadcast_to(np.linspace(-1, 1, size), (3, size, size))
    return np.concatenate(
        [noise, ramp[None], ramp.transpose(0, 2, 1)[None], np.zeros((1, 3, size, size))]
    ).astype(np.float32)


def image_spec(weights: Path, size: int, reference_model: Callable[[], object]) -> ExportSpec:
    """EfficientNet-Lite0 up to the global average pool (1280-d), not normalised (the caller does it)."""

    def export(path: Path) -> None:
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, pixels):
                return self.net.extract_features(pixels).mean((2, 3))

        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                # eval(): the exporter restores the wrapper's mode afterwards, and a wrapper left in
                # training mode would switch the shared torch model to batch statistics with it
                Pooled(reference_model()).eval(),
                (torch.zeros(2, 3, size, size),),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            )

    def check(path: Path) -> np.ndarray:
        import torch

        probes = image_probes(size)
        with torch.inference_mode():
            ref = reference_model().extract_features(torch.from_numpy(probes)).mean((2, 3)).numpy()
        return cosines(session(path).run(None, {"pixels": probes})[0], ref)

    return ExportSpec("efficientnet-lite0", [weights], export, check)


class OnnxTextEncoder:
    """Sentence embeddings with the tokenizers library's batch path and length-bucketed batches.

    Texts are sorted by token count so a batch pads only to its own longest text (tweets range
    from 5 to 70 tokens), run, and put back in input order.
    """

    def __init__(self, sess, model_dir: Path, max_seq_length: int | None = None):
        from tokenizers import Tokenizer

        self.session = sess
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        if max_seq_length is None:  # sentence-transformers' limit, not the tokenizer file's 128
            max_seq_length = json.loads((model_dir / "sentence_bert_config.json").read_text())[
                "max_seq_length"
            ]
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        ids = self.token_ids(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(ids), TEXT_DIM), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, i in enumerate(rows):
                input_ids[j, : lengths[i]] = ids[i]
                mask[j, : lengths[i]] = 1
            out[rows] = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return out
